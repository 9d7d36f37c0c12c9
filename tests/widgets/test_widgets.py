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


# ---------------------------------------------------------------------------- Playground.run (issue 15, B4 / C15)


def test_run_uses_its_own_settings_only(lab):
    pg = Playground(lab)
    prompt = "What is 1 + 2?"
    warm = pg.run(prompt, seed=3, max_new_tokens=20, temperature=0.7, top_p=0.5)
    assert (warm.sampling["temperature"], warm.sampling["top_p"]) == (0.7, 0.5)
    after = pg.run(prompt, seed=3, max_new_tokens=20)  # nothing carried over from the call before
    expected = lab.generate(prompt, seed=3, max_new_tokens=20)
    assert after.token_ids.tolist() == expected.token_ids.tolist()
    assert after.sampling == expected.sampling and after.sampling["temperature"] == lab.card.temperature
    hot = pg.run(prompt, seed=3, max_new_tokens=20, temperature=5.0)  # beyond the slider: runs at 5.0
    assert hot.sampling["temperature"] == 5.0
    assert hot.token_ids.tolist() == lab.generate(prompt, seed=3, max_new_tokens=20, temperature=5.0).token_ids.tolist()
    assert pg.temperature.value == lab.card.temperature  # the knobs are not changed by run


@pytest.mark.parametrize("kwargs, error", [({"temperature": 0.0}, ValueError), ({"max_new_tokens": 10**7}, ValueError),
                                           ({"top_p": 1.5}, ValueError), ({"temperature": "hot"}, TypeError),
                                           ({"greedy": 1}, TypeError), ({"seed": -1}, ValueError),
                                           ({"temprature": 0.5}, TypeError)])
def test_run_refuses_what_generate_refuses(lab, kwargs, error):
    pg = Playground(lab)
    with pytest.raises(error) as from_generate:
        lab.generate("hi", **kwargs)
    with pytest.raises(error) as from_run:
        pg.run("hi", **kwargs)
    assert str(from_run.value) == str(from_generate.value)
    assert pg.history == []  # nothing ran


def test_playground_traces_carry_mtp_like_generate(lab):
    trace = Playground(lab).run("What is 1 + 2?", seed=4, max_new_tokens=16)
    expected = lab.generate("What is 1 + 2?", seed=4, max_new_tokens=16)
    assert trace.mtp is not None
    for key in expected.mtp:
        torch.testing.assert_close(trace.mtp[key], expected.mtp[key], equal_nan=True)


def test_playground_knobs_start_at_the_cards_default(nano):
    pg = Playground(nano)
    assert pg.greedy.value is True  # MiMo-nano's default decoding is greedy, as lab.generate's
    assert (pg.temperature.value, pg.top_p.value) == (0.6, 0.95)  # the recommended sampling, for resampling
    pg._set("What is 12 + 30?", None, {"seed": 0})
    pg.generate_button.click()
    pg.wait(60)
    assert pg.trace.sampling == nano.generate("What is 12 + 30?", seed=0).sampling
    assert pg.trace.sampling["source"] == "default"


def test_trace_viewer_refuses_an_unknown_colour(lab):
    trace = lab.generate("What is 1 + 2?", seed=0, max_new_tokens=5, mtp=False)
    with pytest.raises(ValueError, match="color_by='prob' is not accepted"):
        TraceViewer(trace, color_by="prob")
    with pytest.raises(ValueError, match="needs a trace with MTP"):
        TraceViewer(trace, color_by="mtp_target_prob")
    with pytest.raises(TypeError, match="trace=str"):
        TraceViewer("x")
