"""Grading: extraction rules and equivalence, checked on math-verify's known cases."""

from __future__ import annotations

import pytest

from mimo_lab.answer import extract_answer
from mimo_lab.bench.grade import equivalent, grade
from mimo_lab.bench.suites import BenchProblem


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{\\frac{1}{2}} and later \\boxed{42}", ("42", "boxed")),
    ("nested \\boxed{\\frac{\\sqrt{3}}{2}}.", ("\\frac{\\sqrt{3}}{2}", "boxed")),
    ("work...\n#### 1,234", ("1234", "gsm8k")),
    ("Therefore, the answer is 17.", ("17", "the_answer_is")),
    ("Final answer: $x = 5$", ("x = 5", "the_answer_is")),
    ("we get 3 then 4.5 at the end", ("4.5", "last_number")),
    ("no numbers here", (None, None)),
    ("", (None, None)),
    ("\\boxed{unclosed", ("unclosed", "last_number") if False else (None, None)),
])
def test_extraction(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("answer, reference, same", [
    ("\\frac{1}{2}", "0.5", True),
    ("1/2", "\\frac{1}{2}", True),
    ("\\sqrt{8}", "2\\sqrt{2}", True),
    ("\\frac{3}{4}", "0.75", True),
    ("24", "024", True),
    ("1000", "1,000", True),
    ("12", "13", False),
    ("\\pi", "3.14", False),
    ("x = 5", "5", True),
])
def test_math_equivalence(answer, reference, same):
    assert equivalent(answer, reference) is same


def test_ordered_lists_keep_order():
    assert equivalent("3, 5, 12", "3, 5, 12", "ordered_list")
    assert not equivalent("5, 3, 12", "3, 5, 12", "ordered_list")
    assert equivalent(" 3,5, 12.", "3, 5, 12", "ordered_list")
    with pytest.raises(ValueError, match="unknown answer_type"):
        equivalent("1", "1", "fuzzy")


def test_grade_records_extraction_and_errors(monkeypatch):
    problem = BenchProblem("p1", "What is half?", "\\frac{1}{2}")
    verdict = grade("It is \\boxed{0.5}.", problem)
    assert (verdict.extracted, verdict.rule, verdict.correct, verdict.error) == ("0.5", "boxed", True, None)
    assert grade("nothing", problem).extracted is None

    def broken(*args, **kwargs):
        raise TimeoutError("verify took too long")

    monkeypatch.setattr("math_verify.verify", broken)
    failed = grade("\\boxed{0.25}", problem)
    assert not failed.correct and "TimeoutError" in failed.error
    assert grade("\\boxed{\\frac{1}{2}}", problem).correct  # exact match needs no math-verify
