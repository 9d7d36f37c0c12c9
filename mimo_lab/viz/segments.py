"""A strip of step labels along the trace."""

from __future__ import annotations

import plotly.graph_objects as go

from mimo_lab.viz.style import LABEL_COLOURS, base_layout, shorten


def label_strip(segments, title: str | None = None) -> go.Figure:
    """One bar per segment, placed by its character span and coloured by its label."""
    fig = go.Figure()
    for label, colour in LABEL_COLOURS.items():
        chosen = [s for s in segments if s.label == label]
        if not chosen:
            continue
        fig.add_trace(go.Bar(
            x=[s.end - s.start for s in chosen], base=[s.start for s in chosen], y=[segments.kind] * len(chosen),
            orientation="h", name=label, marker_color=colour,
            text=[str(s.index) for s in chosen], textposition="inside",
            hovertext=[f"#{s.index} {label}: {shorten(s.text, 120)}" for s in chosen], hoverinfo="text"))
    fig.update_layout(barmode="overlay", bargap=0.2, legend=dict(orientation="h", y=-0.35))
    fig.update_xaxes(title_text="character offset in the trace")
    return base_layout(fig, title or f"{len(segments)} {segments.kind}s by label", height=230)
