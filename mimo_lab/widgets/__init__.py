"""Widgets: thin ipywidgets views over Lab, Trace and benchmark runs."""

from mimo_lab.widgets.failure_explorer import FailureExplorer
from mimo_lab.widgets.playground import Playground
from mimo_lab.widgets.trace_viewer import TraceViewer

__all__ = ["Playground", "TraceViewer", "FailureExplorer"]
