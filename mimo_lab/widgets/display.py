"""Putting results into ipywidgets Outputs in a way that works with and without a live kernel."""

from __future__ import annotations

import json

from IPython.display import HTML


class PlotlyBundle:
    """A plotly figure as a display object (the mimetype JupyterLab's plotly renderer reads)."""

    def __init__(self, figure):
        self.figure = figure

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"application/vnd.plotly.v1+json": json.loads(self.figure.to_json()),
                "text/plain": f"<plotly figure: {self.figure.layout.title.text or 'untitled'}>"}


def show(out, *items, clear: bool = True) -> None:
    """Replace (or extend) an Output's content with figures, HTML strings or objects."""
    if clear:
        out.outputs = ()
    for item in items:
        if item is None:
            continue
        if hasattr(item, "to_plotly_json"):
            out.append_display_data(PlotlyBundle(item))
        elif isinstance(item, str):
            out.append_display_data(HTML(item))
        else:
            out.append_display_data(item)


def output_html(out) -> str:
    """All text/html and text/plain content of an Output (for tests and status checks)."""
    parts = []
    for entry in out.outputs:
        data = entry.get("data", {})
        parts.append(data.get("text/html", "") or data.get("text/plain", "") or entry.get("text", ""))
    return "\n".join(parts)
