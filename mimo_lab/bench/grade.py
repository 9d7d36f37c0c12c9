"""Grading: extract the final answer, then decide equivalence with math-verify (with a timeout).

`grade(answer_text, problem)` returns a Grade with the extracted answer, the extraction rule
(`mimo_lab.answer`: boxed, boxed_several, gsm8k, the_answer_is, last_number), the verdict and any
grader error.

Before math-verify (0.9.0), forms whose meaning is unambiguous are rewritten, because math-verify
alone rejects them:
- a percent against a plain number: `6.17\\%` against `6.17` (math-verify accepts `25\\%` against
  25 and `6.17\\%` against 0.0617, not `6.17\\%` against 6.17); `6.17\\%` against 61.7 stays wrong;
- a one-row or one-column `pmatrix` / `bmatrix` is the tuple of its entries (`(1,2,3)` against
  `\\begin{pmatrix}1\\\\2\\\\3\\end{pmatrix}`);
- an inequality in one variable against an interval reference is that interval (`3 < x \\le 4` is
  `(3,4]`; `x \\ge 2` is `[2,\\infty)`); only a reference that is certainly an interval (a square
  bracket or an infinite end): an open pair `(a,b)` may be a point, so `1 < x < 2` against `(1,2)`
  stays wrong, as with math-verify alone;
- several boxed answers against a reference of as many comma-separated items (`\\boxed{1}` and
  `\\boxed{-2}` against `1,-2`): the last that many boxed answers, joined (rule `boxed_several`);
  a single `\\boxed{1}` against `1,-2` stays wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mimo_lab.answer import all_boxed, extract_answer
from mimo_lab.bench.suites import ANSWER_TYPES, BenchProblem
from mimo_lab.checks import check_choice, check_int, check_str


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


def top_level_items(text: str) -> list[str]:
    """Comma-separated items outside any brackets (`1,-2` -> 2 items; `(1,2)`, `\\frac{1}{2}` -> 1;
    a thousands separator `1,000` -> 1)."""
    text = _normalise(text)
    if re.fullmatch(r"(?:\\\$)?-?\d{1,3}(?:, ?\d{3})+(?:\.\d+)?", text):  # 11,\! 111 or \$32,\!348
        return [text]
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += 1 if ch in "({[" else -1 if ch in ")}]" else 0
        if ch == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    items.append(text[start:].strip())
    return [item for item in items if item]


# ----------------------------------------------------------------------------- rewrites
_PERCENT = re.compile(r"\s*(?:\\+)?%\s*$")
_MATRIX = re.compile(r"^\\begin\{([pb]matrix)\}(.*)\\end\{\1\}$", re.DOTALL)
_LESS = {"<": "<", "\\lt": "<", "\\le": "<=", "\\leq": "<=", "\\leqslant": "<=", "≤": "<="}
_GREATER = {">": ">", "\\gt": ">", "\\ge": ">=", "\\geq": ">=", "\\geqslant": ">=", "≥": ">="}
_RELATION = r"(\\leqslant|\\geqslant|\\leq|\\geq|\\le|\\ge|\\lt|\\gt|<|>|≤|≥)"


def _vector(text: str) -> str | None:
    """`\\begin{pmatrix}a\\\\b\\end{pmatrix}` (one row or one column) -> `(a, b)`; None otherwise."""
    match = _MATRIX.match(text.strip())
    if not match:
        return None
    rows = [row.strip() for row in re.split(r"\\\\", match.group(2)) if row.strip()]
    cells = [[c.strip() for c in row.split("&")] for row in rows]
    if len(cells) == 1:
        entries = cells[0]
    elif all(len(row) == 1 for row in cells):
        entries = [row[0] for row in cells]
    else:
        return None  # a real matrix: leave it to math-verify
    return "(" + ", ".join(entries) + ")" if len(entries) > 1 else None


def _is_interval(text: str) -> bool:
    """An interval for certain: `(3,4]`, `[2,\\infty)`. An open pair `(a,b)` of finite ends is as
    often a point (MATH-500: `(-2,1)`, `(15,-29)`, `(8,-2)`), so `-2 < x < 1` against it stays wrong."""
    text = _normalise(text)
    if not (re.fullmatch(r"[(\[].*,.*[)\]]", text) and len(top_level_items(text)) == 1):
        return False
    return text[0] == "[" or text[-1] == "]" or "\\infty" in text or "∞" in text


def _interval(text: str) -> str | None:
    """An inequality in one variable -> the interval it describes (`3 < x \\le 4` -> `(3, 4]`)."""
    parts = re.split(_RELATION, _normalise(text))
    parts = [p.strip() for p in parts]
    variable = re.compile(r"[a-zA-Z]")
    if len(parts) == 5 and variable.fullmatch(parts[2]) and parts[0] and parts[4]:  # a < x <= b, or b > x >= a
        op1, op2 = parts[1], parts[3]
        if op1 in _LESS and op2 in _LESS:
            low, high, low_open, high_open = parts[0], parts[4], _LESS[op1] == "<", _LESS[op2] == "<"
        elif op1 in _GREATER and op2 in _GREATER:
            low, high, low_open, high_open = parts[4], parts[0], _GREATER[op2] == ">", _GREATER[op1] == ">"
        else:
            return None
        return f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if len(parts) == 3 and parts[0] and parts[2]:
        left_var, right_var = variable.fullmatch(parts[0]), variable.fullmatch(parts[2])
        if left_var == right_var or (left_var and right_var):
            return None
        op = parts[1]
        # normalise to "x op bound"
        if right_var:
            op = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}[_LESS.get(op) or _GREATER[op]]
            bound = parts[0]
        else:
            op = _LESS.get(op) or _GREATER[op]
            bound = parts[2]
        return {"<": f"(-\\infty, {bound})", "<=": f"(-\\infty, {bound}]", ">": f"({bound}, \\infty)",
                ">=": f"[{bound}, \\infty)"}[op]
    return None


def _rewrites(answer: str, reference: str) -> list[tuple[str, str]]:
    """Pairs (answer, reference) to try after the original pair, each with one unambiguous rewrite."""
    pairs = []
    answer_pct, reference_pct = bool(_PERCENT.search(answer)), bool(_PERCENT.search(reference))
    if answer_pct != reference_pct:  # "6.17\%" against "6.17": the percent sign is a unit here
        pairs.append((_PERCENT.sub("", answer), _PERCENT.sub("", reference)))
    vec_a, vec_r = _vector(answer), _vector(reference)
    if vec_a or vec_r:
        pairs.append((vec_a or answer, vec_r or reference))
    if _is_interval(reference) and (interval := _interval(answer)):
        pairs.append((interval, reference))
    if _is_interval(answer) and (interval := _interval(reference)):
        pairs.append((answer, interval))
    return pairs


def _math_verify(answer: str, reference: str, timeout: int) -> bool:
    from math_verify import parse, verify

    gold = parse(f"${reference}$", parsing_timeout=timeout, raise_on_error=True)
    pred = parse(f"${answer}$", parsing_timeout=timeout, raise_on_error=True)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout, raise_on_error=True))


def equivalent(answer: str, reference: str, answer_type: str = "math", timeout: int = 5) -> bool:
    """Whether `answer` means the same as `reference` (raises on grader failure); timeout in seconds."""
    check_str("answer", answer, empty_ok=True)
    check_str("reference", reference)
    check_choice("answer_type", answer_type, ANSWER_TYPES)
    check_int("timeout", timeout, minimum=1)
    if answer_type == "exact":
        return _normalise(answer) == _normalise(reference)
    if answer_type == "ordered_list":
        return _items(answer) == _items(reference)
    if answer_type != "math":
        raise AssertionError(answer_type)  # checked above
    if _normalise(answer) == _normalise(reference):
        return True
    if _math_verify(answer, reference, timeout):
        return True
    return any(_normalise(a) == _normalise(r) or _math_verify(a, r, timeout) for a, r in _rewrites(answer, reference))


def grade(answer_text: str, problem: BenchProblem, timeout: int = 5) -> Grade:
    """Extract the final answer from the text after </think> and compare it with the reference."""
    check_str("answer_text", answer_text, empty_ok=True)
    if not isinstance(problem, BenchProblem):
        raise TypeError(f"problem={problem!r} ({type(problem).__name__}) is not accepted: a BenchProblem is")
    check_int("timeout", timeout, minimum=1)
    extracted, rule = extract_answer(answer_text)
    if extracted is None:
        return Grade(None, None, False)
    if rule == "boxed" and problem.answer_type == "math":
        # a multi-answer reference answered as one \boxed{} per item: join the last that many
        wanted = len(top_level_items(problem.answer))
        boxed = all_boxed(answer_text)
        if wanted > 1 and len(top_level_items(extracted)) == 1 and len(boxed) >= wanted:
            extracted, rule = ", ".join(boxed[-wanted:]), "boxed_several"
    try:
        return Grade(extracted, rule, equivalent(extracted, problem.answer, problem.answer_type, timeout))
    except Exception as err:  # noqa: BLE001 - math-verify / sympy failures are a failure class of their own
        return Grade(extracted, rule, False, f"{type(err).__name__}: {err}")
