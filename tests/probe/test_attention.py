"""Attention from post-RoPE q/k in query chunks equals eager attention; sentence reductions are exact;
receiver heads equal Thought Anchors' own definition (reasoning sentences only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mimo_lab
from mimo_lab.probe.attention import (
    AttentionResult,
    HeadScores,
    ReceiverHeads,
    SentenceAttention,
    attention,
    attention_between,
    kurtosis,
    receiver_heads,
)

TEXT = ("I add 17 and 28 column by column. Ones: 7 + 8 = 15, write 5. Wait, check it again. Tens: 1 + 2 + 1 = 4. "
        "So the sum is 45. Check: 45 - 28 = 17. Correct. The answer is 45.")
THINKING = ("<think>\nI add 17 and 28 column by column. Ones: 7 + 8 = 15, write 5. Wait, check it again. "
            "Tens: 1 + 2 + 1 = 4. So the sum is 45. Check: 45 - 28 = 17. Correct. The answer is 45.\n</think>\n"
            "The sum of 17 and 28 is \\boxed{45}.")
THINKING_2 = ("<think>\nFirst the ones: 9 + 6 = 15. Write 5 and carry 1. Then the tens: 3 + 4 + 1 = 8. "
              "Hmm, let me verify. 85 - 46 = 39. Yes. So it is 85. Done.\n</think>\nThe answer is \\boxed{85}.")


@pytest.fixture(scope="module")
def lab(mimo_checkpoint):
    return mimo_lab.load(mimo_checkpoint)


def _trace(lab, make_trace, text, prompt="What is 17 + 28?"):
    trace = make_trace(lab.tokenizer, text, prompt=prompt)
    trace.prompt_ids = torch.tensor(lab.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return trace


def _eager(lab, ids):
    lab.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = lab.model(ids, output_attentions=True).attentions
    finally:
        lab.model.set_attn_implementation("sdpa")
    return [a[0] for a in out]  # per layer [heads, n, n]


@pytest.fixture(scope="module")
def eager(lab):
    return _eager(lab, lab.tokenizer(TEXT, add_special_tokens=False, return_tensors="pt")["input_ids"])


@pytest.mark.parametrize("layer", [0, 2])
def test_patterns_equal_eager(lab, eager, layer):
    result = attention(lab, TEXT, layer, query_chunk=5)  # chunks much smaller than the input
    assert lab.model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(result.patterns, eager[layer], atol=1e-5, rtol=0)


def test_head_subset_and_grouped_query(lab, eager):
    result = attention(lab, TEXT, 1, heads=[1, 3])  # heads 1 and 3 share KV heads 0 and 1
    torch.testing.assert_close(result.patterns, eager[1][[1, 3]], atol=1e-5, rtol=0)
    assert lab.attention(TEXT, -2, heads=3).heads == [3]  # the Lab delegate; negative layers count from the end


def test_by_sentence_is_the_block_mean(lab, eager):
    result = attention(lab, TEXT, 2, query_chunk=7)
    sentences = result.by_sentence()
    groups = torch.tensor([max(0, mimo_lab.segment.segment(result.encoded.text).at(s))
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
    # every group carries its [start, end) positions
    for i, grp in enumerate(sentences.groups):
        members = (groups == i).nonzero().flatten()
        assert (grp["start"], grp["end"]) == (int(members[0]), int(members[-1]) + 1)


def test_kurtosis_and_sinks(lab, eager):
    result = attention(lab, TEXT, 0)
    values = torch.tensor([[1.0, 2.0, 3.0, 10.0, float("nan")]])
    centred = torch.tensor([1.0, 2.0, 3.0, 10.0]) - 4.0
    assert float(kurtosis(values)[0]) == pytest.approx(float((centred**4).mean() / (centred**2).mean() ** 2 - 3))
    torch.testing.assert_close(result.sink_mass(), eager[0][:, 1:, 0].mean(-1), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- Thought Anchors' receiver heads


def _ta_kurtosis(values: np.ndarray) -> np.ndarray:
    """scipy.stats.kurtosis(axis=-1, fisher=True, bias=True, nan_policy="omit"), by hand."""
    out = []
    for row in values:
        row = row[~np.isnan(row)].astype(np.float64)
        d = row - row.mean()
        m2, m4 = (d**2).mean(), (d**4).mean()
        out.append(m4 / m2**2 - 3.0 if m2 > 0 else np.nan)
    return np.array(out)


def _ta_vertical_scores(avg_mat: np.ndarray, proximity_ignore: int) -> np.ndarray:
    """Thought Anchors' `get_vertical_scores(control_depth=False, score_type="mean")`, re-implemented."""
    avg_mat = avg_mat.copy()
    avg_mat[np.triu_indices_from(avg_mat, k=1)] = np.nan
    avg_mat[np.triu_indices_from(avg_mat, k=-proximity_ignore + 1)] = np.nan
    scores = []
    for i in range(avg_mat.shape[0]):
        column = avg_mat[i + proximity_ignore:, i]
        scores.append(np.nanmean(column) if np.any(~np.isnan(column)) else np.nan)
    return np.array(scores)


