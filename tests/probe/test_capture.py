"""Capture: the saved values are the model's (checked against torch hooks), chunked = one pass."""

from __future__ import annotations

import pytest
import torch

import mimo_lab
from mimo_lab.probe import Activations

TEXT = "What is 128 + 367? <think> I add the numbers column by column. </think> The answer is \\boxed{495}."


@pytest.fixture(scope="module")
def lab(mimo_checkpoint):
    return mimo_lab.load(mimo_checkpoint)


def _hooked(lab, ids):
    """Reference values from plain torch forward hooks."""
    out, handles = {}, []
    for i, layer in enumerate(lab.model.model.layers):
        handles.append(layer.register_forward_hook(lambda m, a, o, i=i: out.__setitem__(("resid", i), o[0])))
        handles.append(layer.self_attn.register_forward_hook(
            lambda m, a, o, i=i: out.__setitem__(("attn_out", i), o[0][0])))
        handles.append(layer.mlp.register_forward_hook(lambda m, a, o, i=i: out.__setitem__(("mlp_out", i), o[0])))
    with torch.no_grad():
        lab.model(ids)
    for h in handles:
        h.remove()
    return out


def test_capture_matches_hooks_and_has_documented_shapes(lab):
    acts = lab.capture(TEXT)
    ids = lab.tokenizer(TEXT, add_special_tokens=False, return_tensors="pt")["input_ids"]
    n, hidden, layers = ids.shape[1], lab.model.config.hidden_size, lab.num_layers
    reference = _hooked(lab, ids)
    for site in ("resid", "attn_out", "mlp_out"):
        assert acts[site].shape == (layers, n, hidden)
        for layer in range(layers):
            torch.testing.assert_close(acts.get(site, layer), reference[(site, layer)], atol=1e-5, rtol=1e-5)
    # the residual stream adds up: resid_L = resid_{L-1} + attn_out_L + mlp_out_L
    torch.testing.assert_close(acts.get("resid", 2), acts.get("resid", 1) + acts.get("attn_out", 2)
                               + acts.get("mlp_out", 2), atol=1e-5, rtol=1e-5)
    assert "".join(acts.token_texts) == TEXT


def test_chunked_capture_equals_one_pass(lab):
    whole = lab.capture(TEXT, sites="resid", layers=[0, -1])
    chunked = lab.capture(TEXT, sites="resid", layers=[0, -1], chunk_size=7)
    assert chunked.layers == [0, lab.num_layers - 1]
    torch.testing.assert_close(chunked["resid"], whole["resid"], atol=1e-5, rtol=1e-5)


def test_save_load(lab, tmp_path):
    acts = lab.capture(TEXT, sites=("resid", "mlp_out"), layers=[1])
    acts.save(tmp_path / "acts.safetensors")
    again = Activations.load(tmp_path / "acts.safetensors")
    assert again.layers == [1] and again.token_texts == acts.token_texts and again.sites == ("resid", "mlp_out")
    assert torch.equal(again["resid"], acts["resid"])
    frame = again.to_frame()
    assert len(frame) == 2 * len(acts.token_texts)
    assert again.plot().data[0].type == "heatmap"


def test_capture_of_a_trace_uses_prompt_and_generation(lab):
    trace = lab.generate("What is 1 + 2?", seed=0, max_new_tokens=8, mtp=False)
    acts = lab.capture(trace, sites="resid", layers=[0])
    assert acts["resid"].shape[1] == trace.prompt_ids.numel() + len(trace)
    assert acts.generation_start == trace.prompt_ids.numel()


def test_bad_input(lab):
    with pytest.raises(ValueError, match="unknown site"):
        lab.capture(TEXT, sites=("residual",))
    with pytest.raises(ValueError, match="layer 7 out of range: the model has 3 layers"):
        lab.capture(TEXT, layers=[7])
    with pytest.raises(ValueError, match="text is empty"):
        lab.capture("")
    with pytest.raises(ValueError, match="chunk_size 0"):
        lab.capture(TEXT, chunk_size=0)
