"""Final-answer extraction from a model's answer text (shared by Trace and the benchmark grader).

Rules, in order (the first that matches wins; each returns the answer and the rule's name):
1. `boxed`: the content of the last non-empty `\\boxed{...}` (or `\\fbox{...}`), braces balanced (a
   trailing empty `\\boxed{}` does not hide the real answer before it);
2. `gsm8k`: the text after the last `#### `;
3. `the_answer_is`: what follows the last "the answer is" / "final answer:", to the end of the line;
4. `last_number`: the last number in the text (integers, decimals, fractions a/b, negatives).
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_ANSWER_IS = re.compile(r"(?:the\s+(?:final\s+)?answer\s+is|final\s+answer\s*[:：])\s*:?\s*(.+)", re.IGNORECASE)


def all_boxed(text: str) -> list[str]:
    """Contents of every `\\boxed{...}` / `\\fbox{...}` with balanced braces, in order; empty ones left out."""
    if not isinstance(text, str):
        raise TypeError(f"text={text!r} ({type(text).__name__}) is not accepted: a string is")
    found = []
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        content = text[match.end() : i - 1].strip()
        if depth == 0 and content:
            found.append(content)
    return found


def last_boxed(text: str) -> str | None:
    """Content of the last non-empty `\\boxed{...}` / `\\fbox{...}` with balanced braces, or None."""
    found = all_boxed(text)
    return found[-1] if found else None


def extract_answer(text: str) -> tuple[str | None, str | None]:
    """(answer, rule) from an answer text; (None, None) when nothing looks like an answer."""
    if not isinstance(text, str):
        raise TypeError(f"text={text!r} ({type(text).__name__}) is not accepted: a string is")
    if not text:
        return None, None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed, "boxed"
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip().splitlines()
        if tail and tail[0].strip():
            return tail[0].strip().replace(",", ""), "gsm8k"
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        value = matches[-1].group(1).strip().rstrip(".").strip()
        value = value.strip("$ ").strip()
        if value:
            return value, "the_answer_is"
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1].replace(",", ""), "last_number"
    return None, None