def _ta_receiver_kurtosis(lab, trace, layer: int, proximity: int) -> np.ndarray:
    """[heads]: eager attention over prompt + trace, averaged over the CoT sentences' token blocks only
    (`_compute_averaged_matrix`), vertical scores, kurtosis."""
    ids = torch.cat([trace.prompt_ids, trace.token_ids])[None]
    pattern = _eager(lab, ids)[layer].numpy()
    offset = trace.prompt_ids.numel()
    of_token = trace.sentences.token_segments(trace.spans)
    bounds = []
    for s in trace.sentences:
        members = [i for i, seg in enumerate(of_token) if seg == s.index]
        bounds.append((offset + members[0], offset + members[-1] + 1))
    out = []
    for head in range(pattern.shape[0]):
        avg = np.zeros((len(bounds), len(bounds)))
        for i, (r0, r1) in enumerate(bounds):
            for j, (c0, c1) in enumerate(bounds):
                avg[i, j] = pattern[head, r0:r1, c0:c1].mean()
        out.append(_ta_vertical_scores(avg, proximity))
    return _ta_kurtosis(np.array(out))


def test_receiver_kurtosis_equals_thought_anchors_reasoning_sentences_only(lab, make_trace):
    trace = _trace(lab, make_trace, THINKING)
    sentences = attention(lab, trace, 1).by_sentence()
    assert [g["role"] for g in sentences.groups] == ["prompt"] + ["segment"] * 8 + ["answer"]
    expected = _ta_receiver_kurtosis(lab, trace, 1, proximity=4)
    np.testing.assert_allclose(sentences.receiver_kurtosis(4).numpy(), expected, rtol=1e-4, atol=1e-5)
    assert sentences.vertical_scores(4).shape == (4, 8)  # reasoning sentences only, no prompt / answer column
    try:  # the reference kurtosis itself against scipy, where it is installed
        from scipy import stats
    except ImportError:
        return
    values = np.array([[0.1, 0.5, np.nan, 0.2, 3.0], [1.0, 1.5, 0.2, np.nan, np.nan]])
    np.testing.assert_allclose(_ta_kurtosis(values), stats.kurtosis(values, axis=1, fisher=True, bias=True,
                                                                     nan_policy="omit"), rtol=1e-12)


def test_receiver_heads_average_the_reference_over_traces(lab, make_trace):
    traces = [_trace(lab, make_trace, THINKING), _trace(lab, make_trace, THINKING_2, "What is 46 + 39?")]
    scores = lab.receiver_heads(traces, layers=[2, 0], proximity=3)
    frame = scores.to_frame()
    assert frame["layer"].tolist() == [2] * 4 + [0] * 4  # layers in the order asked
    for layer in (2, 0):
        expected = np.nanmean([_ta_receiver_kurtosis(lab, t, layer, 3) for t in traces], axis=0)
        got = frame[frame["layer"] == layer].sort_values("head")["kurtosis"].to_numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert isinstance(scores, ReceiverHeads) and len(scores.top()) == 8  # top 20 by default, 8 heads here
    assert scores.plot().data[0].type == "heatmap"


def test_proximity_too_large_or_not_positive_is_refused(lab, make_trace):
    trace = _trace(lab, make_trace, THINKING)  # 8 reasoning sentences
    sentences = attention(lab, trace, 0).by_sentence()
    with pytest.raises(ValueError, match="proximity=8 is too large for 8 reasoning sentences"):
        sentences.vertical_scores(8)
    with pytest.raises(ValueError, match="proximity=7 is too large"):
        sentences.receiver_kurtosis(7)  # one finite score: no kurtosis
    with pytest.raises(ValueError, match="proximity=0"):
        sentences.vertical_scores(0)
    with pytest.raises(ValueError, match=r"proximity=7 is too large for traces\[0\]"):
        receiver_heads(lab, [trace], proximity=7)


# ----------------------------------------------------------------------------- positions, mass, between


def test_mass_and_attention_between_take_positions(lab, eager, make_trace):
    result = attention(lab, TEXT, 2)
    queries, keys = [5, 9, 20], [0, 1, 4]
    expected = eager[2][:, queries][:, :, keys].sum(-1).mean(-1)
    torch.testing.assert_close(result.mass(queries, keys), expected, atol=1e-5, rtol=1e-4)
    scores = attention_between(lab, TEXT, queries, keys, layers=[2])
    assert scores.to_frame()["score"].tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert scores.plot().data[0].type == "heatmap"
    # on a trace, positions count the prompt: a sentence's range from by_sentence goes straight into mass
    trace = _trace(lab, make_trace, THINKING)
    att = lab.attention(trace, 1)
    grp = att.by_sentence().groups[3]
    ids = torch.cat([trace.prompt_ids, trace.token_ids])[None]
    pattern = _eager(lab, ids)[1]
    rows, cols = list(range(grp["start"], grp["end"])), list(range(trace.prompt_length))
    torch.testing.assert_close(att.mass(rows, cols), pattern[:, rows][:, :, cols].sum(-1).mean(-1), atol=1e-5,
                               rtol=1e-4)
    assert att.to_frame().index[trace.prompt_length] == trace.prompt_length
    assert bool(att.to_frame()["generated"].iloc[trace.prompt_length])
    assert not bool(att.to_frame()["generated"].iloc[trace.prompt_length - 1])


