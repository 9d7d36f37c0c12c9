"""compare.model_diff: MiMo-nano against a deliberately perturbed copy of itself, checked by hand."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import mimo_lab
from mimo_lab.compare import ModelDiff, model_diff

PERTURBED_LAYER = 2


@pytest.fixture(scope="module")
def perturbed(nano):
    model = copy.deepcopy(nano.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        weight = model.model.layers[PERTURBED_LAYER].mlp.down_proj.weight
        weight.add_(0.05 * torch.randn(weight.shape, generator=generator))
    return mimo_lab.Lab(model, nano.tokenizer, nano.card, "MiMo-nano-perturbed")


@pytest.fixture(scope="module")
def trace(nano):
    return nano.generate("What is 47 + 38?", temperature=0.6, top_p=0.95, seed=1)


@pytest.fixture(scope="module")
def diff(nano, perturbed, trace):
    return model_diff(nano, perturbed, trace, chunk_size=16)


def test_against_a_manual_computation(nano, perturbed, trace, diff):
    full = torch.cat([trace.prompt_ids, trace.token_ids])[None]
    start, n = trace.prompt_length, full.shape[1]
    with torch.no_grad():
        out_a = nano.model(input_ids=full, output_hidden_states=True)
        out_b = perturbed.model(input_ids=full, output_hidden_states=True)
    la = out_a.logits[0].float().log_softmax(-1)[start - 1: n - 1]
    lb = out_b.logits[0].float().log_softmax(-1)[start - 1: n - 1]
    targets = trace.token_ids
    assert torch.allclose(diff.logprob_a, la.gather(-1, targets[:, None])[:, 0], atol=1e-4)
    assert torch.allclose(diff.logprob_b, lb.gather(-1, targets[:, None])[:, 0], atol=1e-4)
    # KL(a||b) = sum_v p_a (log p_a - log p_b); F.kl_div(input=log q, target=log p, log_target) is KL(p||q)
    kl_ab = F.kl_div(lb, la, log_target=True, reduction="none").sum(-1)
    kl_ba = F.kl_div(la, lb, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(diff.kl_ab, kl_ab, atol=1e-4) and torch.allclose(diff.kl_ba, kl_ba, atol=1e-4)
    assert diff.kl_ab.max() > 1e-3  # the perturbation shows
    # a's log-probs are also generate's own
    assert torch.allclose(diff.logprob_a, trace.logprobs, atol=1e-4)
    # residuals: hidden_states[l + 1] is layer l's output (the last one is after the final norm: not compared)
    for layer in range(nano.num_layers - 1):
        ha = out_a.hidden_states[layer + 1][0, start:].float()
        hb = out_b.hidden_states[layer + 1][0, start:].float()
        rel = (ha - hb).norm(dim=-1) / ha.norm(dim=-1)
        assert torch.allclose(diff.resid_rel[:, layer], rel, atol=1e-4), layer
        if layer < PERTURBED_LAYER:
            assert diff.resid_rel[:, layer].max() < 1e-5 and diff.resid_cos[:, layer].min() > 1 - 1e-5
        else:
            assert diff.resid_rel[:, layer].mean() > 1e-3
    layers = diff.by_layer()
    assert layers.loc[PERTURBED_LAYER, "mean_rel_diff"] > 1e-3 > layers.loc[PERTURBED_LAYER - 1, "mean_rel_diff"]


def test_a_model_against_itself_differs_nowhere(nano, trace):
    same = model_diff(nano, nano, trace)
    assert same.kl_ab.abs().max() < 1e-5 and same.kl_ba.abs().max() < 1e-5
    assert same.resid_rel.max() < 1e-5


def test_frames_sentences_plot_and_saving(diff, trace, tmp_path):
    frame = diff.to_frame()
    assert list(frame["position"]) == list(trace.positions)
    assert (frame["delta"] - (frame["logprob_b"] - frame["logprob_a"])).abs().max() < 1e-6
    top = diff.disagreements(5)
    assert len(top) == 5 and (top["kl_sum"].diff().dropna() <= 0).all()
    assert top["kl_sum"].iloc[0] == pytest.approx(float((diff.kl_ab + diff.kl_ba).max()), abs=1e-6)
    sentences = diff.by_sentence()
    inside = frame[frame["sentence"] >= 0]
    assert sentences["tokens"].sum() == len(inside)
    assert sentences["logprob_a"].sum() == pytest.approx(inside["logprob_a"].sum(), abs=1e-4)
    assert sentences["max_kl_ab"].max() == pytest.approx(inside["kl_ab"].max(), abs=1e-6)
    fig = diff.plot()
    assert len(fig.data) == 4 and fig.data[3].type == "heatmap"
    again = ModelDiff.load(diff.save(tmp_path / "diff"))
    assert torch.equal(again.kl_ab, diff.kl_ab) and torch.equal(again.resid_rel, diff.resid_rel)
    assert again.name_b == "MiMo-nano-perturbed" and again.trace.text == trace.text


def test_pairs_with_different_tokenizers_are_refused(nano, trace, mimo_checkpoint):
    tiny = mimo_lab.load(str(mimo_checkpoint))
    with pytest.raises(ValueError, match=r"lab_a \('MiMo-nano'.*lab_b \('.*MiMo-tiny'.*different tokenizers"):
        model_diff(nano, tiny, trace)


def test_bad_arguments(nano, perturbed, trace):
    with pytest.raises(TypeError, match="lab_b='MiMo-nano'.*a Lab"):
        model_diff(nano, "MiMo-nano", trace)
    with pytest.raises(TypeError, match="trace="):
        model_diff(nano, perturbed, "text")
    with pytest.raises(ValueError, match="kind="):
        model_diff(nano, perturbed, trace, kind="paragraph")
    with pytest.raises(ValueError, match="chunk_size="):
        model_diff(nano, perturbed, trace, chunk_size=0)
