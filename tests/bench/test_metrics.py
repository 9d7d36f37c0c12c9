"""Metrics: unbiased pass@k against brute force, maj@k, bootstrap intervals; run comparison."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from mimo_lab.bench.compare import mcnemar_exact
from mimo_lab.bench.metrics import bootstrap_interval, pass_at_k, per_problem, summarize


@pytest.mark.parametrize("n, c, k", [(5, 2, 1), (5, 2, 2), (6, 1, 3), (4, 0, 2), (4, 4, 3), (8, 3, 8)])
def test_pass_at_k_is_the_chance_that_k_draws_include_a_correct_one(n, c, k):
    outcomes = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(brute)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def _frame(rows):
    return pd.DataFrame(rows, columns=["problem_id", "sample_index", "correct", "extracted_answer", "category",
                                       "num_tokens"])


def test_majority_and_summary():
    frame = _frame([
        ("a", 0, True, "5", "correct", 10), ("a", 1, False, "6", "wrong_answer", 12), ("a", 2, True, "5", "correct", 9),
        ("b", 0, False, "1", "wrong_answer", 20), ("b", 1, False, "1", "wrong_answer", 22),
        ("b", 2, True, "2", "correct", 18),
    ])
    table = per_problem(frame)
    assert table.loc["a", "maj_at_n"] == 1.0 and table.loc["b", "maj_at_n"] == 0.0
    s = summarize(frame, samples=3)
    assert s["pass@1"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert s["avg@3"] == s["pass@1"] and s["pass@3"] == 1.0 and s["maj@3"] == 0.5
    lo, hi = s["pass@1_ci95"]
    assert lo <= s["pass@1"] <= hi
    assert s["categories"] == {"correct": 3, "wrong_answer": 3}


def test_bootstrap_interval_narrows_with_more_problems():
    rng = np.random.default_rng(0)
    small = bootstrap_interval(rng.integers(0, 2, 20))
    large = bootstrap_interval(rng.integers(0, 2, 2000))
    assert (small[1] - small[0]) > 3 * (large[1] - large[0])


def test_mcnemar_exact_known_values():
    assert mcnemar_exact(10, 2) == pytest.approx(0.0386, abs=1e-4)  # 2 * P(X <= 2), X ~ Bin(12, 1/2)
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
