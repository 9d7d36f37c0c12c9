"""Entropy and log-prob along a trace, with step boundaries, markers and forking tokens."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mimo_lab.viz.style import MARKER_COLOURS, base_layout, shorten


def entropy_figure(trace, kind: str = "sentence", fork_quantile: float = 0.8, title: str | None = None) -> go.Figure:
    """Two panels over token positions (absolute: the prompt's tokens count): sampling entropy (forks
    marked) and log-prob of each token; dotted lines at step boundaries, coloured dots where a
    backtracking / verification / conclusion marker starts a step."""
    n = len(trace)
    first = trace.prompt_length
    positions = list(range(first, first + n))
    texts = [repr(t) for t in trace.token_texts]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=("entropy of the sampling distribution (nats)", "log-prob of the chosen token"))
    fig.add_trace(go.Scatter(x=positions, y=trace.entropies.tolist(), mode="lines", name="entropy",
                             line=dict(color="#e45756", width=1), text=texts,
                             hovertemplate="#%{x} %{text}<br>H=%{y:.3f}<extra></extra>"), row=1, col=1)
    forks = trace.forking_tokens(fork_quantile) if n else None
    if forks is not None and len(forks):
        fig.add_trace(go.Scatter(x=list(forks.index), y=forks["entropy"].tolist(), mode="markers",
                                 name=f"forks (top {1 - fork_quantile:.0%} entropy)",
                                 marker=dict(color="#e45756", size=5, symbol="circle-open"),
                                 text=[repr(t) for t in forks["text"]],
                                 hovertemplate="fork #%{x} %{text}<br>H=%{y:.3f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=positions, y=trace.logprobs.tolist(), mode="lines", name="log-prob",
                             line=dict(color="#4c78a8", width=1), text=texts,
                             hovertemplate="#%{x} %{text}<br>log p=%{y:.3f}<extra></extra>"), row=2, col=1)
    segments = trace.segments(kind)
    starts = segments.token_segments(trace.spans) if n else []
    boundaries = [i for i in range(1, n) if starts[i] != starts[i - 1] and min(starts[i], starts[i - 1]) >= 0]
    if boundaries:
        top = max(trace.entropies.max().item(), 0.1)
        xs, ys = [], []
        for b in boundaries:
            xs += [first + b - 0.5, first + b - 0.5, None]
            ys += [0, top, None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"{kind} boundaries", hoverinfo="skip",
                                 line=dict(color="#bbbbbb", width=1, dash="dot")), row=1, col=1)
    first_token = {}
    for i, seg in enumerate(starts):
        if seg >= 0 and seg not in first_token:
            first_token[seg] = i
    for marker, colour in MARKER_COLOURS.items():
        hits = [(first_token[s.index], s) for s in segments if marker in s.markers and s.index in first_token]
        if hits:
            fig.add_trace(go.Scatter(
                x=[first + i for i, _ in hits], y=[float(trace.entropies[i]) for i, _ in hits], mode="markers",
                name=marker,
                marker=dict(color=colour, size=9, symbol="diamond"),
                text=[f"{s.label}: {shorten(s.text)}" for _, s in hits],
                hovertemplate="#%{x} %{text}<extra>" + marker + "</extra>"), row=1, col=1)
    fig.update_xaxes(title_text="token position", row=2, col=1)
    return base_layout(fig, title or f"{trace.model_name or 'trace'}: {n} tokens", height=480)
