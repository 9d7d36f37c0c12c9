"""TraceViewer: a trace's tokens coloured by entropy / log-prob / MTP agreement; click a token to see its
alternatives (and, given a Lab, its logit lens); the entropy timeline below.

A token is named by its position (the prompt's tokens count, as everywhere in mimo_lab): `select(position)`,
`selected`, and the Playground's "Resample from here" all use it.
"""

from __future__ import annotations

import html
import math

import ipywidgets as W
import plotly.graph_objects as go

from mimo_lab.checks import check_choice
from mimo_lab.trace import Trace
from mimo_lab.viz.tokens import token_figure, token_rows
from mimo_lab.widgets.display import show

PAGE = 600  # tokens per page of the token grid


class TraceViewer(W.VBox):
    """`TraceViewer(trace, lab=None, color_by="entropy")`; `.select(position)` does what clicking that token does."""

    def __init__(self, trace: Trace, lab=None, color_by: str = "entropy"):
        if not isinstance(trace, Trace):
            raise TypeError(f"trace={type(trace).__name__} is not accepted: TraceViewer needs a Trace")
        options = ["entropy", "logprob"] + (["mtp_target_prob"] if trace.mtp is not None else [])
        if color_by == "mtp_target_prob" and trace.mtp is None:
            raise ValueError("color_by='mtp_target_prob' needs a trace with MTP analytics (a model with an MTP head)")
        check_choice("color_by", color_by, options)
        if lab is not None and not hasattr(lab, "tokenizer"):
            raise TypeError(f"lab={type(lab).__name__} is not accepted: a Lab (from mimo_lab.load) or None is")
        self.trace, self.lab = trace, lab
        self._lens = None
        self.selected: int | None = None  # the selected token's position
        self.color = W.ToggleButtons(options=options, value=color_by, description="colour by")
        self.page = W.IntSlider(value=0, min=0, max=max(0, (len(trace) - 1) // PAGE), description="page",
                                layout=W.Layout(display="none" if len(trace) <= PAGE else "flex"))
        self.header = W.HTML(self._header())
        self.grid = go.FigureWidget()
        self.details = W.HTML("<i>click a token to see its alternatives</i>")
        self.timeline = W.Output()
        self.color.observe(lambda _: self._draw(), names="value")
        self.page.observe(lambda _: self._draw(), names="value")
        super().__init__([self.header, W.HBox([self.color, self.page]), self.grid, self.details, self.timeline])
        self._draw()
        show(self.timeline, trace.plot() if len(trace) else None)

    def _header(self) -> str:
        t = self.trace
        mtp = t.mtp_accuracy()
        return (f"<div><b>{html.escape(t.model_name or 'trace')}</b> · {len(t)} tokens · finish: {t.finish_reason} · "
                f"final answer: <code>{html.escape(str(t.final_answer))}</code>"
                + (f" · MTP t+2 accuracy {mtp:.0%}" if mtp is not None and not math.isnan(mtp) else "")
                + f"<br><small>{html.escape(t.prompt_display[:200])}</small></div>")

    def _draw(self) -> None:
        start = self.page.value * PAGE
        view = _Window(self.trace, start, start + PAGE)
        figure = token_figure(view, self.color.value, max_tokens=PAGE) if len(view) else go.Figure()
        with self.grid.batch_update():
            self.grid.data = ()
            self.grid.layout = figure.layout
            for trace in figure.data:
                self.grid.add_trace(trace)
        if self.grid.data:
            self._cells = self._cell_map(view, start)
            self.grid.data[0].on_click(self._on_click)

    @staticmethod
    def _cell_map(view, start: int) -> dict[tuple[int, int], int]:
        return {(r, c): view.prompt_length + i for r, row in enumerate(token_rows(view.token_texts))
                for c, i in enumerate(row)}

    def _on_click(self, _trace, points, _state) -> None:
        for row, col in getattr(points, "point_inds", []) or []:
            position = self._cells.get((row, col))
            if position is not None:
                self.select(position)

    def select(self, position: int) -> None:
        """Show the alternatives of the token at `position` (and its logit lens when the viewer has a Lab)."""
        t = self.trace
        index = t.index_of(position)
        self.selected = position
        rows = "".join(f"<tr><td><code>{html.escape(repr(text))}</code></td><td>{math.exp(lp):.3f}</td></tr>"
                       for text, lp in zip(t.top_texts[index], t.top_logprobs[index].tolist(), strict=True))
        parts = [f"<b>position {position}</b> <code>{html.escape(repr(t.token_texts[index]))}</code> · "
                 f"p={math.exp(float(t.logprobs[index])):.3f} · entropy {float(t.entropies[index]):.3f} nats",
                 f"<table><tr><th>alternative</th><th>p</th></tr>{rows}</table>"]
        if t.mtp is not None and int(t.mtp["pred_id"][index]) >= 0:
            parts.append(f"MTP guess for position {position + 2}: p={float(t.mtp['pred_prob'][index]):.2f}, "
                         f"{'came true' if int(t.mtp['hit'][index]) == 1 else 'missed'}")
        lens = self._lens_rows(index)
        if lens:
            parts.append(f"<b>logit lens</b> (top guess for the next token by layer)<table>{lens}</table>")
        self.details.value = "<br>".join(parts)

    def _lens_rows(self, index: int) -> str:
        if self.lab is None or not self.trace.prompt_ids.numel():
            return ""
        if self._lens is None:
            from mimo_lab.probe.lens import logit_lens

            self._lens = logit_lens(self.lab, self.trace, k=3)
        position = self.trace.prompt_length + index - 1  # the position whose output chose this token
        if position < 0:
            return ""
        return "".join(
            f"<tr><td>L{layer}</td><td>" + ", ".join(
                f"<code>{html.escape(repr(text))}</code> {p:.2f}"
                for text, p in zip(self._lens.top_texts[li][position], self._lens.top_probs[li, position].tolist(),
                                   strict=True)) + "</td></tr>"
            for li, layer in enumerate(self._lens.layers))


class _Window:
    """A slice of a trace with the attributes the token figure reads."""

    def __init__(self, trace: Trace, start: int, end: int):
        part = slice(start, min(end, len(trace)))
        self.prompt_length = trace.prompt_length + start  # the position of the window's first token
        self.token_texts = trace.token_texts[part]
        self.top_texts = trace.top_texts[part]
        self.entropies, self.model_entropies = trace.entropies[part], trace.model_entropies[part]
        self.logprobs, self.top_logprobs = trace.logprobs[part], trace.top_logprobs[part]
        self.mtp = None if trace.mtp is None else {k: v[part] for k, v in trace.mtp.items()}

    def __len__(self) -> int:
        return len(self.token_texts)