def test_long_inputs_refuse_token_patterns_but_reduce(lab):
    result = attention(lab, TEXT, 0, max_pattern_tokens=10)
    with pytest.raises(ValueError, match="more than max_pattern_tokens=10"):
        _ = result.patterns
    assert result.by_sentence().matrix.shape[0] == lab.model.config.num_attention_heads
    assert result.plot().data[0].type == "heatmap"


# ----------------------------------------------------------------------------- the result protocol


def test_results_save_and_load_round_trip(lab, make_trace, tmp_path):
    trace = _trace(lab, make_trace, THINKING)
    att = attention(lab, trace, 1, heads=[0, 3], query_chunk=9)
    path = att.save(tmp_path / "att.safetensors")
    again = AttentionResult.load(path)
    torch.testing.assert_close(again.patterns, att.patterns)
    torch.testing.assert_close(again.mass([50, 60], [0, 1]), att.mass([50, 60], [0, 1]))
    sentences = att.by_sentence()
    loaded_sentences = again.by_sentence()  # groups saved with it: no Trace needed
    torch.testing.assert_close(loaded_sentences.matrix, sentences.matrix, equal_nan=True)
    assert loaded_sentences.groups == sentences.groups
    assert again.by_sentence("step").groups == att.by_sentence("step").groups
    assert again.token_texts == att.token_texts and again.heads == [0, 3] and again.layer == 1

    sentences.save(tmp_path / "sent.safetensors")
    back = SentenceAttention.load(tmp_path / "sent.safetensors")
    torch.testing.assert_close(back.matrix, sentences.matrix, equal_nan=True)
    torch.testing.assert_close(back.receiver_kurtosis(3), sentences.receiver_kurtosis(3), equal_nan=True)
    assert back.groups == sentences.groups and back.to_frame().shape == (10, 10)
    assert back.plot(head=3).data[0].type == "heatmap"
    assert list(back.groups_frame().columns[:2]) == ["role", "label"]

    heads = receiver_heads(lab, [trace], layers=[0, 1], proximity=3)
    heads.save(tmp_path / "heads.safetensors")
    loaded = ReceiverHeads.load(tmp_path / "heads.safetensors")
    assert loaded.proximity == 3 and loaded.to_frame().equals(heads.to_frame())
    between = attention_between(lab, TEXT, [9], [0, 1], layers=[1])
    between.save(tmp_path / "between.safetensors")
    assert HeadScores.load(tmp_path / "between.safetensors").to_frame().equals(between.to_frame())
    with pytest.raises(ValueError, match="is not a saved HeadScores"):
        HeadScores.load(tmp_path / "att.safetensors")
    assert "AttentionResult" in repr(att) and "ReceiverHeads" in repr(heads) and "<p>" in heads._repr_html_()


def test_by_sentence_in_thought_anchors_chunks(lab, make_trace):
    """kind="thought_anchors": one group per Thought Anchors chunk of the thinking (no break at a
    single newline, short pieces joined); the whitespace between chunks stays with the chunk before;
    each block is the mean of eager attention over its tokens."""
    text = ("<think>\nI add 17 and 28 by columns,\nones first: 7 + 8 = 15. Ok.\n\nTens: 1 + 2 + 1 = 4, so "
            "the sum is 45.\n\nCheck: 45 - 28 = 17. Yes\n</think>\nThe sum is \\boxed{45}.")
    trace = _trace(lab, make_trace, text)
    chunks = trace.segments("thought_anchors")
    assert [c.stripped for c in chunks] == [
        "I add 17 and 28 by columns,\nones first: 7 + 8 = 15.", "Ok.\n\nTens: 1 + 2 + 1 = 4, so the sum is 45.",
        "Check: 45 - 28 = 17. Yes"]
    result = attention(lab, trace, 1)
    sentences = result.by_sentence(kind="thought_anchors")
    assert [g["role"] for g in sentences.groups] == ["prompt", "segment", "segment", "segment", "answer"]
    pattern = _eager(lab, result.encoded.ids.reshape(1, -1))[1]
    for i, gi in enumerate(sentences.groups):
        for j, gj in enumerate(sentences.groups):
            qs, ks = torch.arange(gi["start"], gi["end"]), torch.arange(gj["start"], gj["end"])
            valid = ks[None, :] <= qs[:, None]
            if valid.any():
                expected = pattern[:, qs][:, :, ks][:, valid].mean(-1)
                torch.testing.assert_close(sentences.matrix[:, i, j], expected, atol=1e-5, rtol=1e-4)
    ends = [g["end"] for g in sentences.groups[:-1]]
    assert ends == [g["start"] for g in sentences.groups[1:]]  # contiguous: the gaps went to the chunk before
