"""Saving and loading results: a path that is not a path, or an empty one, is refused naming `path`
(an empty path used to write trace.json into the working folder, or fail inside safetensors)."""

from __future__ import annotations

import os

import pytest

import mimo_lab
from mimo_lab.probe import Activations
from mimo_lab.probe.attention import AttentionResult
from mimo_lab.probe.lens import LensResult, MTPLens
from mimo_lab.trace import Trace


@pytest.fixture(scope="module")
def results(mimo_checkpoint):
    lab = mimo_lab.load(mimo_checkpoint)
    trace = lab.generate("What is 1 + 2?", seed=0, max_new_tokens=12)
    return {Trace: trace, Activations: lab.capture(trace, layers=[0]), LensResult: lab.logit_lens(trace, layers=[0]),
            MTPLens: lab.mtp_lens(trace), AttentionResult: lab.attention(trace, 0, heads=[0])}


KINDS = [Trace, Activations, LensResult, MTPLens, AttentionResult]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("path, error", [("", ValueError), ("  ", ValueError), (123, TypeError), (None, TypeError)])
def test_save_and_load_refuse_a_bad_path(results, kind, path, error, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match="path"):
        results[kind].save(path)
    with pytest.raises(error, match="path"):
        kind.load(path)
    assert os.listdir(tmp_path) == []  # nothing written into the working folder
