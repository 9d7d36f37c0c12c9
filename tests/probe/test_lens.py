"""Logit lens against a manual unembedding of HF's hidden states; the MTP lens against mtp_predictions."""

from __future__ import annotations

import math
from dataclasses import replace

import checkpoint_fixture
import pytest
import torch

import mimo_lab
from mimo_lab.lab import Lab
from mimo_lab.models.cards import CARDS
from mimo_lab.probe.lens import LensResult, MTPLens, logit_lens, mtp_lens

TEXT = "What is 128 + 367? I add the numbers column by column. The answer is 495."


@pytest.fixture(scope="module")
def lab(mimo_checkpoint):
    return mimo_lab.load(mimo_checkpoint)


@pytest.fixture(scope="module")
def twin(tmp_path_factory, mimo_checkpoint):
    """Another model (other random weights) with the same tokenizer, as MiMo-7B-Base is to MiMo-7B-RL."""
    return mimo_lab.load(checkpoint_fixture.build(tmp_path_factory.mktemp("twin") / "MiMo-tiny-twin", seed=1))


def _independent_mtp(lab, ids, zero_first):
    """The t+2 guesses from full MTP logits (mtp_logits, checked against the formula in tests/models)."""
    with torch.no_grad():
        logprobs = lab.model.mtp_logits(ids[None], zero_first_embedding=zero_first)[0].float().log_softmax(-1)
    return logprobs


