"""Sentences and steps of a reasoning text, with exact spans, markers and step labels.

- `split_sentences(text)` / `split_steps(text)`: segments whose texts join back to `text`
  exactly (each segment keeps the whitespace that follows it).
- Markers: backtracking ("Wait", "Hmm", "Actually", ...), verification ("Let me check",
  "Check:", "verify", ...), conclusion ("So", "Therefore", "the answer is", ...).
- Labels: the 8-tag taxonomy of Thought Anchors (Bogdan et al. 2025): problem_setup,
  plan_generation, fact_retrieval, active_computation, uncertainty_management,
  result_consolidation, self_checking, final_answer_emission. `RuleLabeller` assigns them by
  ordered, readable rules (the first that matches wins; `explain()` says which); pass any
  callable `(text, index, count) -> label` to use your own.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd

LABELS = ("problem_setup", "plan_generation", "fact_retrieval", "active_computation", "uncertainty_management",
          "result_consolidation", "self_checking", "final_answer_emission")

MARKERS: dict[str, re.Pattern] = {
    "backtracking": re.compile(r"\b(?:wait|hmm+|actually|hold on|oops|oh no|on second thought|scratch that)\b"
                               r"|\bno,|\bbut wait\b|\bi made a mistake\b|\bthat'?s (?:not right|wrong)\b",
                               re.IGNORECASE),
    "verification": re.compile(r"\b(?:let me (?:check|verify|double[- ]check|confirm)|check:|to (?:check|verify)"
                               r"|verif(?:y|ication)|double[- ]check|sanity check|correct\.|it matches)",
                               re.IGNORECASE),
    "conclusion": re.compile(r"^(?:so|therefore|thus|hence|in conclusion|in total|overall)\b|\bthe (?:final )?answer is"
                             r"|\\boxed\{|\bthat gives\b", re.IGNORECASE),
}

# A sentence ends after . ! ? followed by whitespace (so not inside 3.5), or at a newline; the
# spaces and newlines after it belong to it.
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)[ \t]*\n*|\n+")
_STEP_END = re.compile(r"\n+")


SENTENCE_STYLES = ("mimo_lab", "thought_anchors")
# What an analysis "by sentence" can cut a text into: mimo_lab's sentences, steps (lines), or Thought
# Anchors' chunks (their sentence style, for traces of long-form reasoning models).
SEGMENT_KINDS = ("sentence", "step", "thought_anchors")
_TA_ENDS = ".?!"
_TA_MIN_CHARS = 10


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    """[start, end) without the whitespace `str.strip()` would remove at either side."""
    piece = text[start:end]
    return start + len(piece) - len(piece.lstrip()), end - (len(piece) - len(piece.rstrip()))


def _thought_anchors_region(text: str) -> tuple[int, int]:
    """The part of `text` Thought Anchors' splitter reads: after the first <think> (up to a second one),
    before the first </think> in what is left, stripped at each step as theirs is."""
    start, end = 0, len(text)
    if "<think>" in text:
        start = text.index("<think>") + len("<think>")
        again = text.find("<think>", start)
        end = again if again >= 0 else len(text)
        start, end = _strip_span(text, start, end)
    close = text.find("</think>", start, end)
    if close >= 0:
        start, end = _strip_span(text, start, close)
    return start, end


def thought_anchors_spans(text: str) -> list[tuple[int, int, str]]:
    """Thought Anchors' chunks of `text` (Bogdan et al. 2025; their `split_solution_into_chunks`):
    a chunk ends after ".", "?" or "!" followed by a space or newline, and at a blank line (after
    the first newline of "\n\n"), but not at a single newline; chunks are stripped; the piece after
    the last end is a chunk too (as in the released data); then a chunk under 10 characters is joined,
    with one space, to the next one (the last one to the one before it).

    Returns (start, end, chunk text) per chunk: [start, end) is the chunk's span of `text` (a joined
    chunk spans its pieces and whatever lay between them), and the chunk text is theirs (joined
    pieces with single spaces), which equals text[start:end] up to runs of whitespace."""
    lo, hi = _thought_anchors_region(text)
    pieces, begin = [], lo
    for i in range(lo, hi):
        blank = text.startswith("\n\n", i) and i + 2 <= hi or text.startswith("\r\n\r\n", i) and i + 4 <= hi
        sentence = i < hi - 1 and text[i] in _TA_ENDS and text[i + 1] in " \n"
        if (blank or sentence) and text[begin:i + 1].strip():
            a, b = _strip_span(text, begin, i + 1)
            pieces.append([a, b, text[a:b]])
            begin = i + 1
    if text[begin:hi].strip():
        a, b = _strip_span(text, begin, hi)
        pieces.append([a, b, text[a:b]])
    i = 0
    while i < len(pieces):
        if len(pieces[i][2]) >= _TA_MIN_CHARS:
            i += 1
            continue
        if i == len(pieces) - 1:
            if i == 0:
                break
            prev = pieces[i - 1]
            pieces[i - 1] = [prev[0], pieces[i][1], prev[2] + " " + pieces[i][2]]
            pieces.pop(i)
        else:
            nxt = pieces[i + 1]
            pieces[i + 1] = [pieces[i][0], nxt[1], pieces[i][2] + " " + nxt[2]]
            pieces.pop(i)
    return [tuple(p) for p in pieces]


@dataclass(frozen=True)
class Segment:
    """A sentence or step: character span [start, end) in the text it was cut from."""

    index: int
    start: int
    end: int
    text: str
    label: str = ""
    markers: tuple[str, ...] = ()

    @property
    def stripped(self) -> str:
        return self.text.strip()


def _split(text: str, boundary: re.Pattern, offset: int = 0) -> list[tuple[int, int]]:
    spans, start = [], 0
    for match in boundary.finditer(text):
        end = match.end()
        if end > start and text[start:end].strip():
            spans.append((start, end))
            start = end
        elif spans and end > start:  # whitespace only: attach to the previous segment
            spans[-1] = (spans[-1][0], end)
            start = end
    if start < len(text):
        if text[start:].strip() or not spans:
            spans.append((start, len(text)))
        else:
            spans[-1] = (spans[-1][0], len(text))
    return [(s + offset, e + offset) for s, e in spans]


def markers_of(text: str) -> tuple[str, ...]:
    """The marker kinds found in a piece of text."""
    stripped = text.strip()
    return tuple(kind for kind, pattern in MARKERS.items() if pattern.search(stripped))


# ----------------------------------------------------------------------------- labelling

_RULES: list[tuple[str, str, Callable[[str, int, int], bool]]] = []


def _rule(label: str, description: str):
    def register(predicate):
        _RULES.append((label, description, predicate))
        return predicate

    return register


_ARITHMETIC = re.compile(r"\d\s*[-+*/×÷^=<>]\s*-?\d|\d\s*=|=\s*-?\d")


@_rule("final_answer_emission", "contains \\boxed{...}, 'the final answer', or 'the answer is'")
def _final(text, index, count):
    return bool(re.search(r"\\boxed\{|\bfinal answer\b|\bthe answer is\b", text, re.IGNORECASE))


@_rule("uncertainty_management", "a backtracking marker: Wait, Hmm, Actually, I made a mistake, ...")
def _uncertain(text, index, count):
    return bool(MARKERS["backtracking"].search(text)) or bool(
        re.search(r"\b(?:not sure|maybe I|might be wrong|let me reconsider|re-?examine)\b", text, re.IGNORECASE))


@_rule("self_checking", "a verification marker: Check:, let me verify, double-check, it matches, ...")
def _check(text, index, count):
    return bool(MARKERS["verification"].search(text))


@_rule("fact_retrieval", "recalls a fact: recall, we know, by definition, the formula, is defined as, ...")
def _fact(text, index, count):
    return bool(re.search(r"\b(?:recall|we know|i know|by definition|the formula|is defined as|theorem|identity)\b",
                          text, re.IGNORECASE))


@_rule("plan_generation", "announces an approach: first, next, let me, I will, I'll, the plan, step by step, ...")
def _plan(text, index, count):
    return bool(re.search(r"^(?:first|next|then|now|let me|let's|i will|i'll|i should|we can|to solve|the plan)\b"
                          r"|\b(?:column by column|one digit .* at a time|step by step|taking the smallest"
                          r"|and count each)\b",
                          text.strip(), re.IGNORECASE))


@_rule("problem_setup", "the first sentence, or one that restates the question: we need, we are given, the problem")
def _setup(text, index, count):
    if re.search(r"\b(?:we are given|the problem|the question|asks? (?:for|us)|we need to find|I need (?:x|to find))\b",
                 text, re.IGNORECASE):
        return True
    return index == 0 and not _ARITHMETIC.search(text)


@_rule("result_consolidation", "sums up: So, Therefore, Thus, That gives, the sorted list is, ...")
def _consolidate(text, index, count):
    return bool(MARKERS["conclusion"].search(text.strip())) or bool(
        re.search(r"\b(?:that gives|which gives|so the|only .* is left)\b", text, re.IGNORECASE))


@_rule("active_computation", "arithmetic: digits joined by + - * / = < >, or 'the smallest of ...'")
def _compute(text, index, count):
    return bool(_ARITHMETIC.search(text)) or bool(re.search(r"\bthe smallest of\b|\bwrite \d", text, re.IGNORECASE))


@dataclass
class RuleLabeller:
    """Labels a sentence by the first matching rule; `explain` shows the rule. Replaceable."""

    rules: list[tuple[str, str, Callable[[str, int, int], bool]]] = field(default_factory=lambda: list(_RULES))
    default: str = "active_computation"

    def __call__(self, text: str, index: int, count: int) -> str:
        return self.explain(text, index, count)[0]

    def explain(self, text: str, index: int = 1, count: int = 2) -> tuple[str, str]:
        for label, description, predicate in self.rules:
            if predicate(text, index, count):
                return label, description
        return self.default, "no rule matched (default)"

    def to_frame(self) -> pd.DataFrame:
        """The rules, in the order they are tried."""
        return pd.DataFrame([(label, description) for label, description, _ in self.rules],
                            columns=["label", "rule"])


DEFAULT_LABELLER = RuleLabeller()


# ----------------------------------------------------------------------------- segments


class Segments(Sequence):
    """The sentences (or steps) of a text: a list of Segment with a table and a figure."""

    def __init__(self, text: str, segments: list[Segment], kind: str, offset: int = 0):
        self.text = text  # the full text the spans point into
        self._segments = segments
        self.kind = kind
        self.offset = offset
        # a Trace's segments also carry their token positions [start, end) (`Trace.segments` sets them)
        self.positions: list[tuple[int, int]] | None = None

    def __getitem__(self, i):
        return self._segments[i]

    def __len__(self) -> int:
        return len(self._segments)

    def __repr__(self) -> str:
        return f"Segments({len(self)} {self.kind}s)"

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self._segments]

    def to_frame(self) -> pd.DataFrame:
        """One row per segment: `start` / `end` are character offsets into `text`; a Trace's segments
        add `start_position` / `end_position`, the token positions [start, end) every probe takes."""
        rows = [{"index": s.index, "start": s.start, "end": s.end, "label": s.label,
                 "markers": ", ".join(s.markers), "text": s.stripped} for s in self._segments]
        for row, (start, end) in zip(rows, self.positions or [], strict=False):
            row["start_position"], row["end_position"] = start, end
        return pd.DataFrame(rows).set_index("index")

    def _repr_html_(self) -> str:
        return self.to_frame()._repr_html_()

    def at(self, char_offset: int) -> int:
        """Index of the segment covering a character offset of `text` (-1 if none)."""
        for seg in self._segments:
            if seg.start <= char_offset < seg.end:
                return seg.index
        return -1

    def token_segments(self, spans) -> list[int]:
        """For each token span (start, end), the index of the segment it starts in (-1 outside)."""
        starts = [s.start for s in self._segments]
        out = []
        for start, _end in (spans.tolist() if hasattr(spans, "tolist") else spans):
            i = bisect.bisect_right(starts, start) - 1
            inside = i >= 0 and start < self._segments[i].end
            out.append(self._segments[i].index if inside else -1)
        return out

    def plot(self, title: str | None = None):
        from mimo_lab.viz.segments import label_strip

        return label_strip(self, title=title)


def segment(text: str, *, kind: str = "sentence", labeller: Callable[[str, int, int], str] | None = None,
            offset: int = 0, full_text: str | None = None) -> Segments:
    """Cut `text` into segments, label them and find their markers.

    kind: "sentence" (mimo_lab's: a sentence ends at . ! ? before whitespace and at every newline;
    the texts join back to `text`), "step" (lines), or "thought_anchors" (Thought Anchors' chunks,
    `thought_anchors_spans`: no break at a single newline, short pieces joined, only the thinking,
    stripped; so the texts need not cover all of `text`).
    offset: where `text` starts inside `full_text` (spans are given in `full_text`'s offsets).
    """
    from mimo_lab.checks import check_choice, check_str

    check_str("text", text, empty_ok=True)
    check_choice("kind", kind, SEGMENT_KINDS)
    if labeller is not None and not callable(labeller):
        raise TypeError(f"labeller={labeller!r} is not accepted: a callable (sentence, index, count) -> label, "
                        "or None, is")
    labeller = labeller or DEFAULT_LABELLER
    if kind == "thought_anchors":
        spans = [(a, b) for a, b, _ in thought_anchors_spans(text)]
    else:
        spans = _split(text, _SENTENCE_END if kind == "sentence" else _STEP_END)
    segments = []
    for i, (start, end) in enumerate(spans):
        piece = text[start:end]
        label = labeller(piece.strip(), i, len(spans))
        if label not in LABELS and labeller is DEFAULT_LABELLER:
            raise AssertionError(label)
        segments.append(Segment(i, start + offset, end + offset, piece, label, markers_of(piece)))
    return Segments(full_text if full_text is not None else text, segments, kind, offset)


def split_sentences(text: str, style: str = "mimo_lab") -> list[Segment]:
    """Sentences of `text` (spans into `text`). style "mimo_lab": their texts join back to `text`;
    "thought_anchors": Thought Anchors' chunks (`thought_anchors_spans`), each the span of its chunk
    (the same as `segment(text, kind="thought_anchors")`)."""
    from mimo_lab.checks import check_choice

    check_choice("style", style, SENTENCE_STYLES)
    return list(segment(text, kind="sentence" if style == "mimo_lab" else "thought_anchors"))


def split_steps(text: str) -> list[Segment]:
    """Steps (non-empty lines) of `text`; their texts join back to `text`."""
    return list(segment(text, kind="step"))
