"""Capture: the saved values are the model's (checked against torch hooks), chunked = one pass."""

from __future__ import annotations

import shutil

import checkpoint_fixture
import numpy as np
import pytest
import torch

import mimo_lab
from mimo_lab.probe import Activations

TEXT = "What is 128 + 367? <think> I add the numbers column by column. </think> The answer is \\boxed{495}."


@pytest.fixture(scope="module")
def lab(mimo_checkpoint):
    return mimo_lab.load(mimo_checkpoint)


@pytest.fixture(scope="module")
def twin(tmp_path_factory, mimo_checkpoint):
    """Another model (other random weights) with the same tokenizer, as MiMo-7B-Base is to MiMo-7B-RL."""
    return mimo_lab.load(checkpoint_fixture.build(tmp_path_factory.mktemp("twin") / "MiMo-tiny-twin", seed=1))


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


def test_layers_in_any_order_come_back_in_that_order(lab):
    ids = lab.tokenizer(TEXT, add_special_tokens=False, return_tensors="pt")["input_ids"]
    reference = _hooked(lab, ids)
    for layers in ([2, 0], [1, 2, 0], [-1, 0]):
        acts = lab.capture(TEXT, layers=layers, chunk_size=7)
        assert acts.layers == [layer % lab.num_layers for layer in layers]
        for i, layer in enumerate(acts.layers):
            for site in ("resid", "attn_out", "mlp_out"):
                torch.testing.assert_close(acts[site][i], reference[(site, layer)], atol=1e-5, rtol=1e-5)
    assert lab.capture(TEXT, layers=np.int64(1), sites="resid").layers == [1]
    assert lab.capture(TEXT, layers=np.array([2, 1]), sites="resid").layers == [2, 1]


def test_positions_are_those_of_the_whole_sequence(lab):
    trace = lab.generate("What is 1 + 2?", seed=0, max_new_tokens=8, mtp=False)
    acts = lab.capture(trace, sites="resid", layers=[0])
    assert acts.positions == list(range(trace.prompt_length + len(trace)))
    assert acts.prompt_length == trace.prompt_length
    full = torch.cat([trace.prompt_ids, trace.token_ids])[None]
    reference = _hooked(lab, full)
    for i in range(len(trace)):  # generated token i sits at position prompt_length + i
        position = trace.prompt_length + i
        assert acts.token_texts[position] == trace.token_texts[i]
        torch.testing.assert_close(acts["resid"][0, position], reference[("resid", 0)][position],
                                   atol=1e-5, rtol=1e-5)
    frame = acts.to_frame()
    assert frame["position"].max() == len(acts.positions) - 1
    assert frame[frame["generated"]]["position"].min() == trace.prompt_length


def test_capture_of_a_list_gives_a_list(lab):
    trace = lab.generate("What is 1 + 2?", seed=0, max_new_tokens=6, mtp=False)
    several = lab.capture([TEXT, trace], sites="resid", layers=[2, 0])
    assert isinstance(several, list) and len(several) == 2
    for one, item in zip(several, [TEXT, trace], strict=True):
        alone = lab.capture(item, sites="resid", layers=[2, 0])
        torch.testing.assert_close(one["resid"], alone["resid"], atol=0, rtol=0)
        assert one.token_texts == alone.token_texts


def test_a_trace_from_another_model_with_the_same_tokenizer_is_read_by_this_lab(lab, twin):
    trace = lab.generate("What is 1 + 2?", seed=0, max_new_tokens=8)
    assert trace.tokenizer_fingerprint and trace.model_name == lab.name
    acts = twin.capture(trace, sites="resid", layers=[1])
    full = torch.cat([trace.prompt_ids, trace.token_ids])[None]
    torch.testing.assert_close(acts.get("resid", 1), _hooked(twin, full)[("resid", 1)], atol=1e-5, rtol=1e-5)
    assert acts.model_name == twin.name
    assert not torch.allclose(acts.get("resid", 1), lab.capture(trace, sites="resid", layers=[1]).get("resid", 1))


def test_a_trace_with_another_tokenizer_is_refused_naming_both(lab, nano):
    trace = nano.generate("What is 1 + 2?", max_new_tokens=6)
    with pytest.raises(ValueError, match="tokenizer") as info:
        lab.capture(trace)
    assert nano.name in str(info.value) and lab.name in str(info.value)
    # an older Trace without a fingerprint: its token ids are decoded with this lab's tokenizer
    trace.tokenizer_fingerprint = ""
    with pytest.raises(ValueError, match="another tokenizer") as info:
        lab.capture(trace)
    assert nano.name in str(info.value) and lab.name in str(info.value)
    assert nano.capture(trace, sites="resid", layers=0)["resid"].shape[1] == trace.prompt_length + len(trace)


def test_save_load_round_trip_keeps_order_and_positions(lab, tmp_path):
    acts = lab.capture("What is 1 + 2?", sites=("mlp_out", "resid"), layers=[2, 0])
    acts.save(tmp_path / "a.safetensors")
    again = Activations.load(tmp_path / "a.safetensors")
    assert again.layers == [2, 0] and again.sites == ("mlp_out", "resid") and again.positions == acts.positions
    assert torch.equal(again.get("resid", 2), acts.get("resid", 2))
    shutil.copy(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert Activations.load(tmp_path / "b.safetensors").model_name == lab.name


def test_plot_window_labels_are_positions(lab):
    acts = lab.capture(TEXT, sites="resid", layers=[0, 1])
    fig = acts.plot("resid", 3, 9)
    assert list(fig.data[0].x) == list(range(3, 9))
    torch.testing.assert_close(torch.tensor(fig.data[0].z), acts["resid"][:, 3:9].norm(dim=-1))
