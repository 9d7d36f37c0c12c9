"""The failure explorer: a run as a DataFrame, figures of where and how it fails, and the way from
any sample to its trace view."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from mimo_lab.bench.failures import CATEGORIES
from mimo_lab.viz.style import base_layout

CATEGORY_COLOURS = {"correct": "#54a24b", "wrong_answer": "#e45756", "no_answer": "#bab0ac",
                    "truncated_in_thinking": "#f58518", "truncated_after_thinking": "#ffbf79",
                    "format_error": "#b279a2", "repetition_loop": "#4c78a8", "grader_error": "#222222"}


class Explorer:
    """`frame`: one row per sample (category, answers, tokens, metadata columns `meta.*`)."""

    def __init__(self, run):
        from mimo_lab.bench.run import Run

        if not isinstance(run, Run):
            raise TypeError(f"run={run!r} ({type(run).__name__}) is not accepted: a bench Run (bench.run(...) or "
                            "bench.Run(folder)) is")
        self.run = run
        self.frame = run.frame
        if self.frame.empty:
            raise ValueError(f"run {str(run.folder)!r} has no graded samples yet ({run.folder / 'samples.jsonl'} is "
                             "missing or empty): nothing to explore until bench.run has written some")

    def __repr__(self) -> str:
        return f"Explorer({len(self.frame)} samples; {self.frame['category'].value_counts().to_dict()})"

    def _group_column(self, by: str | None) -> str:
        if by is None:
            for candidate in ("meta.level", "meta.subject", "meta.family"):
                if candidate in self.frame:
                    return candidate
            return "problem_id"
        column = by if by in self.frame else f"meta.{by}"
        if column not in self.frame:
            options = [c.removeprefix("meta.") for c in self.frame.columns if c.startswith("meta.")]
            raise ValueError(f"no column {by!r} to group by: use one of {options + ['problem_id', 'category']}")
        return column

    def accuracy(self, by: str | None = None) -> pd.DataFrame:
        column = self._group_column(by)
        return (self.frame.groupby(column).agg(samples=("correct", "size"), accuracy=("correct", "mean"),
                                               mean_tokens=("num_tokens", "mean")).reset_index())

    def failures(self, category: str | None = None) -> pd.DataFrame:
        """The samples that failed (or of one category), with their evidence."""
        if category is not None and category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}: use one of {', '.join(CATEGORIES)}")
        chosen = self.frame[self.frame["category"] != "correct"] if category is None else \
            self.frame[self.frame["category"] == category]
        return chosen[["problem_id", "sample_index", "category", "extracted_answer", "reference_answer",
                       "num_tokens", "finish_reason", "evidence"]]

    def accuracy_figure(self, by: str | None = None) -> go.Figure:
        table = self.accuracy(by)
        column = table.columns[0]
        fig = go.Figure(go.Bar(x=table[column].astype(str), y=table["accuracy"], text=table["samples"],
                               marker_color="#4c78a8",
                               hovertemplate="%{x}<br>accuracy %{y:.1%}<br>%{text} samples<extra></extra>"))
        fig.update_yaxes(range=[0, 1], tickformat=".0%", title_text="accuracy")
        fig.update_xaxes(title_text=column.removeprefix("meta."))
        return base_layout(fig, f"accuracy by {column.removeprefix('meta.')}", height=360)

    def failure_figure(self, by: str | None = None) -> go.Figure:
        """Share of each failure class, by a grouping column."""
        column = self._group_column(by)
        counts = self.frame.groupby([column, "category"]).size().reset_index(name="samples")
        fig = px.bar(counts, x=counts[column].astype(str), y="samples", color="category",
                     color_discrete_map=CATEGORY_COLOURS, category_orders={"category": list(CATEGORIES)})
        fig.update_xaxes(title_text=column.removeprefix("meta."))
        return base_layout(fig, f"outcome classes by {column.removeprefix('meta.')}", height=380)

    def length_figure(self) -> go.Figure:
        """Token lengths of correct and wrong samples."""
        fig = go.Figure()
        for correct, name, colour in ((True, "correct", "#54a24b"), (False, "not correct", "#e45756")):
            part = self.frame[self.frame["correct"] == correct]
            if len(part):
                fig.add_trace(go.Histogram(x=part["num_tokens"], name=name, marker_color=colour, opacity=0.6))
        fig.update_layout(barmode="overlay")
        fig.update_xaxes(title_text="generated tokens")
        return base_layout(fig, "length of correct and wrong samples", height=320)

    def trace(self, problem_id: str, sample_index: int = 0):
        """The sample's Trace (FileNotFoundError if the run saved none for it)."""
        return self.run.trace(problem_id, sample_index)

    def trace_view(self, problem_id: str, sample_index: int = 0, color_by: str = "entropy"):
        """The sample's trace, tokens coloured (shows itself in a notebook)."""
        return self.trace(problem_id, sample_index).token_view(color_by)
