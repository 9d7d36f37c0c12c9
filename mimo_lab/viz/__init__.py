"""Plotly figure builders (returned, never shown) and shared colours."""

from mimo_lab.viz.segments import label_strip
from mimo_lab.viz.timeline import entropy_figure
from mimo_lab.viz.tokens import TokenView, token_figure, token_html

__all__ = ["entropy_figure", "label_strip", "token_figure", "token_html", "TokenView"]
