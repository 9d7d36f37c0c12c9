"""Thought Anchors' format: the 20 shipped problem folders read into Traces and written back unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mimo_lab import thought_anchors as ta
from mimo_lab.segment import RuleLabeller

ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "thought_anchors"
FOLDERS = sorted(p for p in ROOT.iterdir() if p.is_dir()) if ROOT.is_dir() else []
needs_data = pytest.mark.skipif(not FOLDERS, reason=f"the shipped Thought Anchors data is not at {ROOT}")


@needs_data
def test_every_shipped_folder_reads_with_its_chunks_on_the_text():
    traces = ta.read_all(ROOT)
    assert len(traces) == 20
    total = 0
    for folder, trace in zip(FOLDERS, traces, strict=True):
        records = json.loads((folder / "chunks_labeled.json").read_text())
        base = json.loads((folder / "base_solution.json").read_text())
        assert trace.text == base["solution"] and trace.prompt == base["prompt"] and len(trace) == 0
        frame = ta.chunks(trace)
        assert len(frame) == len(records)
        assert list(frame["tag"]) == [r["function_tags"][0] for r in records]
        assert list(frame["counterfactual_importance_kl"]) == [r["counterfactual_importance_kl"] for r in records]
        # each chunk's span holds the chunk (whitespace runs collapsed, as their joining does)
        for row in frame.itertuples():
            assert " ".join(trace.text[row.start:row.end].split()) == " ".join(row.chunk.split())
        # and trace.segments cuts the same chunks, labelled with their tags by ta.tags
        segments = trace.segments("thought_anchors", labeller=ta.tags(trace))
        assert [(s.start, s.end) for s in segments] == list(zip(frame["start"], frame["end"], strict=True))
        assert segments.labels == list(frame["tag"])
        total += len(records)
    assert total == 2338


@needs_data
def test_round_trip_writes_the_same_three_files(tmp_path):
    for folder in FOLDERS:
        out = ta.write(ta.read(folder), tmp_path / folder.name)
        for name in ta.FILES:
            assert json.loads((out / name).read_text()) == json.loads((folder / name).read_text()), (folder, name)


@needs_data
def test_a_shipped_trace_scored_by_nano(nano):
    folder = min(FOLDERS, key=lambda f: len(json.loads((f / "base_solution.json").read_text())["solution"]))
    trace = ta.read(folder, nano)
    base = json.loads((folder / "base_solution.json").read_text())
    assert trace.text == base["solution"] and len(trace) > 1000  # an R1 trace is thousands of nano tokens
    assert trace.prompt_text.endswith("<|im_start|>assistant\n<think>\n")  # nano's template, thinking opened
    assert trace.meta["scored"]["scorer"] == "MiMo-nano" and trace.tokenizer_fingerprint
    assert torch.isfinite(trace.logprobs).all() and (trace.logprobs <= 0).all()
    # nano knows nothing of competition mathematics: its log-probs on this text are far below its own traces'
    assert trace.logprobs.mean() < -3
    segments = trace.segments("thought_anchors")
    assert len(segments) == len(ta.chunks(trace)) and all(a < b for a, b in segments.positions)


def test_our_own_analyses_written_in_their_schema_and_read_back(nano, tmp_path):
    trace = nano.generate("What is 47 + 38?", greedy=True)
    spans = ta.thought_anchors_spans(trace.text)
    effect = [0.1 * i for i in range(len(spans))]
    folder = ta.write(trace, tmp_path / "nano", labeller=RuleLabeller(), values={"suppression_kl": effect})
    records = json.loads((folder / "chunks_labeled.json").read_text())
    assert [r["chunk"] for r in records] == [c for _, _, c in spans]
    assert [r["chunk_idx"] for r in records] == list(range(len(spans)))
    assert [r["function_tags"] for r in records] == [[RuleLabeller()(c, i, len(spans))] for i, (_, _, c) in
                                                     enumerate(spans)]
    assert [r["suppression_kl"] for r in records] == effect
    again = ta.read(folder)
    assert again.text == trace.text and list(ta.chunks(again)["tag"]) == [r["function_tags"][0] for r in records]
    base = json.loads((folder / "base_solution.json").read_text())
    assert base["answer"] == trace.final_answer and base["prompt"] == trace.prompt


@needs_data
def test_bad_folders_and_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        ta.read(tmp_path / "nowhere")
    with pytest.raises(TypeError, match="lab=.*a Lab"):
        ta.read(FOLDERS[0], "MiMo-nano")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "problem.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="base_solution.json, chunks_labeled.json missing"):
        ta.read(partial)
    wrong = tmp_path / "wrong"
    shutil.copytree(FOLDERS[0], wrong)
    shutil.copy(FOLDERS[1] / "chunks_labeled.json", wrong / "chunks_labeled.json")
    with pytest.raises(ValueError, match="do not belong to this solution"):
        ta.read(wrong)
    trace = ta.read(FOLDERS[0])
    with pytest.raises(ValueError, match=r"values\['x'\] has 2 entries"):
        ta.write(trace, tmp_path / "out", values={"x": [1, 2]})
    assert not (tmp_path / "out").exists()  # nothing written before the check
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ta.write(trace, wrong)
    with pytest.raises(ValueError, match="no Thought Anchors chunks"):
        ta.chunks(ta._text_only("p", "text"))
