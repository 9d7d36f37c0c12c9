"""Bad input to capture, the logit lens and the MTP lens: each is refused with the right exception
type and a message naming the argument, before any forward pass; results refuse bad plot windows
and bad files the same way."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import mimo_lab
from mimo_lab.probe import Activations
from mimo_lab.probe.lens import LensResult, MTPLens

TEXT = "What is 128 + 367? I add the numbers column by column. The answer is 495."


@pytest.fixture(scope="module")
def lab(mimo_checkpoint):
    return mimo_lab.load(mimo_checkpoint)


@pytest.fixture(scope="module")
def trace(lab):
    return lab.generate("What is 1 + 2?", seed=0, max_new_tokens=12)


@pytest.fixture
def no_forward(lab, monkeypatch):
    """Fail the test if a refused call reaches the model."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a forward pass ran before the bad input was refused")

    monkeypatch.setattr(lab.model, "forward", forbidden)
    monkeypatch.setattr(lab.model.model, "forward", forbidden)


def test_the_guard_catches_a_forward_pass(lab, no_forward):
    for probe in ("capture", "logit_lens", "mtp_lens"):
        with pytest.raises(AssertionError, match="forward pass ran"):
            getattr(lab, probe)(TEXT)


CAPTURE_CASES = [
    ({"layers": True}, TypeError, "layers"),
    ({"layers": "1"}, TypeError, "layers"),
    ({"layers": [1.0]}, TypeError, "layers"),
    ({"layers": [0, None]}, TypeError, "layers"),
    ({"layers": {0, 1}}, TypeError, "layers"),
    ({"layers": []}, ValueError, "layers"),
    ({"layers": [1, 1]}, ValueError, "layers"),
    ({"layers": [0, -3]}, ValueError, "layers"),  # the same layer twice, once counted from the end
    ({"layers": [7]}, ValueError, "layer 7 out of range: the model has 3 layers"),
    ({"layers": np.int64(5)}, ValueError, "layers"),
    ({"chunk_size": 1.5}, TypeError, "chunk_size"),
    ({"chunk_size": 0}, ValueError, "chunk_size"),
    ({"chunk_size": True}, TypeError, "chunk_size"),
    ({"sites": "resdi"}, ValueError, "sites.*did you mean 'resid'"),
    ({"sites": ("residual",)}, ValueError, "sites"),
    ({"sites": []}, ValueError, "sites"),
    ({"sites": [1]}, TypeError, "sites"),
    ({"sites": ["resid", "resid"]}, ValueError, "sites"),
    ({"sites": None}, TypeError, "sites"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), CAPTURE_CASES)
def test_capture_refuses(lab, no_forward, kwargs, error, match):
    with pytest.raises(error, match=match):
        lab.capture(TEXT, **kwargs)


@pytest.mark.parametrize(("kwargs", "error", "match"), [c for c in CAPTURE_CASES if "sites" not in c[0]])
def test_logit_lens_refuses_the_same_layers_and_chunks(lab, no_forward, kwargs, error, match):
    with pytest.raises(error, match=match):
        lab.logit_lens(TEXT, **kwargs)


INPUT_CASES = [
    ("", ValueError, "text_or_trace.*empty"),
    (123, TypeError, "text_or_trace"),
    (None, TypeError, "text_or_trace"),
    ([], ValueError, "text_or_trace"),
    ([TEXT, 5], TypeError, "text_or_trace"),
    ([TEXT, ""], ValueError, "text_or_trace"),
]


@pytest.mark.parametrize("probe", ["capture", "logit_lens", "mtp_lens"])
@pytest.mark.parametrize(("value", "error", "match"), INPUT_CASES)
def test_probes_refuse_bad_inputs(lab, no_forward, probe, value, error, match):
    with pytest.raises(error, match=match):
        getattr(lab, probe)(value)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"k": 10**4}, ValueError, "k=10000 is out of range.*at most|k=10000 is out of range: an integer from 1 to"),
    ({"k": 0}, ValueError, "k=0"),
    ({"k": 2.5}, TypeError, "k=2.5"),
    ({"k": None}, TypeError, "k=None"),
])
def test_logit_lens_refuses_bad_k(lab, no_forward, kwargs, error, match):
    with pytest.raises(error, match=match):
        lab.logit_lens(TEXT, **kwargs)


def test_logit_lens_accepts_k_equal_to_the_vocabulary(lab):
    lens = lab.logit_lens("What is", layers=[0], k=lab.model.config.vocab_size)
    torch.testing.assert_close(lens.top_probs.sum(-1), torch.ones(1, lens.top_ids.shape[1]), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"zero_first_embedding": "yes"}, TypeError, "zero_first_embedding"),
    ({"zero_first_embedding": 1}, TypeError, "zero_first_embedding"),
    ({"chunk_size": 0}, ValueError, "chunk_size"),
    ({"chunk_size": 2.0}, TypeError, "chunk_size"),
])
def test_mtp_lens_refuses(lab, no_forward, kwargs, error, match):
    with pytest.raises(error, match=match):
        lab.mtp_lens(TEXT, **kwargs)


def test_mtp_lens_needs_an_mtp_head(lab, monkeypatch):
    monkeypatch.setattr(type(lab), "has_mtp", property(lambda self: False))
    with pytest.raises(ValueError, match="no MTP head"):
        lab.mtp_lens(TEXT)


