"""Logit lens against a manual unembedding of HF's hidden states; the MTP lens against mtp_predictions."""

from __future__ import annotations

import pytest
import torch

import mimo_lab
from mimo_lab.probe.lens import LensResult, logit_lens, mtp_lens

TEXT = "What is 128 + 367? I add the numbers column by column. The answer is 495."


@pytest.fixture(scope="module")
def lab(mimo_checkpoint):
    return mimo_lab.load(mimo_checkpoint)


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
    with pytest.raises(ValueError, match="k 0"):
        logit_lens(lab, TEXT, k=0)


def test_mtp_lens(lab):
    trace = lab.generate("What is 1 + 2?", seed=1, max_new_tokens=20)
    lens = mtp_lens(lab, trace)
    frame = lens.to_frame()
    assert len(frame) == len(trace)
    assert frame["hit"].tolist() == trace.mtp["hit"].tolist()
    known = trace.mtp["hit"] >= 0
    assert lens.accuracy == pytest.approx(float(trace.mtp["hit"][known].float().mean()))
    by_label = lens.by_label()
    assert by_label["tokens"].sum() == int(known.sum())
    assert lens.plot().data[0].name == "p(true token i+2)"
    trace.mtp = None  # a trace without analytics: the lens runs the head itself
    assert mtp_lens(lab, trace).to_frame()["hit"].tolist() == frame["hit"].tolist()
