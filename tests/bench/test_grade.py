"""Grading: extraction rules and equivalence, checked on math-verify's known cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mimo_lab.answer import extract_answer
from mimo_lab.bench.grade import equivalent, grade
from mimo_lab.bench.suites import BenchProblem, load_suite


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
    with pytest.raises(ValueError, match="answer_type=.fuzzy."):
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


# ----------------------------------------------------------------------------- beyond math-verify 0.9.0's misses
@pytest.mark.parametrize("answer, reference, same", [
    ("6.17\\%", "6.17", True),  # a decimal percent against the plain number (math-verify alone: False)
    ("25\\%", "25", True),
    ("6.17", "6.17\\%", True),
    ("6.17\\%", "0.0617", True),
    ("6.17\\%", "61.7", False),  # must stay wrong
    ("6.17\\%", "6.18", False),
    ("(1,2,3)", "\\begin{pmatrix} 1 \\\\ 2 \\\\ 3 \\end{pmatrix}", True),  # tuple against a pmatrix
    ("\\begin{pmatrix} -1 \\\\ \\frac{1}{2} \\end{pmatrix}", "(-1, 0.5)", True),
    ("(1,2,4)", "\\begin{pmatrix} 1 \\\\ 2 \\\\ 3 \\end{pmatrix}", False),
    ("(3,2,1)", "\\begin{pmatrix} 1 \\\\ 2 \\\\ 3 \\end{pmatrix}", False),
    ("(1,2,3,4)", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", False),  # a real matrix is no tuple
    ("3 < x \\le 4", "(3,4]", True),  # an inequality against an interval
    ("4 \\ge x > 3", "(3,4]", True),
    ("-2 \\leq x \\leq 5", "[-2, 5]", True),
    ("x \\ge 2", "[2,\\infty)", True),
    ("(3,4]", "3 < x \\le 4", True),
    ("3 < x < 4", "(3,4]", False),  # must stay wrong
    ("(3,4)", "(3,4]", False),
    ("x > 2", "[2,\\infty)", False),
    ("x < 2", "(-\\infty, 2)", True),
    # an open pair of finite ends may be a point (MATH-500's midpoint (-1,6), point (8,-2)): no rewrite,
    # as math-verify alone rejects these too
    ("-1 < x < 6", "(-1,6)", False),
    ("8 > y > -2", "(-2,8)", False),
    ("-2 < x < 1", "(-2,1)", False),
])
def test_normalised_equivalence(answer, reference, same):
    assert equivalent(answer, reference) is same


@pytest.mark.parametrize("text, reference, extracted, rule, correct", [
    ("so \\boxed{1} and \\boxed{-2}", "1,-2", "1, -2", "boxed_several", True),
    ("first \\boxed{3}, then \\boxed{-2} and \\boxed{1}", "1,-2", "-2, 1", "boxed_several", True),
    ("\\boxed{1}", "1,-2", "1", "boxed", False),  # one of two answers stays wrong
    ("\\boxed{1} and \\boxed{2}", "1,-2", "1, 2", "boxed_several", False),
    ("\\boxed{1, -2}", "1,-2", "1, -2", "boxed", True),
    ("\\boxed{5} was a guess; \\boxed{7}", "7", "7", "boxed", True),  # one reference item: the last box
    ("\\boxed{5} was a guess; \\boxed{7}", "5", "7", "boxed", False),
    ("so the answer is \\boxed{42}. \\boxed{}", "42", "42", "boxed", True),  # a trailing empty box hides nothing
    ("\\boxed{42} \\boxed{ }", "42", "42", "boxed", True),
    ("\\boxed{11,\\! 111,\\! 111,\\! 100}", "11,\\! 111,\\! 111,\\! 100", "11,\\! 111,\\! 111,\\! 100", "boxed", True),
])
def test_grade_several_and_empty_boxes(text, reference, extracted, rule, correct):
    verdict = grade(text, BenchProblem("p", "q", reference))
    assert (verdict.extracted, verdict.rule, verdict.correct) == (extracted, rule, correct)


# ----------------------------------------------------------------------------- the real benchmark files
REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "benchmarks"
needs_real = pytest.mark.skipif(not (REAL / "math500_test.jsonl").is_file(), reason="../shared/data not here")


@needs_real
def test_math500_references_and_solutions_grade_correct():
    from mimo_lab.bench.grade import _math_verify

    rows = [json.loads(line) for line in (REAL / "math500_test.jsonl").read_text().splitlines()]
    suite = load_suite(str(REAL / "math500_test.jsonl"))
    assert len(suite) == 500
    boxed = sum(grade(f"The answer is $\\boxed{{{p.answer}}}$.", p).correct for p in suite.problems)
    self_verified = sum(_math_verify(p.answer, p.answer, 5) for p in suite.problems)  # without the string shortcut
    solutions = sum(grade(r["solution"], p).correct for r, p in zip(rows, suite.problems, strict=True))
    assert (boxed, self_verified, solutions) == (500, 500, 500)
    # off-by-one pairs: only the references that really are equal grade correct against each other
    matches = [(p.answer, q.answer) for p, q in zip(suite.problems, suite.problems[1:], strict=False)
               if grade(f"\\boxed{{{q.answer}}}", p).correct]
    assert matches == [("5", "x=5"), ("7", "7"), ("3", "3")]


@needs_real
def test_math500_vectors_and_lists():
    suite = load_suite(str(REAL / "math500_test.jsonl"))
    vectors = [p for p in suite.problems if p.answer.startswith("\\begin{pmatrix}") and "&" not in p.answer]
    assert len(vectors) == 6
    for p in vectors:
        entries = [e.strip() for e in p.answer.split("\\begin{pmatrix}")[1].split("\\end")[0].split("\\\\")]
        assert grade(f"\\boxed{{({', '.join(entries)})}}", p).correct, p.answer
        wrong = entries[:-1] + [f"{entries[-1]} + 1"]
        assert not grade(f"\\boxed{{({', '.join(wrong)})}}", p).correct, p.answer
    lists = [p for p in suite.problems if p.answer in ("1,-2", "3, 5, 7", "-2,1")]
    assert len(lists) == 3
    for p in lists:
        items = [i.strip() for i in p.answer.split(",")]
        assert grade(" and ".join(f"\\boxed{{{i}}}" for i in items), p).correct
        assert not grade(f"\\boxed{{{items[0]}}}", p).correct


@needs_real
def test_gsm8k_and_aime_references_grade_correct():
    gsm8k = load_suite(str(REAL / "openai_gsm8k_test.jsonl"))
    assert len(gsm8k) == 1319
    assert sum(grade(f"so \\boxed{{{p.answer}}}", p).correct for p in gsm8k.problems) == 1319
    assert sum(grade(f"work\n#### {p.answer}", p).correct for p in gsm8k.problems) == 1319
    aime = load_suite(str(REAL / "qwen25math_aime24_test.jsonl"))
    assert len(aime) == 30 and sum(grade(f"\\boxed{{{p.answer}}}", p).correct for p in aime.problems) == 30
