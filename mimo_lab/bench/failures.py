"""Failure taxonomy: every graded sample gets exactly one category, by these rules, in order.

1. `grader_error`: the grader raised (math-verify / sympy failure or timeout); see `grader_error` text.
2. `correct`: the extracted answer is equivalent to the reference, and the think block (if any) was
   closed: a trace cut off inside its thinking has no answer, so it is never correct.
3. `repetition_loop`: the generation ends in a block of tokens repeated back to back (period 1–512
   tokens, covering >= 32 tokens) at least 3 times if it was cut by the token limit, or at least 6
   times otherwise. Evidence: the repeated span, its period in tokens and the repeat count.
4. `truncated_in_thinking`: cut by the token limit before `</think>` (whether the model wrote
   `<think>` or the chat template opened it).
5. `truncated_after_thinking`: cut by the token limit after `</think>`, in the answer.
6. `format_error`: finished, but the think block was never closed.
7. `no_answer`: finished, but nothing that looks like an answer (no \\boxed{}, "the answer is",
   "####", or number) after the thinking.
8. `format_error`: the answer was only found by the last-number fallback (no \\boxed{} / "the
   answer is" / "####") and is wrong.
9. `wrong_answer`: a properly given answer that is not equivalent to the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mimo_lab.checks import check_bool, check_choice, check_int, check_str

CATEGORIES = ("correct", "wrong_answer", "no_answer", "truncated_in_thinking", "truncated_after_thinking",
              "format_error", "repetition_loop", "grader_error")
FINISH_REASONS = ("stop", "length", "stopped")  # Trace.finish_reason
MIN_LOOP_TOKENS = 32
MAX_PERIOD = 512


@dataclass(frozen=True)
class Loop:
    period: int  # tokens in the repeated block
    repeats: float  # how many times it occurs back to back at the end
    start: int  # token index where the repetition begins


def find_tail_loop(token_ids, max_period: int = MAX_PERIOD, min_tokens: int = MIN_LOOP_TOKENS) -> Loop | None:
    """The longest-covering periodic tail of a token sequence, or None."""
    check_int("max_period", max_period, minimum=1)
    check_int("min_tokens", min_tokens, minimum=1)
    ids = torch.as_tensor(token_ids)
    n = ids.numel()
    best: Loop | None = None
    for period in range(1, min(max_period, n // 2) + 1):
        same = ids[period:] == ids[:-period]  # same[i]: ids[i + period] == ids[i]
        breaks = (~same).nonzero()
        run = same.numel() - (int(breaks[-1]) + 1 if breaks.numel() else 0)  # trailing matches
        covered = run + period
        if covered >= min_tokens and covered / period >= 2:
            loop = Loop(period, covered / period, n - covered)
            if best is None or covered > (n - best.start) * 1.05:
                best = loop
    return best


def classify(*, correct: bool, extracted: str | None, rule: str | None, finish_reason: str, closed_thinking: bool,
             uses_think_tags: bool, token_ids, grader_error: str | None = None, token_texts=None) -> tuple[str, dict]:
    """(category, evidence) for one sample, by the rules of this module."""
    check_bool("correct", correct)
    check_bool("closed_thinking", closed_thinking)
    check_bool("uses_think_tags", uses_think_tags)
    check_choice("finish_reason", finish_reason, FINISH_REASONS)
    check_str("extracted", extracted, none_ok=True, empty_ok=True)
    check_str("rule", rule, none_ok=True)
    if grader_error:
        return "grader_error", {"error": grader_error}
    unclosed = uses_think_tags and not closed_thinking
    if correct and not unclosed:
        return "correct", {}
    loop = find_tail_loop(token_ids)
    if loop is not None and loop.repeats >= (3 if finish_reason == "length" else 6):
        evidence = {"period_tokens": loop.period, "repeats": round(loop.repeats, 2), "starts_at_token": loop.start}
        if token_texts is not None:
            evidence["span"] = "".join(token_texts[loop.start : loop.start + loop.period])
        return "repetition_loop", evidence
    if finish_reason == "length":
        return ("truncated_in_thinking" if unclosed else "truncated_after_thinking"), {}
    if unclosed:
        return "format_error", {"reason": "the think block was never closed"}
    if extracted is None:
        return "no_answer", {}
    if rule == "last_number":
        return "format_error", {"reason": "no \\boxed{} or 'the answer is'; only a bare number was found"}
    return "wrong_answer", {}
