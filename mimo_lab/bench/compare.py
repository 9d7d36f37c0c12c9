"""Comparing two benchmark runs over the same problems: flips, McNemar's test, lengths, class transitions."""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import pandas as pd
import plotly.graph_objects as go

from mimo_lab.checks import check_int
from mimo_lab.viz.style import base_layout


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (binomial, p = 1/2)."""
    b, c = check_int("b", b, minimum=0), check_int("c", c, minimum=0)
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(0, min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass
class RunComparison:
    pairs: pd.DataFrame  # one row per (problem_id, sample_index) present in both runs
    per_problem: pd.DataFrame  # accuracy in a and b, and the flip

    @property
    def flips(self) -> pd.DataFrame:
        return self.per_problem[self.per_problem["flip"] != "same"]

    @property
    def mcnemar(self) -> dict:
        """On paired samples: b = right in a only, c = right in b only."""
        b = int((self.pairs["correct_a"] & ~self.pairs["correct_b"]).sum())
        c = int((~self.pairs["correct_a"] & self.pairs["correct_b"]).sum())
        return {"a_only": b, "b_only": c, "p_value": mcnemar_exact(b, c)}

    @property
    def transitions(self) -> pd.DataFrame:
        """Counts of (category in a) -> (category in b)."""
        return pd.crosstab(self.pairs["category_a"], self.pairs["category_b"])

    @property
    def lengths(self) -> dict:
        return {"mean_tokens_a": float(self.pairs["num_tokens_a"].mean()),
                "mean_tokens_b": float(self.pairs["num_tokens_b"].mean()),
                "mean_change": float((self.pairs["num_tokens_b"] - self.pairs["num_tokens_a"]).mean())}

    def to_frame(self) -> pd.DataFrame:
        """One row per problem: accuracy in a and b and the flip (`per_problem`)."""
        return self.per_problem

    def summary(self) -> dict:
        return {"paired_samples": len(self.pairs), "accuracy_a": float(self.pairs["correct_a"].mean()),
                "accuracy_b": float(self.pairs["correct_b"].mean()), **self.mcnemar, **self.lengths,
                "problems_flipped_to_correct": int((self.per_problem["flip"] == "wrong→right").sum()),
                "problems_flipped_to_wrong": int((self.per_problem["flip"] == "right→wrong").sum())}

    def plot(self, title: str | None = None) -> go.Figure:
        table = self.transitions
        fig = go.Figure(go.Heatmap(z=table.values.tolist(), x=list(table.columns), y=list(table.index),
                                   colorscale="Blues", texttemplate="%{z}",
                                   hovertemplate="a: %{y}<br>b: %{x}<br>%{z} samples<extra></extra>"))
        fig.update_xaxes(title_text="category in run b")
        fig.update_yaxes(title_text="category in run a", autorange="reversed")
        s = self.mcnemar
        return base_layout(fig, title or f"class transitions (McNemar p = {s['p_value']:.3g}; "
                                         f"{s['a_only']} right only in a, {s['b_only']} only in b)", height=420)


def _as_run(name: str, value):
    from pathlib import Path

    from mimo_lab.bench.run import Run

    if isinstance(value, Run):
        return value
    if isinstance(value, str | Path):
        if not (Path(value) / "run.json").is_file():
            raise FileNotFoundError(f"{name}={str(value)!r} is not a benchmark run folder (no run.json in it): give a "
                                    "Run or the --out folder of a bench run")
        return Run(value)
    raise TypeError(f"{name}={value!r} ({type(value).__name__}) is not accepted: a bench Run or a run folder path is")


def compare_runs(a, b) -> RunComparison:
    """Pair the samples of two runs (Runs or run folders) by (problem_id, sample_index)."""
    a, b = _as_run("a", a), _as_run("b", b)
    fa, fb = a.frame, b.frame
    for name, run, frame in (("a", a, fa), ("b", b, fb)):
        if frame.empty:
            raise ValueError(f"run {name} ({run.folder}) has no graded samples yet: nothing to compare")
    keys = ["problem_id", "sample_index"]
    cols = keys + ["correct", "category", "num_tokens"]
    pairs = fa[cols].merge(fb[cols], on=keys, suffixes=("_a", "_b"))
    if pairs.empty:
        raise ValueError("the runs share no (problem_id, sample_index): compare runs of the same suite")
    per_problem = pairs.groupby("problem_id").agg(accuracy_a=("correct_a", "mean"), accuracy_b=("correct_b", "mean"),
                                                  tokens_a=("num_tokens_a", "mean"), tokens_b=("num_tokens_b", "mean"))
    right_a, right_b = per_problem["accuracy_a"] >= 0.5, per_problem["accuracy_b"] >= 0.5
    per_problem["flip"] = "same"
    per_problem.loc[right_a & ~right_b, "flip"] = "right→wrong"
    per_problem.loc[~right_a & right_b, "flip"] = "wrong→right"
    return RunComparison(pairs, per_problem)