def test_logit_lens_equals_manual_unembedding(lab):
    lens = logit_lens(lab, TEXT, k=3, chunk_size=5)
    ids = lab.tokenizer(TEXT, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = lab.model(ids, output_hidden_states=True).hidden_states  # [0] = embeddings
        for layer in range(lab.num_layers):
            if layer == lab.num_layers - 1:
                logits = lab.model(ids).logits[0]  # the last entry is already normed
            else:
                logits = lab.model.lm_head(lab.model.model.norm(hidden[layer + 1]))[0]
            probs = logits.float().softmax(-1)
            top = probs.topk(3)
            assert torch.equal(lens.top_ids[layer], top.indices)
            torch.testing.assert_close(lens.top_probs[layer], top.values, atol=1e-5, rtol=1e-4)
            target = probs[:-1].gather(-1, ids[0, 1:, None])[:, 0]
            torch.testing.assert_close(lens.target_prob[layer, :-1], target, atol=1e-5, rtol=1e-4)
            assert torch.isnan(lens.target_prob[layer, -1])
            rank = (probs[:-1] > target[:, None]).sum(-1)
            assert torch.equal(lens.target_rank[layer, :-1], rank)


def test_lens_frame_plot_save(lab, tmp_path):
    lens = logit_lens(lab, TEXT, layers=[0, 2], k=2)
    frame = lens.to_frame()
    assert set(frame["layer"]) == {0, 2} and len(frame) == 2 * len(lens.token_texts)
    fig = lens.plot(0, 10)
    assert len(fig.data[0].z) == 2 and len(fig.data[0].z[0]) == 10
    lens.save(tmp_path / "lens.safetensors")
    again = LensResult.load(tmp_path / "lens.safetensors")
    assert torch.equal(again.top_ids, lens.top_ids) and again.top_texts == lens.top_texts
    assert again.layers == [0, 2] and again.positions == lens.positions


def test_logit_lens_layers_in_any_order(lab):
    forward = logit_lens(lab, TEXT, layers=[0, 2], k=3, chunk_size=4)
    backward = lab.logit_lens(TEXT, layers=[2, 0], k=3, chunk_size=4)
    assert backward.layers == [2, 0]
    assert torch.equal(backward.top_ids, forward.top_ids.flip(0))
    torch.testing.assert_close(backward.target_prob, forward.target_prob.flip(0), equal_nan=True)
    assert backward.top_texts == forward.top_texts[::-1]


def test_logit_lens_of_a_list_and_positions(lab):
    trace = lab.generate("What is 1 + 2?", seed=1, max_new_tokens=10)
    one, two = lab.logit_lens([TEXT, trace], k=2)
    assert torch.equal(one.top_ids, logit_lens(lab, TEXT, k=2).top_ids)
    assert two.positions == list(range(trace.prompt_length + len(trace))) and two.prompt_length == trace.prompt_length
    position = trace.prompt_length + 3  # generated token 3
    assert two.token_texts[position] == trace.token_texts[3]
    at = two.at(position)
    assert list(at["layer"].unique()) == two.layers and len(at) == 2 * lab.num_layers
    # the last layer's top-1 at the position before a generated token is the model's own top choice there
    assert at[(at["layer"] == lab.num_layers - 1) & (at["rank"] == 0)]["token"].item() == two.top_texts[-1][position][0]
    fig = two.plot(position, position + 4)
    assert list(fig.data[0].x)[0].startswith(f"{position}:") and len(fig.data[0].x) == 4


def test_logit_lens_plot_labels_the_window_it_shows(lab):
    lens = logit_lens(lab, TEXT, layers=[1], k=2)
    fig = lens.plot(5, 8)
    assert [x.split(":")[0] for x in fig.data[0].x] == ["5", "6", "7"]
    assert fig.data[0].z[0] == [float(lens.target_prob[0, c]) for c in (5, 6, 7)]


def _check_mtp_lens(lab, lens, ids, first, zero_first):
    logprobs = _independent_mtp(lab, ids, zero_first)
    n = ids.numel()
    frame = lens.to_frame()
    assert list(frame.index) == list(range(first, n)) and lens.positions.tolist() == list(range(first, n))
    for p in range(first, n):
        row = frame.loc[p]
        if p + 1 < n:  # slot p exists
            assert lens.guess_ids[p - first] == int(logprobs[p].argmax())
            assert row["guess_prob"] == pytest.approx(float(logprobs[p].max().exp()), rel=1e-4, abs=1e-6)
        if p + 2 < n:
            assert row["target_prob"] == pytest.approx(float(logprobs[p, ids[p + 2]].exp()), rel=1e-4, abs=1e-6)
            assert row["hit"] == int(int(logprobs[p].argmax()) == int(ids[p + 2]))
        else:
            assert row["hit"] == -1 and math.isnan(row["target_prob"])


@pytest.mark.parametrize("zero_first", [False, True])
def test_mtp_lens_equals_an_independent_computation(lab, zero_first):
    trace = lab.generate("What is 1 + 2?", seed=1, max_new_tokens=20)
    lens = lab.mtp_lens(trace, zero_first_embedding=zero_first)
    assert lens.zero_first_embedding is zero_first and len(lens) == len(trace)
    ids = torch.cat([trace.prompt_ids, trace.token_ids])
    _check_mtp_lens(lab, lens, ids, trace.prompt_length, zero_first)
    assert lens.to_frame().loc[trace.prompt_length + 2, "token"] == trace.token_texts[2]
    text_lens = mtp_lens(lab, TEXT, zero_first_embedding=zero_first)
    text_ids = lab.tokenizer(TEXT, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    _check_mtp_lens(lab, text_lens, text_ids, 0, zero_first)


def test_mtp_lens_default_convention_is_the_cards(lab, nano):
    # the fixture has no card of its own and no config field: the serving engines' convention
    assert lab.card.mtp_zero_first_embedding is None and lab.mtp_lens(TEXT).zero_first_embedding is True
    assert nano.card.mtp_zero_first_embedding is None  # a MiMo-nano folder says in its config.json
    assert nano.model.config.mtp_zero_first_embedding is False
    assert nano.mtp_lens("What is 1 + 2?").zero_first_embedding is False
    as_7b = Lab(lab.model, lab.tokenizer, CARDS["XiaomiMiMo/MiMo-7B-RL"], "XiaomiMiMo/MiMo-7B-RL")
    assert all(card.mtp_zero_first_embedding is True for name, card in CARDS.items() if "MiMo-7B" in name)
    lens = as_7b.mtp_lens(TEXT)
    assert lens.zero_first_embedding is True
    unmasked = Lab(lab.model, lab.tokenizer, replace(lab.card, mtp_zero_first_embedding=False), "x").mtp_lens(TEXT)
    assert unmasked.zero_first_embedding is False
    assert not torch.allclose(lens.guess_probs[:-1], unmasked.guess_probs[:-1])


def test_mtp_lens_of_another_models_trace_is_computed_by_this_lab(lab, twin):
    trace = lab.generate("What is 1 + 2?", seed=1, max_new_tokens=20)
    stored = trace.mtp["pred_prob"].clone()
    lens = mtp_lens(twin, trace)  # the module function, as on main
    got = torch.tensor(lens.to_frame()["guess_prob"].tolist())
    assert not torch.allclose(got[:-1], stored[:-1])  # not the other model's stored analytics
    ids = torch.cat([trace.prompt_ids, trace.token_ids])
    expected = _independent_mtp(twin, ids, zero_first=True).max(-1).values.exp()[trace.prompt_length:]
    torch.testing.assert_close(got[:-1], expected, atol=1e-5, rtol=1e-4)  # but the twin's own head
    assert lens.model_name == twin.name
    _check_mtp_lens(twin, lens, ids, trace.prompt_length, zero_first=True)
    trace.mtp = {k: torch.zeros_like(v) for k, v in trace.mtp.items()}  # whatever is stored is never read
    torch.testing.assert_close(lab.mtp_lens(trace).guess_probs[:-1], stored[:-1], atol=1e-5, rtol=1e-4)


def test_mtp_lens(lab, tmp_path):
    trace = lab.generate("What is 1 + 2?", seed=1, max_new_tokens=20)
    lens = mtp_lens(lab, trace)
    frame = lens.to_frame()
    assert len(frame) == len(trace)
    assert frame["hit"].tolist() == trace.mtp["hit"].tolist()  # same lab, same convention as generate's
    known = trace.mtp["hit"] >= 0
    assert lens.accuracy == pytest.approx(float(trace.mtp["hit"][known].float().mean()))
    by_label = lens.by_label()
    assert by_label["tokens"].sum() == int(known.sum())
    fig = lens.plot()
    assert fig.data[0].name == "p(true token p+2)" and list(fig.data[0].x)[0] == trace.prompt_length
    window = lens.plot(trace.prompt_length + 2, trace.prompt_length + 6)
    assert list(window.data[0].x) == list(range(trace.prompt_length + 2, trace.prompt_length + 6))
    lens.save(tmp_path / "mtp.safetensors")
    again = MTPLens.load(tmp_path / "mtp.safetensors")
    assert again.to_frame().equals(frame) and again.zero_first_embedding == lens.zero_first_embedding
    several = lab.mtp_lens([trace, TEXT])
    assert [len(x) for x in several] == [len(trace), len(lab.tokenizer(TEXT, add_special_tokens=False)["input_ids"])]


def test_a_position_from_one_result_indexes_every_other(lab, tmp_path):
    trace = lab.generate("What is 1 + 2?", seed=3, max_new_tokens=16)
    mtp = lab.mtp_lens(trace)
    lens = lab.logit_lens(trace, k=2)
    acts = lab.capture(trace, sites="resid", layers=[-1])
    full = torch.cat([trace.prompt_ids, trace.token_ids])[None]
    with torch.no_grad():
        logits = lab.model(full).logits[0]
    for position in mtp.to_frame().sort_values("target_prob").index[:5]:  # the MTP lens's least sure positions
        token = trace.token_texts[position - trace.prompt_length]
        assert mtp.to_frame().loc[position, "token"] == token
        assert lens.token_texts[position] == token == acts.token_texts[position]
        # the last layer's logit lens and residual at that position are the model's own output there
        assert lens.top_ids[-1, position, 0] == int(logits[position].argmax())
        torch.testing.assert_close(lab.model.lm_head(lab.model.model.norm(acts["resid"][0, position])),
                                   logits[position], atol=1e-4, rtol=1e-4)
    # a saved and reloaded trace keeps its tokenizer fingerprint, so the check still applies
    again = type(trace).load(trace.save(tmp_path / "t"))
    assert again.tokenizer_fingerprint == trace.tokenizer_fingerprint
    assert lab.mtp_lens(again).to_frame().equals(mtp.to_frame())
