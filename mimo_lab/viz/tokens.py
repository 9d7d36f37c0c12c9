"""The trace's text with tokens coloured by entropy or log-prob; hovering shows the alternatives."""

from __future__ import annotations

import html
import math

import plotly.graph_objects as go

from mimo_lab.viz.style import ENTROPY_SCALE, LOGPROB_SCALE, base_layout

_METRICS = ("entropy", "logprob", "model_entropy", "mtp_target_prob")


def _values(trace, color_by: str) -> list[float]:
    if color_by not in _METRICS:
        raise ValueError(f"color_by {color_by!r} is not known: use one of {', '.join(_METRICS)}")
    if color_by == "entropy":
        return trace.entropies.tolist()
    if color_by == "model_entropy":
        return trace.model_entropies.tolist()
    if color_by == "logprob":
        return trace.logprobs.tolist()
    if trace.mtp is None:
        raise ValueError("color_by='mtp_target_prob' needs a trace with MTP analytics (a model with an MTP head)")
    return trace.mtp["target_prob"].tolist()


def _position(trace, i: int) -> int:
    """The absolute position of generated token i (prompt tokens first, as everywhere in mimo_lab)."""
    return int(getattr(trace, "prompt_length", 0)) + i


def _hover(trace, i: int) -> str:
    position = _position(trace, i)
    alternatives = ", ".join(f"{text!r} {math.exp(lp):.2f}"
                             for text, lp in zip(trace.top_texts[i], trace.top_logprobs[i].tolist(), strict=True))
    line = (f"#{position} {trace.token_texts[i]!r}  p={math.exp(float(trace.logprobs[i])):.3f}  "
            f"H={float(trace.entropies[i]):.3f}\nalternatives: {alternatives}")
    if trace.mtp is not None and int(trace.mtp["pred_id"][i]) >= 0:
        line += (f"\nMTP guess for #{position + 2}: p={float(trace.mtp['pred_prob'][i]):.2f} "
                 f"hit={int(trace.mtp['hit'][i])}")
    return line


def _background(value: float, color_by: str, vmax: float) -> str:
    if color_by in ("logprob",):
        strength = min(1.0, -value / max(vmax, 1e-9))  # 0 = certain, 1 = very unlikely
        return f"rgba(66, 133, 244, {0.75 * strength:.3f})"
    if color_by == "mtp_target_prob":
        strength = 0.0 if math.isnan(value) else 1.0 - value
        return f"rgba(178, 121, 162, {0.75 * strength:.3f})"
    strength = min(1.0, value / max(vmax, 1e-9))
    return f"rgba(228, 87, 86, {0.75 * strength:.3f})"


def token_html(trace, color_by: str = "entropy", max_tokens: int | None = 4000) -> str:
    """HTML of the generated text, each token a span coloured by `color_by` (its `data-position` the token's
    position), its title the alternatives."""
    values = _values(trace, color_by)
    shown = len(trace) if max_tokens is None else min(len(trace), max_tokens)
    finite = [abs(v) for v in values[:shown] if not math.isnan(v)]
    vmax = max(finite, default=1.0) if color_by != "logprob" else min(10.0, max(finite, default=1.0))
    parts = []
    for i in range(shown):
        text = html.escape(trace.token_texts[i]).replace("\n", "↵<br>")
        parts.append(f'<span class="mimo-token" data-position="{_position(trace, i)}" '
                     f'title="{html.escape(_hover(trace, i))}" '
                     f'style="background:{_background(values[i], color_by, vmax)}">{text}</span>')
    more = f"<div>… {len(trace) - shown} more tokens</div>" if shown < len(trace) else ""
    legend = (f"<div style='font-size:11px;color:#666'>coloured by {color_by} "
              f"(darker = {'less likely' if color_by in ('logprob', 'mtp_target_prob') else 'more uncertain'}); "
              "hover a token for its alternatives</div>")
    return ("<div class='mimo-trace' style='font-family:monospace;white-space:pre-wrap;line-height:1.6'>"
            f"{legend}{''.join(parts)}{more}</div>")


def token_rows(token_texts: list[str], tokens_per_row: int = 24) -> list[list[int]]:
    """Token indices laid out in rows: a new row after `tokens_per_row` tokens or after a newline."""
    rows: list[list[int]] = [[]]
    for i, text in enumerate(token_texts):
        if len(rows[-1]) >= tokens_per_row:
            rows.append([])
        rows[-1].append(i)
        if "\n" in text:
            rows.append([])
    return [r for r in rows if r] or [[]]


def token_figure(trace, color_by: str = "entropy", tokens_per_row: int = 24, max_tokens: int = 2000,
                 title: str | None = None) -> go.Figure:
    """A token grid (rows follow the text's lines): colour = `color_by`, hover = the alternatives."""
    values = _values(trace, color_by)
    shown = min(len(trace), max_tokens)
    rows = token_rows(trace.token_texts[:shown], tokens_per_row)
    z, text, hover = [], [], []
    for row in rows:
        pad = tokens_per_row - len(row)
        z.append([values[i] for i in row] + [None] * pad)
        text.append([trace.token_texts[i].replace("\n", "↵") for i in row] + [""] * pad)
        hover.append([_hover(trace, i).replace("\n", "<br>") for i in row] + [""] * pad)
    finite = [v for v in values[:shown] if not math.isnan(v)] or [0.0]
    if color_by == "logprob":  # 0 (certain) is pale; the floor keeps near-certain traces pale
        zmin, zmax, scale = min(min(finite), -2.0), 0.0, LOGPROB_SCALE
    elif color_by == "mtp_target_prob":
        zmin, zmax, scale = 0.0, 1.0, "Purples_r"
    else:
        zmin, zmax, scale = 0.0, max(max(finite), 1.0), ENTROPY_SCALE
    fig = go.Figure(go.Heatmap(
        z=z, text=text, hovertext=hover, hoverinfo="text", texttemplate="%{text}", textfont=dict(size=10),
        colorscale=scale, xgap=1, ygap=1, colorbar=dict(title=color_by), zmin=zmin, zmax=zmax))
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    return base_layout(fig, title or f"tokens coloured by {color_by}", height=max(200, 22 * len(rows) + 80))


class TokenView:
    """Shows a trace's tokens coloured by a metric (HTML in a notebook; `.plot()` for a figure)."""

    def __init__(self, trace, color_by: str = "entropy"):
        _values(trace, color_by)  # validate early
        self.trace, self.color_by = trace, color_by

    def _repr_html_(self) -> str:
        return token_html(self.trace, self.color_by)

    def plot(self, **kwargs) -> go.Figure:
        return token_figure(self.trace, self.color_by, **kwargs)
