"""Where two traces of the same prompt part ways: the first differing token, and their steps side by side."""

from __future__ import annotations

import difflib
import html
import math
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from mimo_lab.trace import Trace
from mimo_lab.viz.style import base_layout, shorten


@dataclass
class Divergence:
    """The fork between trace `a` and trace `b` (None fields when they never diverge)."""

    a: Trace
    b: Trace
    position: int | None  # index of the first differing generated token
    prefix: str  # the shared text before it

    @property
    def identical(self) -> bool:
        return self.position is None

    def _side(self, trace: Trace) -> dict:
        i = self.position
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
            f"fork at token {self.position}: {self._side(self.a)['token']!r} vs {self._side(self.b)['token']!r}")
        return base_layout(fig, title or fork, height=min(900, 120 + 28 * len(frame)))

    def __repr__(self) -> str:
        if self.identical:
            return f"Divergence(identical, {len(self.a)} tokens)"
        a, b = self._side(self.a), self._side(self.b)
        return (f"Divergence(at token {self.position}: {a['token']!r} (p={a['prob']}) vs {b['token']!r} "
                f"(p={b['prob']}), after {shorten(self.prefix[-40:], 40)!r})")

    def _repr_html_(self) -> str:
        if self.identical:
            return "<b>The traces are identical.</b>"
        a, b = self._side(self.a), self._side(self.b)
        return (f"<div><b>Fork at token {self.position}</b> after …{html.escape(self.prefix[-80:])}<br>"
                f"a: <code>{html.escape(repr(a['token']))}</code> p={a['prob']:.3f}, entropy {a['entropy']:.3f}; "
                f"b: <code>{html.escape(repr(b['token']))}</code> p={b['prob']:.3f}, entropy {b['entropy']:.3f}"
                f"</div>{self.steps()._repr_html_()}")


def divergence(a: Trace, b: Trace) -> Divergence:
    """Compare two traces of the same prompt: where they first differ, and their steps side by side."""
    if a.prompt_text and b.prompt_text and a.prompt_text != b.prompt_text:
        raise ValueError("the traces answer different prompts: compare samples of the same prompt "
                         f"({shorten(a.prompt, 40)!r} vs {shorten(b.prompt, 40)!r})")
    ids_a, ids_b = a.token_ids.tolist(), b.token_ids.tolist()
    position = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=False)) if x != y), None)
    if position is None and len(ids_a) != len(ids_b):
        position = min(len(ids_a), len(ids_b))
    prefix = a.text[: int(a.spans[position, 0])] if position is not None and position < len(a) else a.text
    return Divergence(a, b, position, prefix)
