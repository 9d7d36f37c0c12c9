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


def test_correct_answer_inside_unclosed_thinking_is_never_correct():
    # classify itself refuses "correct" for a trace cut off inside its thinking
    assert case(correct=True, finish_reason="length", closed_thinking=False) == "truncated_in_thinking"
    assert case(correct=True, finish_reason="stop", closed_thinking=False) == "format_error"
    assert case(closed_thinking=False, extracted=None, rule=None) == "format_error"
    assert case(correct=True, closed_thinking=False, uses_think_tags=False) == "correct"  # no think tags at all


CHATML = "<|im_start|>user\nWhat is 17 + 28?<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("style, prompt_text, text", [
    ("model writes <think>", CHATML, "<think>17 + 28 = 45, so the answer is \\boxed{45}"),
    ("template opens <think>", CHATML + "<think>\n", "17 + 28 = 45, so the answer is \\boxed{45}"),
])
def test_trace_cut_off_in_thinking_has_no_answer(nano, make_trace, style, prompt_text, text):
    from dataclasses import replace

    from mimo_lab.bench.run import _grade_record
    from mimo_lab.bench.suites import BenchProblem

    trace = replace(make_trace(nano.tokenizer, text), prompt_text=prompt_text, finish_reason="length")
    assert trace.opened_thinking and not trace.closed_thinking
    assert trace.answer == "" and trace.final_answer is None
    assert trace.thinking == "17 + 28 = 45, so the answer is \\boxed{45}"
    record = _grade_record(BenchProblem("p", "What is 17 + 28?", "45"), 0, trace, 0)
    assert (record["category"], record["correct"], record["extracted_answer"]) == ("truncated_in_thinking", False, None)
    # the same trace, closed: the answer after </think> is graded
    closed = replace(trace, text=text.replace(", so", "</think> so"))
    assert closed.closed_thinking and closed.answer == "so the answer is \\boxed{45}" and closed.final_answer == "45"
    assert _grade_record(BenchProblem("p", "q", "45"), 0, closed, 0)["category"] == "correct"


def test_trace_without_think_tags_answers_with_all_its_text(nano, make_trace):
    from dataclasses import replace

    trace = replace(make_trace(nano.tokenizer, "17 + 28 = 45, so \\boxed{45}"), prompt_text=CHATML,
                    finish_reason="length")
    assert not trace.opened_thinking and trace.answer == "17 + 28 = 45, so \\boxed{45}" and trace.final_answer == "45"
    assert trace.thinking == ""
