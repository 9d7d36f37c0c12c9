"""Benchmark metrics over per-problem samples: pass@1 / avg@k, unbiased pass@k, maj@k, bootstrap intervals."""

from __future__ import annotations

from collections import Counter
from math import comb

import numpy as np
import pandas as pd

from mimo_lab.checks import check_float, check_int, check_seed


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k) for one problem with n samples, c correct."""
    n, c, k = check_int("n", n, minimum=1), check_int("c", c, minimum=0), check_int("k", k, minimum=1)
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def _majority_correct(group: pd.DataFrame) -> float:
    answers = [a for a in group["normalized_answer"] if a]
    if not answers:
        return 0.0
    top, _ = Counter(answers).most_common(1)[0]
    return float(group.loc[group["normalized_answer"] == top, "correct"].any())


def per_problem(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per problem: n samples, c correct, accuracy, pass@n, maj@n (no rows for no samples)."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame={type(frame).__name__} is not accepted: a DataFrame of sample records is")
    columns = ["n", "c", "accuracy", "pass_at_n", "maj_at_n"]
    if frame.empty:
        return pd.DataFrame(columns=columns, index=pd.Index([], name="problem_id"))
    missing = {"problem_id", "correct", "extracted_answer"} - set(frame.columns)
    if missing:
        raise ValueError(f"per_problem: the frame has no column(s) {sorted(missing)}; it needs problem_id, correct, "
                         "extracted_answer")
    frame = frame.assign(normalized_answer=frame["extracted_answer"].fillna("").astype(str).str.strip())
    rows = []
    for pid, group in frame.groupby("problem_id", sort=False):
        n, c = len(group), int(group["correct"].sum())
        rows.append({"problem_id": pid, "n": n, "c": c, "accuracy": c / n, "pass_at_n": pass_at_k(n, c, n),
                     "maj_at_n": _majority_correct(group)})
    return pd.DataFrame(rows).set_index("problem_id")


def bootstrap_interval(values: np.ndarray, iterations: int = 2000, seed: int = 0, level: float = 0.95):
    """Percentile interval of the mean over problems, resampling problems with replacement."""
    iterations = check_int("iterations", iterations, minimum=1)
    seed = check_seed("seed", seed, none_ok=False)
    level = check_float("level", level, above=0.0)
    if level >= 1:
        raise ValueError(f"level={level} is out of range: a number greater than 0 and less than 1 is accepted")
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(iterations, len(values)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def summarize(frame: pd.DataFrame, samples: int) -> dict:
    """pass@1 (= avg@k), unbiased pass@k, maj@k with 95% bootstrap intervals; counts by category."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame={type(frame).__name__} is not accepted: a DataFrame of sample records is")
    samples = check_int("samples", samples, minimum=1)
    if frame.empty:
        return {"problems": 0, "samples": 0}
    problems = per_problem(frame)
    k = int(problems["n"].min())
    pass_k = np.array([pass_at_k(int(r.n), int(r.c), k) for r in problems.itertuples()])
    summary = {
        "problems": len(problems), "samples": len(frame), "samples_per_problem": samples, "k": k,
        "pass@1": float(problems["accuracy"].mean()), "pass@1_ci95": bootstrap_interval(problems["accuracy"].values),
        f"avg@{k}": float(problems["accuracy"].mean()),
        f"pass@{k}": float(pass_k.mean()), f"pass@{k}_ci95": bootstrap_interval(pass_k),
        f"maj@{k}": float(problems["maj_at_n"].mean()),
        f"maj@{k}_ci95": bootstrap_interval(problems["maj_at_n"].values),
        "categories": {str(c): int(n) for c, n in frame["category"].value_counts().items()},
        "mean_tokens": float(frame["num_tokens"].mean()),
    }
    return summary
