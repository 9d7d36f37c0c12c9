"""Where two traces of the same prompt part ways: the first differing token, and their steps side by side.

`trace.divergence(other)` is the method; `divergence(a, b)` the function behind it. Positions are absolute
(the prompt's tokens count), as everywhere in mimo_lab.
"""

from __future__ import annotations

import difflib
import html
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import torch

from mimo_lab.checks import check_path
from mimo_lab.trace import Trace
from mimo_lab.viz.style import base_layout, shorten


@dataclass
class Divergence:
    """The fork between trace `a` and trace `b` (None fields when they never diverge)."""

    a: Trace
    b: Trace
    position: int | None  # position of the first differing generated token (prompt_length + its index)
    prefix: str  # the shared text before it

    @property
    def identical(self) -> bool:
        return self.position is None

    @property
    def index(self) -> int | None:
        """The fork as an index into the traces' generated tokens (position - prompt_length)."""
        return None if self.position is None else self.position - self.a.prompt_length

    def _side(self, trace: Trace) -> dict:
        i = self.index
        if i is None or i >= len(trace):
            return {"token": None, "prob": None, "entropy": None, "alternatives": []}
        return {"token": trace.token_texts[i], "prob": math.exp(float(trace.logprobs[i])),
                "entropy": float(trace.entropies[i]),
                "alternatives": list(zip(trace.top_texts[i], trace.top_logprobs[i].exp().tolist(), strict=True))}

    @property
    def fork(self) -> pd.DataFrame:
        """The two choices at the fork: token, its probability, the entropy there, the alternatives."""
        return pd.DataFrame([self._side(self.a), self._side(self.b)], index=["a", "b"])

    def steps(self, kind: str = "step") -> pd.DataFrame:
        """The two traces' steps aligned side by side (difflib on the step texts)."""
        left = [s.stripped for s in self.a.segments(kind)]
        right = [s.stripped for s in self.b.segments(kind)]
        rows = []
        matcher = difflib.SequenceMatcher(a=left, b=right, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            for k in range(max(i2 - i1, j2 - j1)):
                rows.append({"a": left[i1 + k] if i1 + k < i2 else "", "b": right[j1 + k] if j1 + k < j2 else "",
                             "same": tag == "equal"})
        return pd.DataFrame(rows)

    def to_frame(self) -> pd.DataFrame:
        return self.steps()

    def plot(self, kind: str = "step", title: str | None = None) -> go.Figure:
        """A two-column table of the aligned steps; differing rows highlighted."""
        frame = self.steps(kind)
        fill = [["#ffffff" if same else "#fde8e8" for same in frame["same"]]] * 2
        fig = go.Figure(go.Table(
            header=dict(values=[f"a: {self.a.final_answer!r} ({len(self.a)} tokens)",
                                f"b: {self.b.final_answer!r} ({len(self.b)} tokens)"], align="left"),
            cells=dict(values=[frame["a"].tolist(), frame["b"].tolist()], align="left", fill_color=fill)))
        fork = "identical" if self.identical else (
            f"fork at position {self.position}: {self._side(self.a)['token']!r} vs {self._side(self.b)['token']!r}")
        return base_layout(fig, title or fork, height=min(900, 120 + 28 * len(frame)))

    def __repr__(self) -> str:
        if self.identical:
            return f"Divergence(identical, {len(self.a)} tokens)"
        a, b = self._side(self.a), self._side(self.b)
        return (f"Divergence(at position {self.position}: {a['token']!r} (p={a['prob']}) vs {b['token']!r} "
                f"(p={b['prob']}), after {shorten(self.prefix[-40:], 40)!r})")

    def save(self, path: str | Path) -> Path:
        """Write both traces (`path/a`, `path/b`, each a saved Trace); the fork is recomputed on load."""
        path = check_path("path", path)
        self.a.save(path / "a")
        self.b.save(path / "b")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Divergence:
        """Reopen a Divergence written by `save` (FileNotFoundError naming the folder if a trace is missing)."""
        path = check_path("path", path)
        for side in ("a", "b"):
            if not (path / side / "trace.json").is_file():
                raise FileNotFoundError(f"{path} is not a saved Divergence: {path / side / 'trace.json'} is missing")
        return divergence(Trace.load(path / "a"), Trace.load(path / "b"))

    def _repr_html_(self) -> str:
        if self.identical:
            return "<b>The traces are identical.</b>"
        a, b = self._side(self.a), self._side(self.b)
        return (f"<div><b>Fork at position {self.position}</b> after …{html.escape(self.prefix[-80:])}<br>"
                f"a: <code>{html.escape(repr(a['token']))}</code> p={a['prob']:.3f}, entropy {a['entropy']:.3f}; "
                f"b: <code>{html.escape(repr(b['token']))}</code> p={b['prob']:.3f}, entropy {b['entropy']:.3f}"
                f"</div>{self.steps()._repr_html_()}")


def divergence(a: Trace, b: Trace, *, _names: tuple[str, str] = ("a", "b")) -> Divergence:
    """Compare two traces of the same prompt: where they first differ (an absolute position), and their
    steps side by side. Also `a.divergence(b)`."""
    for name, trace in zip(_names, (a, b), strict=True):
        if not isinstance(trace, Trace):
            raise TypeError(f"{name}={shorten(repr(trace), 60)} ({type(trace).__name__}) is not accepted: a Trace "
                            "is")
    if a.tokenizer_fingerprint and b.tokenizer_fingerprint and a.tokenizer_fingerprint != b.tokenizer_fingerprint:
        raise ValueError(f"{_names[0]} (from {a.model_name or 'unknown'!r}, tokenizer {a.tokenizer_fingerprint}) and "
                         f"{_names[1]} (from {b.model_name or 'unknown'!r}, tokenizer {b.tokenizer_fingerprint}) were "
                         "made with different tokenizers: their tokens cannot be compared position by position")
    if a.prompt_text and b.prompt_text and a.prompt_text != b.prompt_text:
        raise ValueError(f"{_names[0]} and {_names[1]} answer different prompts: compare samples of the same prompt "
                         f"({shorten(a.prompt_display, 40)!r} vs {shorten(b.prompt_display, 40)!r})")
    if a.prompt_length != b.prompt_length or not torch.equal(a.prompt_ids, b.prompt_ids):
        raise ValueError(f"{_names[0]} and {_names[1]} have different prompt tokens ({a.prompt_length} vs "
                         f"{b.prompt_length}): compare samples of the same prompt, tokenized by the same tokenizer")
    ids_a, ids_b = a.token_ids.tolist(), b.token_ids.tolist()
    index = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=False)) if x != y), None)
    if index is None and len(ids_a) != len(ids_b):
        index = min(len(ids_a), len(ids_b))
    prefix = a.text[: int(a.spans[index, 0])] if index is not None and index < len(a) else a.text
    return Divergence(a, b, None if index is None else a.prompt_length + index, prefix)
