"""Widgets without a browser: set values, click, read what the widgets show."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from suite_files import write_all

import mimo_lab
from mimo_lab.bench import run as bench_run
from mimo_lab.widgets import FailureExplorer, Playground, TraceViewer
from mimo_lab.widgets.display import output_html


@pytest.fixture(scope="module")
def lab(mimo_checkpoint):
    return mimo_lab.load(mimo_checkpoint)


def test_run_returns_the_trace_and_fills_the_panes(lab):
    pg = Playground(lab)
    trace = pg.run("What is 1 + 2?", seed=3, max_new_tokens=20, temperature=0.7)
    expected = lab.generate("What is 1 + 2?", seed=3, max_new_tokens=20, temperature=0.7, mtp=False)
    assert torch.equal(trace.token_ids, expected.token_ids)
    assert pg.trace is trace and pg.history == [trace]
    assert pg.answer.value + pg.thinking.value != ""
    assert "done" in pg.status.value
    assert isinstance(pg.viewer, TraceViewer) and pg.viewer.trace is trace


def test_generate_button_streams_in_the_background(lab):
    pg = Playground(lab)
    pg._set("What is 1 + 2?", None, {"seed": 3, "max_new_tokens": 20, "temperature": 0.7})
    pg.generate_button.click()
    pg.wait(60)
    assert len(pg.history) == 1 and "done" in pg.status.value
    reference = lab.generate("What is 1 + 2?", seed=3, max_new_tokens=20, temperature=0.7, mtp=False)
    assert torch.equal(pg.trace.token_ids, reference.token_ids)


def test_second_generate_is_refused_and_stop_leaves_the_model_usable(lab, monkeypatch):
    pg = Playground(lab)
    pg._set("What is 1 + 2?", None, {"seed": 1, "max_new_tokens": 4000})
    gate = threading.Event()
    real = lab.stream

    def slow_stream(*args, **kwargs):
        for token in real(*args, **kwargs):
            gate.set()
            time.sleep(0.01)
            yield token

    monkeypatch.setattr(lab, "stream", slow_stream)
    assert pg.start()
    assert gate.wait(30)
    assert not pg.start()  # refused while running
    assert "already generating" in pg.status.value
    pg.stop_button.click()
    pg.wait(60)
    assert pg.trace.finish_reason == "stopped" and len(pg.trace) < 4000
    monkeypatch.setattr(lab, "stream", real)
    again = pg.run(max_new_tokens=10, seed=1)  # usable at once
    assert len(again) == 10


def test_errors_show_in_the_widget_which_keeps_working(lab, monkeypatch):
    pg = Playground(lab)

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")
        yield  # pragma: no cover

    monkeypatch.setattr(lab, "stream", broken)
    pg.generate_button.click()
    pg.wait(30)
    assert "error" in pg.status.value and "CUDA out of memory (simulated)" in pg.status.value
    monkeypatch.undo()
    assert len(pg.run("hi", max_new_tokens=5, seed=0)) == 5


def test_click_a_token_then_resample_from_there(lab):
    pg = Playground(lab)
    first = pg.run("What is 1 + 2?", seed=2, max_new_tokens=16)
    viewer = pg.viewer
    position = first.prompt_length + 5  # positions count the prompt's tokens
    viewer.select(position)
    assert f"position {position}" in viewer.details.value and "alternative" in viewer.details.value
    assert "logit lens" in viewer.details.value and "L0" in viewer.details.value
    pg.resample_button.click()
    pg.wait(60)
    second = pg.trace
    assert second is not first and torch.equal(second.token_ids[:5], first.token_ids[:5])
    assert second.meta["resampled_from"]["position"] == position
    pg.compare_button.click()
    assert "Fork at position" in pg.comparison.value or "identical" in pg.comparison.value


def test_resample_needs_a_selected_token(lab):
    pg = Playground(lab)
    pg.resample_button.click()
    pg.wait(30)
    assert "select a token" in pg.status.value


def test_trace_viewer_colours_and_clicks(lab):
    trace = lab.generate("What is 1 + 2?", seed=0, max_new_tokens=30)
    viewer = TraceViewer(trace)
    assert set(viewer.color.options) == {"entropy", "logprob", "mtp_target_prob"}
    z = [v for row in viewer.grid.data[0].z for v in row if v is not None]
    assert z == pytest.approx(trace.entropies.tolist())
    viewer.color.value = "logprob"
    z = [v for row in viewer.grid.data[0].z for v in row if v is not None]
    assert z == pytest.approx(trace.logprobs.tolist())
    points = type("Points", (), {"point_inds": [[0, 3]]})()
    viewer._on_click(None, points, None)  # what a click on the 4th cell sends
    assert viewer.selected == trace.prompt_length + 3  # a position
    assert "timeline" not in output_html(viewer.timeline)
    with pytest.raises(ValueError, match="position=99 is not a generated token"):
        viewer.select(99)


def test_failure_explorer_opens_traces(lab, tmp_path):
    files = write_all(tmp_path / "suites")
    result = bench_run(lab, str(files["aime24"]), samples=1, out=tmp_path / "r", max_new_tokens=10, progress=False)
    explorer = FailureExplorer(result, lab)
    assert explorer.samples.options  # the random model fails everything
    problem_id, index = explorer.samples.options[0][1]
    explorer.samples.value = (problem_id, index)
    assert isinstance(explorer.viewer_box.children[0], TraceViewer)
    assert explorer.viewer_box.children[0].trace.text == result.trace(problem_id, index).text
    assert len(explorer.figures.outputs) == 2
