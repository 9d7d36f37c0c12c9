"""Attention from post-RoPE q/k in query chunks equals eager attention; sentence reductions are exact."""

from __future__ import annotations

import pytest
import torch

import mimo_lab
from mimo_lab.probe.attention import attention, attention_between, kurtosis, receiver_heads

TEXT = ("I add 17 and 28 column by column. Ones: 7 + 8 = 15, write 5. Wait, check it again. Tens: 1 + 2 + 1 = 4. "
        "So the sum is 45. Check: 45 - 28 = 17. Correct. The answer is 45.")


@pytest.fixture(scope="module")
def lab(mimo_checkpoint):
    return mimo_lab.load(mimo_checkpoint)


@pytest.fixture(scope="module")
def eager(lab):
    ids = lab.tokenizer(TEXT, add_special_tokens=False, return_tensors="pt")["input_ids"]
    lab.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = lab.model(ids, output_attentions=True).attentions
    finally:
        lab.model.set_attn_implementation("sdpa")
    return [a[0] for a in out]  # per layer [heads, n, n]


@pytest.mark.parametrize("layer", [0, 2])
def test_patterns_equal_eager(lab, eager, layer):
    result = attention(lab, TEXT, layer, query_chunk=5)  # chunks much smaller than the input
    assert lab.model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(result.patterns, eager[layer], atol=1e-5, rtol=0)


def test_head_subset_and_grouped_query(lab, eager):
    result = attention(lab, TEXT, 1, heads=[1, 3])  # heads 1 and 3 share KV heads 0 and 1
    torch.testing.assert_close(result.patterns, eager[1][[1, 3]], atol=1e-5, rtol=0)


def test_by_sentence_is_the_block_mean(lab, eager):
    result = attention(lab, TEXT, 2, query_chunk=7)
    sentences = result.by_sentence()
    groups = torch.tensor([max(0, __import__("mimo_lab").segment.segment(result.encoded.text).at(s))
                           for s, _ in result.encoded.spans])
    pattern = eager[2]
    count = len(sentences.groups)
    for i in range(count):
        for j in range(count):
            qs, ks = (groups == i).nonzero().flatten(), (groups == j).nonzero().flatten()
            block = pattern[:, qs][:, :, ks]
            valid = ks[None, :] <= qs[:, None]
            if valid.any():
                expected = block[:, valid].mean(-1)
                torch.testing.assert_close(sentences.matrix[:, i, j], expected, atol=1e-5, rtol=1e-4)
            else:
                assert torch.isnan(sentences.matrix[:, i, j]).all()


def test_vertical_scores_kurtosis_and_sinks(lab, eager):
    result = attention(lab, TEXT, 0)
    sentences = result.by_sentence()
    vertical = sentences.vertical_scores(proximity=2)
    m = sentences.matrix
    j = 0
    rows = [i for i in range(m.shape[-1]) if i >= j + 2]
    torch.testing.assert_close(vertical[:, j], m[:, rows, j].mean(-1))
    values = torch.tensor([[1.0, 2.0, 3.0, 10.0, float("nan")]])
    centred = torch.tensor([1.0, 2.0, 3.0, 10.0]) - 4.0
    assert float(kurtosis(values)[0]) == pytest.approx(float((centred**4).mean() / (centred**2).mean() ** 2 - 3))
    torch.testing.assert_close(result.sink_mass(), eager[0][:, 1:, 0].mean(-1), atol=1e-5, rtol=1e-4)


def test_mass_and_attention_between(lab, eager):
    result = attention(lab, TEXT, 2)
    queries, keys = [5, 9, 20], [0, 1, 4]
    expected = eager[2][:, queries][:, :, keys].sum(-1).mean(-1)
    torch.testing.assert_close(result.mass(queries, keys), expected, atol=1e-5, rtol=1e-4)
    scores = attention_between(lab, TEXT, queries, keys, layers=[2])
    assert scores.to_frame()["score"].tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert scores.plot().data[0].type == "heatmap"
    with pytest.raises(ValueError, match="position 999 out of range"):
        result.mass([999], keys)


def test_long_inputs_refuse_token_patterns_but_reduce(lab):
    result = attention(lab, TEXT, 0, max_pattern_tokens=10)
    with pytest.raises(ValueError, match="more than max_pattern_tokens=10"):
        _ = result.patterns
    assert result.by_sentence().matrix.shape[0] == lab.model.config.num_attention_heads
    assert result.plot().data[0].type == "heatmap"


def test_trace_groups_and_receiver_heads(lab):
    trace = lab.generate("What is 17 + 28?", seed=0, max_new_tokens=40, mtp=False)
    sentences = attention(lab, trace, 1).by_sentence()
    assert sentences.groups[0]["name"] == "prompt"
    scores = receiver_heads(lab, [trace], layers=[0, 1], proximity=1)
    frame = scores.to_frame()
    assert len(frame) == 2 * lab.model.config.num_attention_heads
    assert scores.plot().data[0].type == "heatmap"


def test_bad_arguments(lab):
    with pytest.raises(ValueError, match="head 9 out of range"):
        attention(lab, TEXT, 0, heads=[9])
    with pytest.raises(ValueError, match="layer 5 out of range"):
        attention(lab, TEXT, 5)
    with pytest.raises(ValueError, match="query_chunk 0"):
        attention(lab, TEXT, 0, query_chunk=0)
