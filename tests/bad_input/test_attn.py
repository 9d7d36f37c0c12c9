"""Bad input to attention, receiver heads and interventions: the exception type, a message naming the
argument, and no forward pass before the refusal."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import mimo_lab
from mimo_lab.probe.attention import AttentionResult, ReceiverHeads, SentenceAttention
from mimo_lab.probe.intervene import PatchingResult, SteeringVector, SuppressionMatrix, SuppressionResult

THINKING = ("<think>\nI add 17 and 28. Ones: 7 + 8 = 15. Wait, check. Tens: 1 + 2 + 1 = 4. So 45. Check: 45 - 28 = 17. "
            "Done.\n</think>\n45")


@pytest.fixture(scope="module")
def lab(mimo_checkpoint):
    return mimo_lab.load(mimo_checkpoint)


@pytest.fixture(scope="module")
def trace(lab, make_trace):
    t = make_trace(lab.tokenizer, THINKING)
    t.prompt_ids = torch.tensor(lab.tokenizer("What is 17 + 28?", add_special_tokens=False)["input_ids"])
    return t


@pytest.fixture(scope="module")
def empty_thinking(lab, make_trace):
    t = make_trace(lab.tokenizer, "<think>\n</think>\n45")
    t.prompt_ids = torch.tensor(lab.tokenizer("What is 17 + 28?", add_special_tokens=False)["input_ids"])
    return t


@pytest.fixture(scope="module")
def att(lab, trace):
    return lab.attention(trace, 1, heads=[0, 2])


@pytest.fixture(scope="module")
def vector(lab):
    return lab.steering_vector("Wait, let me check.", "So the sum is 45.", 1)


@pytest.fixture
def no_forward(lab):
    """Fails the test if the model runs a forward pass before the refusal."""
    calls = []
    handle = lab.model.model.register_forward_pre_hook(lambda *a: calls.append(1))
    yield calls
    handle.remove()
    assert not calls, "a forward pass ran before the bad input was refused"


def _raises(error, name, call):
    with pytest.raises(error, match=re.escape(name)):
        call()


ATTENTION = [
    (ValueError, "text_or_trace", lambda lab, t: lab.attention("", 0)),
    (TypeError, "text_or_trace", lambda lab, t: lab.attention(None, 0)),
    (TypeError, "text_or_trace", lambda lab, t: lab.attention(123, 0)),
    (ValueError, "heads", lambda lab, t: lab.attention(t, 0, heads=[])),
    (ValueError, "heads", lambda lab, t: lab.attention(t, 0, heads=[9])),
    (ValueError, "heads", lambda lab, t: lab.attention(t, 0, heads=[1, 1])),
    (TypeError, "heads", lambda lab, t: lab.attention(t, 0, heads="0")),
    (TypeError, "heads", lambda lab, t: lab.attention(t, 0, heads=[1.5])),
    (ValueError, "layer", lambda lab, t: lab.attention(t, 5)),
    (TypeError, "layer", lambda lab, t: lab.attention(t, 1.0)),
    (TypeError, "layer", lambda lab, t: lab.attention(t, True)),
    (TypeError, "layer", lambda lab, t: lab.attention(t, "1")),
    (ValueError, "query_chunk", lambda lab, t: lab.attention(t, 0, query_chunk=0)),
    (TypeError, "query_chunk", lambda lab, t: lab.attention(t, 0, query_chunk=1.5)),
    (ValueError, "chunk_size", lambda lab, t: lab.attention(t, 0, chunk_size=0)),
    (ValueError, "max_pattern_tokens", lambda lab, t: lab.attention(t, 0, max_pattern_tokens=0)),
    (ValueError, "traces", lambda lab, t: lab.receiver_heads([])),
    (TypeError, "traces", lambda lab, t: lab.receiver_heads(5)),
    (TypeError, "traces[1]", lambda lab, t: lab.receiver_heads([t, 5])),
    (ValueError, "traces[0]", lambda lab, t: lab.receiver_heads([""])),
    (ValueError, "proximity", lambda lab, t: lab.receiver_heads([t], proximity=0)),
    (ValueError, "proximity", lambda lab, t: lab.receiver_heads([t], proximity=-1)),
    (ValueError, "proximity", lambda lab, t: lab.receiver_heads([t], proximity=100)),
    (TypeError, "proximity", lambda lab, t: lab.receiver_heads([t], proximity="4")),
    (ValueError, "layers", lambda lab, t: lab.receiver_heads([t], layers=[])),
    (ValueError, "layers", lambda lab, t: lab.receiver_heads([t], layers=[0, 0])),
    (ValueError, "layers", lambda lab, t: lab.receiver_heads([t], layers=[5])),
    (TypeError, "layers", lambda lab, t: lab.receiver_heads([t], layers="0")),
    (TypeError, "layers", lambda lab, t: lab.receiver_heads([t], layers={1, 0})),  # a set has no order
    (ValueError, "kind", lambda lab, t: lab.receiver_heads([t], kind="paragraph")),
    (ValueError, "queries", lambda lab, t: lab.attention_between(t, [], [0])),
    (ValueError, "keys", lambda lab, t: lab.attention_between(t, [5], [10**6])),
    (TypeError, "queries", lambda lab, t: lab.attention_between(t, "5", [0])),
    (ValueError, "layers", lambda lab, t: lab.attention_between(t, [5], [0], layers=[])),
]


@pytest.mark.parametrize(("error", "name", "call"), ATTENTION)
def test_attention_bad_input(lab, trace, no_forward, error, name, call):
    _raises(error, name, lambda: call(lab, trace))


RESULTS = [
    (ValueError, "head", lambda a: a.plot(head=3)),  # computed heads: 0 and 2
    (TypeError, "head", lambda a: a.plot(head="0")),
    (ValueError, "start", lambda a: a.plot(start=10**4)),
    (ValueError, "start", lambda a: a.plot(start=-3)),
    (ValueError, "end", lambda a: a.plot(start=5, end=2)),
    (TypeError, "end", lambda a: a.plot(end=2.5)),
    (ValueError, "queries", lambda a: a.mass([10**6], [0])),
    (ValueError, "queries", lambda a: a.mass([], [0])),
    (TypeError, "queries", lambda a: a.mass([1.5], [0])),
    (TypeError, "keys", lambda a: a.mass([3], "x")),
    (ValueError, "kind", lambda a: a.by_sentence("paragraph")),
    (ValueError, "head", lambda a: a.by_sentence().plot(head=1)),
    (ValueError, "head", lambda a: a.by_sentence().to_frame(head=9)),
    (ValueError, "proximity", lambda a: a.by_sentence().vertical_scores(0)),
    (TypeError, "proximity", lambda a: a.by_sentence().vertical_scores(1.5)),
    (ValueError, "proximity", lambda a: a.by_sentence().receiver_kurtosis(50)),
]


@pytest.mark.parametrize(("error", "name", "call"), RESULTS)
def test_attention_result_bad_input(att, error, name, call):
    _raises(error, name, lambda: call(att))


INTERVENTIONS = [
    (TypeError, "clean", lambda lab, t, v: lab.activation_patching(5, "a b", "c")),
    (ValueError, "clean", lambda lab, t, v: lab.activation_patching("", "a b", "c")),
    (TypeError, "corrupted", lambda lab, t, v: lab.activation_patching("a b", None, "c")),
    (ValueError, "target", lambda lab, t, v: lab.activation_patching(t, t, "")),
    (TypeError, "target", lambda lab, t, v: lab.activation_patching(t, t, 15)),
    (ValueError, "layers", lambda lab, t, v: lab.activation_patching(t, t, "15", layers=[])),
    (ValueError, "layers", lambda lab, t, v: lab.activation_patching(t, t, "15", layers=[1, 1])),
    (ValueError, "layers", lambda lab, t, v: lab.activation_patching(t, t, "15", layers=[-9])),
    (TypeError, "layers", lambda lab, t, v: lab.activation_patching(t, t, "15", layers=[0.5])),
    (TypeError, "layers", lambda lab, t, v: lab.activation_patching(t, t, "15", layers={3, 0})),
    (ValueError, "positions", lambda lab, t, v: lab.activation_patching(t, t, "15", positions=[])),
    (ValueError, "positions", lambda lab, t, v: lab.activation_patching(t, t, "15", positions=[10**6])),
    (ValueError, "positions", lambda lab, t, v: lab.activation_patching(t, t, "15", positions=[3, 3])),
    (TypeError, "positions", lambda lab, t, v: lab.activation_patching(t, t, "15", positions="3")),
    (ValueError, "positive", lambda lab, t, v: lab.steering_vector([], ["x"], 1)),
    (ValueError, "negative", lambda lab, t, v: lab.steering_vector(["x"], [], 1)),
    (TypeError, "positive", lambda lab, t, v: lab.steering_vector(5, ["x"], 1)),
    (ValueError, "positive[0]", lambda lab, t, v: lab.steering_vector([""], ["x"], 1)),
    (TypeError, "negative[1]", lambda lab, t, v: lab.steering_vector(["x"], ["y", None], 1)),
    (ValueError, "layer", lambda lab, t, v: lab.steering_vector(["x"], ["y"], 9)),
    (TypeError, "layer", lambda lab, t, v: lab.steering_vector(["x"], ["y"], "1")),
    (ValueError, "scale", lambda lab, t, v: v.apply(lab, float("inf"))),
    (ValueError, "scale", lambda lab, t, v: lab.steer(v, float("nan"))),
    (TypeError, "scale", lambda lab, t, v: lab.steer(v, "2")),
    (TypeError, "vector", lambda lab, t, v: lab.steer("v", 1.0)),
    (ValueError, "vector", lambda lab, t, v: lab.steer(SteeringVector(torch.ones(3), 1, 1.0), 1.0)),
    (TypeError, "trace", lambda lab, t, v: lab.suppress_sentence("a text", 0)),
    (ValueError, "sentence", lambda lab, t, v: lab.suppress_sentence(t, 99)),
    (ValueError, "sentence", lambda lab, t, v: lab.suppress_sentence(t, -1)),
    (TypeError, "sentence", lambda lab, t, v: lab.suppress_sentence(t, 1.5)),
    (TypeError, "sentence", lambda lab, t, v: lab.suppress_sentence(t, True)),
    (ValueError, "kind", lambda lab, t, v: lab.suppress_sentence(t, 0, kind="paragraph")),
    (ValueError, "kl", lambda lab, t, v: lab.suppress_sentence(t, 0, kl="paper")),
    (ValueError, "temperature", lambda lab, t, v: lab.suppress_sentence(t, 0, temperature=0)),
    (ValueError, "temperature", lambda lab, t, v: lab.suppress_sentence(t, 0, temperature=float("inf"))),
    (ValueError, "top_p", lambda lab, t, v: lab.suppress_sentence(t, 0, top_p=1.5)),
    (ValueError, "top_p", lambda lab, t, v: lab.suppress_sentence(t, 0, top_p=0)),
    (ValueError, "max_tokens", lambda lab, t, v: lab.suppress_sentence(t, 0, max_tokens=0)),
    (TypeError, "max_tokens", lambda lab, t, v: lab.suppression_matrix(t, max_tokens=2.5)),
    (TypeError, "trace", lambda lab, t, v: lab.suppression_matrix(None)),
]


@pytest.mark.parametrize(("error", "name", "call"), INTERVENTIONS)
def test_intervention_bad_input(lab, trace, vector, no_forward, error, name, call):
    _raises(error, name, lambda: call(lab, trace, vector))


def test_a_trace_without_sentences_is_refused(lab, empty_thinking, no_forward):
    for call in (lambda: lab.suppress_sentence(empty_thinking, 0), lambda: lab.suppression_matrix(empty_thinking),
                 lambda: lab.receiver_heads([empty_thinking], proximity=1)):
        with pytest.raises(ValueError, match="trace"):
            call()


def test_accepted_types(lab, trace, no_forward):
    """numpy integers are integers; the first bad value is reported even inside a list."""
    with pytest.raises(ValueError, match="heads"):
        lab.attention(trace, np.int64(1), heads=[np.int64(0), np.int64(7)])


CLASSES = [AttentionResult, SentenceAttention, ReceiverHeads, PatchingResult, SteeringVector, SuppressionResult,
           SuppressionMatrix]


@pytest.mark.parametrize("cls", CLASSES)
def test_load_names_the_file(cls, tmp_path, vector):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        cls.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt.safetensors"):
        cls.load(bad)
    other = vector.save(tmp_path / "vector.safetensors") if cls is not SteeringVector else (
        PatchingResult([0], [0], ["a"], torch.zeros(1, 1), 0.0, 1.0, "x").save(tmp_path / "patch.safetensors"))
    with pytest.raises(ValueError, match="mimo_lab"):
        cls.load(other)
    with pytest.raises(TypeError, match="path"):
        cls.load(5)


def test_load_names_a_missing_field(tmp_path):
    from mimo_lab.probe.attention import save_result

    path = save_result(tmp_path / "v.safetensors", "SteeringVector", {"vector": torch.ones(4)}, {"norm": 1.0})
    with pytest.raises(ValueError, match=r"v\.safetensors.*'layer' missing"):
        SteeringVector.load(path)
    path = save_result(tmp_path / "p.safetensors", "PatchingResult", {"other": torch.ones(1)}, {})
    with pytest.raises(ValueError, match=r"p\.safetensors.*'patched_logprob'"):
        PatchingResult.load(path)


@pytest.mark.parametrize("call", [
    lambda lab, t: lab.attention(t, 0),
    lambda lab, t: lab.attention_between(t, [t.prompt_length], [0]),
    lambda lab, t: lab.receiver_heads([t], proximity=1),
    lambda lab, t: lab.activation_patching(t, t, "15"),
], ids=["attention", "attention_between", "receiver_heads", "activation_patching"])
def test_a_lab_without_weights_says_so(mimo_checkpoint, trace, call):
    """load(weights=False) (the vLLM backend's Lab): a clear error, not torch's 'Cannot copy out of meta tensor'."""
    empty = mimo_lab.load(mimo_checkpoint, weights=False)
    with pytest.raises(ValueError, match="weights"):
        call(empty, trace)
