"""Grading: extract the final answer, then decide equivalence with math-verify (with a timeout).

`grade(answer_text, problem)` returns a Grade with the extracted answer, the extraction rule
(`mimo_lab.answer`: boxed, gsm8k, the_answer_is, last_number), the verdict and any grader error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mimo_lab.answer import extract_answer
from mimo_lab.bench.suites import BenchProblem


@dataclass(frozen=True)
class Grade:
    extracted: str | None
    rule: str | None
    correct: bool
    error: str | None = None


def _normalise(text: str) -> str:
    text = text.strip().strip("$").strip().rstrip(".").strip()
    text = re.sub(r"\\(?:text|mathrm)\{([^}]*)\}", r"\1", text)
    return re.sub(r"\s+", " ", text.replace("\\!", "").replace("\\,", "")).replace(" ,", ",")


def _items(text: str) -> list[str]:
    return [item.strip() for item in _normalise(text).strip("[]()").split(",") if item.strip()]


def equivalent(answer: str, reference: str, answer_type: str = "math", timeout: int = 5) -> bool:
    """Whether `answer` means the same as `reference` (raises on grader failure)."""
    if answer_type == "exact":
        return _normalise(answer) == _normalise(reference)
    if answer_type == "ordered_list":
        return _items(answer) == _items(reference)
    if answer_type != "math":
        raise ValueError(f"unknown answer_type {answer_type!r}: use math, ordered_list or exact")
    if _normalise(answer) == _normalise(reference):
        return True
    from math_verify import parse, verify

    gold = parse(f"${reference}$", parsing_timeout=timeout, raise_on_error=True)
    pred = parse(f"${answer}$", parsing_timeout=timeout, raise_on_error=True)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout, raise_on_error=True))


def grade(answer_text: str, problem: BenchProblem, timeout: int = 5) -> Grade:
    """Extract the final answer from the text after </think> and compare it with the reference."""
    extracted, rule = extract_answer(answer_text)
    if extracted is None:
        return Grade(None, None, False)
    try:
        return Grade(extracted, rule, equivalent(extracted, problem.answer, problem.answer_type, timeout))
    except Exception as err:  # noqa: BLE001 - math-verify / sympy failures are a failure class of their own
        return Grade(extracted, rule, False, f"{type(err).__name__}: {err}")
