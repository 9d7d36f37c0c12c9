"""FailureExplorer: a benchmark run's failures by class and difficulty, and any sample's trace in a click."""

from __future__ import annotations

import html

import ipywidgets as W

from mimo_lab.bench.failures import CATEGORIES
from mimo_lab.widgets.display import show
from mimo_lab.widgets.trace_viewer import TraceViewer


class FailureExplorer(W.VBox):
    """`FailureExplorer(run, lab=None)`: pick a class, pick a sample, read its trace. `.show_sample(problem_id, k)`."""

    def __init__(self, run, lab=None):
        from mimo_lab.bench.explore import Explorer

        self.explorer = Explorer(run)  # refuses a non-Run and a run with no samples, naming it
        self.run, self.lab = run, lab
        frame = self.explorer.frame
        present = [c for c in CATEGORIES if c in set(frame["category"])]
        self.category = W.Dropdown(options=["all failures", *present], description="class")
        self.samples = W.Select(options=[], rows=8, description="sample", layout=W.Layout(width="100%"))
        self.figures = W.Output()
        self.viewer_box = W.VBox()
        self.summary = W.HTML(self._summary())
        self.category.observe(lambda _: self._fill(), names="value")
        self.samples.observe(lambda change: change["new"] and self.show_sample(*change["new"]), names="value")
        super().__init__([self.summary, self.figures, W.HBox([self.category]), self.samples, self.viewer_box])
        show(self.figures, self.explorer.accuracy_figure(), self.explorer.failure_figure())
        self._fill()

    def _summary(self) -> str:
        s = self.run.summary
        keys = [k for k in s if k.startswith(("pass@", "maj@")) and not k.endswith("ci95")]
        return "<b>" + html.escape(f"{self.run.settings['model']} on {self.run.settings['suite']}") + "</b>: " + \
            ", ".join(f"{k} {s[k]:.3f}" for k in keys)

    def _fill(self) -> None:
        choice = self.category.value
        rows = self.explorer.failures(None if choice == "all failures" else choice)
        self.samples.options = [(f"{r.problem_id} #{r.sample_index} · {r.category} · got {r.extracted_answer!s} · "
                                 f"expected {r.reference_answer}", (r.problem_id, int(r.sample_index)))
                                for r in rows.itertuples()]

    def show_sample(self, problem_id: str, sample_index: int = 0) -> TraceViewer:
        """Show one sample's trace (what selecting it in the list does)."""
        viewer = TraceViewer(self.run.trace(problem_id, sample_index), self.lab)
        self.viewer_box.children = [viewer]
        return viewer