_FOREIGN_CALLS = {
    "capture": lambda lab, t: lab.capture(t),
    "logit_lens": lambda lab, t: lab.logit_lens(t),
    "mtp_lens": lambda lab, t: lab.mtp_lens(t),
    "attention": lambda lab, t: lab.attention(t, layer=0),
    "suppress_sentence": lambda lab, t: lab.suppress_sentence(t, 0),
    "activation_patching": lambda lab, t: lab.activation_patching(t, t, " 3"),
    "resample": lambda lab, t: lab.resample(t, t.prompt_length + 1),
}


@pytest.mark.parametrize("probe", sorted(_FOREIGN_CALLS))
def test_a_trace_with_another_tokenizer_is_refused(lab, nano, probe):
    foreign = nano.generate("What is 1 + 2?", max_new_tokens=5)
    with pytest.raises(ValueError, match="tokenizer") as info:
        _FOREIGN_CALLS[probe](lab, foreign)
    assert nano.name in str(info.value) and lab.name in str(info.value)


def test_divergence_of_traces_with_different_tokenizers_is_refused(lab, nano):
    mine = lab.generate("What is 1 + 2?", max_new_tokens=5)
    foreign = nano.generate("What is 1 + 2?", max_new_tokens=5)
    with pytest.raises(ValueError, match="different tokenizers") as info:
        mine.divergence(foreign)
    assert nano.name in str(info.value) and lab.name in str(info.value)


@pytest.mark.parametrize("probe", ["capture", "logit_lens", "mtp_lens"])
def test_a_lab_without_weights_says_so(mimo_checkpoint, probe):
    empty = mimo_lab.load(mimo_checkpoint, weights=False)
    with pytest.raises(ValueError, match="weights"):
        getattr(empty, probe)(TEXT)


def test_activations_lookups(lab):
    acts = lab.capture(TEXT, sites="resid", layers=[0, 2])
    with pytest.raises(ValueError, match="site 'x' was not captured"):
        acts["x"]
    with pytest.raises(ValueError, match="site 'mlp_out' was not captured"):
        acts["mlp_out"]
    with pytest.raises(ValueError, match="layer=1 was not captured"):
        acts.get("resid", 1)
    with pytest.raises(TypeError, match="layer"):
        acts.get("resid", "0")


@pytest.fixture(scope="module")
def results(lab, trace):
    return {"lens": lab.logit_lens(TEXT, k=2), "acts": lab.capture(TEXT, sites="resid"),
            "mtp": lab.mtp_lens(trace), "n": len(lab.tokenizer(TEXT, add_special_tokens=False)["input_ids"])}


@pytest.mark.parametrize(("window", "error", "match"), [
    ({"start": 500}, ValueError, "start=500 is out of range"),
    ({"start": -3, "end": 2}, ValueError, "start=-3 is out of range"),
    ({"start": 4, "end": 4}, ValueError, "end=4"),
    ({"start": 4, "end": 2}, ValueError, "end=2"),
    ({"start": 0, "end": 10**6}, ValueError, "end=1000000 is out of range"),
    ({"start": 1.5}, TypeError, "start"),
    ({"end": "9"}, TypeError, "end"),
])
@pytest.mark.parametrize("which", ["lens", "acts"])
def test_plot_windows(results, which, window, error, match):
    with pytest.raises(error, match=match):
        results[which].plot(**window) if which == "lens" else results[which].plot("resid", **window)


def test_mtp_plot_window_is_in_positions(results, trace):
    mtp = results["mtp"]
    with pytest.raises(ValueError, match=f"start=0 is out of range: this result covers positions "
                                         f"{trace.prompt_length} to"):
        mtp.plot(start=0)
    with pytest.raises(ValueError, match="end"):
        mtp.plot(trace.prompt_length, trace.prompt_length + len(trace) + 1)


@pytest.mark.parametrize("cls", [Activations, LensResult, MTPLens])
def test_load_names_the_file_and_the_field(cls, results, tmp_path):
    name = cls.__name__
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        cls.load(tmp_path / "nothing.safetensors")
    with pytest.raises(ValueError, match="is a folder"):
        cls.load(tmp_path)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="garbage.safetensors.*not a readable safetensors"):
        cls.load(garbage)
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(1)}, str(bare))
    with pytest.raises(ValueError, match=f"{name}.load: '.*bare.safetensors' has no field"):
        cls.load(bare)
    source = {"Activations": results["acts"], "LensResult": results["lens"], "MTPLens": results["mtp"]}[name]
    good = source.save(tmp_path / "good.safetensors")
    from safetensors import safe_open

    with safe_open(str(good), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    field = "token_texts"
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata={**meta, field: "[not json"})
    with pytest.raises(ValueError, match=f"field '{field}' of '.*broken.safetensors' is corrupt"):
        cls.load(broken)
    first_tensor = next(iter(tensors))
    missing = tmp_path / "missing.safetensors"
    save_file({k: v for k, v in tensors.items() if k != first_tensor}, str(missing), metadata=meta)
    with pytest.raises(ValueError, match=f"missing.safetensors' has no tensor '{first_tensor}'"):
        cls.load(missing)
    short = tmp_path / "short.safetensors"
    save_file(tensors, str(short), metadata={**meta, field: json.dumps(json.loads(meta[field])[:-1])})
    with pytest.raises(ValueError, match="short.safetensors.*corrupt"):
        cls.load(short)
    other = next(c for c in (Activations, LensResult, MTPLens) if c is not cls)
    with pytest.raises(ValueError, match=f"holds a saved {name}, not a {other.__name__}"):
        other.load(good)
