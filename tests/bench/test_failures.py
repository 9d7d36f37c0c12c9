"""Failure taxonomy: one test per class, and the repetition detector's evidence."""

from __future__ import annotations

import pytest

from mimo_lab.bench.failures import CATEGORIES, classify, find_tail_loop

BASE = dict(correct=False, extracted="5", rule="boxed", finish_reason="stop", closed_thinking=True,
            uses_think_tags=True, token_ids=list(range(100)))


def case(**changes):
    return classify(**{**BASE, **changes})[0]


def test_each_class():
    assert case(correct=True) == "correct"
    assert case() == "wrong_answer"
    assert case(extracted=None, rule=None) == "no_answer"
    assert case(finish_reason="length", closed_thinking=False) == "truncated_in_thinking"
    assert case(finish_reason="length", closed_thinking=True, extracted=None) == "truncated_after_thinking"
    assert case(closed_thinking=False) == "format_error"
    assert case(rule="last_number") == "format_error"
    assert case(token_ids=list(range(10)) + [7, 8, 9, 10] * 20, finish_reason="length",
                closed_thinking=False) == "repetition_loop"
    assert case(grader_error="TimeoutError") == "grader_error"
    assert case(correct=True, grader_error="boom") == "grader_error"
    assert set(CATEGORIES) == {"correct", "wrong_answer", "no_answer", "truncated_in_thinking",
                               "truncated_after_thinking", "format_error", "repetition_loop", "grader_error"}


def test_loop_evidence():
    texts = [f"t{i}" for i in range(10)] + ["5", "5", ",", " "] * 12
    ids = list(range(10)) + [5, 5, 1, 2] * 12
    category, evidence = classify(**{**BASE, "token_ids": ids, "finish_reason": "length", "closed_thinking": False,
                                     "token_texts": texts})
    assert category == "repetition_loop"
    assert evidence["period_tokens"] == 4 and evidence["repeats"] == pytest.approx(12)
    assert evidence["span"] == "55, " and evidence["starts_at_token"] == 10


def test_loop_detector_ignores_short_or_absent_repeats():
    assert find_tail_loop(list(range(200))) is None
    assert find_tail_loop([1, 2, 3] * 5) is None  # covers only 15 tokens
    long_period = list(range(100, 160))
    loop = find_tail_loop(list(range(30)) + long_period * 3)
    assert loop.period == 60 and loop.repeats == pytest.approx(3)
    # a finished (stop) sample needs more repeats than a truncated one
    ids = list(range(10)) + [1, 2, 3, 4, 5, 6, 7, 8] * 4
    assert case(token_ids=ids, finish_reason="length", closed_thinking=False) == "repetition_loop"
    assert case(token_ids=ids) == "wrong_answer"
