"""Shared colours and layout for every mimo_lab figure."""

from __future__ import annotations

import plotly.graph_objects as go

LABEL_COLOURS = {
    "problem_setup": "#8c8c8c",
    "plan_generation": "#4c78a8",
    "fact_retrieval": "#72b7b2",
    "active_computation": "#54a24b",
    "uncertainty_management": "#e45756",
    "result_consolidation": "#f58518",
    "self_checking": "#b279a2",
    "final_answer_emission": "#222222",
}
MARKER_COLOURS = {"backtracking": "#e45756", "verification": "#b279a2", "conclusion": "#f58518"}
ENTROPY_SCALE = "OrRd"
LOGPROB_SCALE = "Blues_r"
FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=12)


def base_layout(fig: go.Figure, title: str | None = None, height: int | None = None) -> go.Figure:
    fig.update_layout(template="plotly_white", font=FONT, title=title, margin=dict(l=50, r=20, t=50 if title else 20,
                                                                                     b=40))
    if height:
        fig.update_layout(height=height)
    return fig


def shorten(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
