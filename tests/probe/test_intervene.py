"""Interventions: patching checked against plain-torch patching, steering seen by capture at the steered
layer, attention suppression with Thought Anchors' KL checked against a brute-force loop."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
import torch

import mimo_lab
from mimo_lab.probe.intervene import (
    PatchingResult,
    SteeringVector,
    SuppressionMatrix,
    SuppressionResult,
    activation_patching,
    behaviour_vector,
    kl_divergence,
    steering_vector,
    suppress_sentence,
    suppression_matrix,
)

CLEAN, CORRUPTED, TARGET = "What is 17 + 28? The answer is", "What is 17 + 29? The answer is", " 45"
THINKING = "<think>\nI add 17 and 28. Ones: 7 + 8 = 15. Wait, check. So 45.\n</think>\n45"


@pytest.fixture(scope="module")
def lab(mimo_checkpoint):
    return mimo_lab.load(mimo_checkpoint)


@pytest.fixture(scope="module")
def trace(lab):
    from conftest import trace_from_text

    t = trace_from_text(lab.tokenizer, THINKING)
    t.prompt_ids = torch.tensor(lab.tokenizer("What is 17 + 28?", add_special_tokens=False)["input_ids"])
    return t


def _enc(lab, text):
    return lab.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]


def _torch_patch(lab, layer, pos, clean_ids, corrupt_ids, prefix, target_ids):
    """The same patch with plain torch hooks: an independent implementation."""
    keep = {}
    h = lab.model.model.layers[layer].register_forward_hook(lambda m, a, o: keep.update(v=o[0, pos].clone()))
    with torch.no_grad():
        lab.model(clean_ids)
    h.remove()

    def replace(m, a, o):
        o = o.clone()
        o[0, pos] = keep["v"]
        return o

    h = lab.model.model.layers[layer].register_forward_hook(replace)
    with torch.no_grad():
        logits = lab.model(corrupt_ids).logits
    h.remove()
    n = corrupt_ids.shape[1]
    return float(logits[0, prefix - 1 : n - 1].log_softmax(-1).gather(-1, target_ids[:, None]).sum())


# ----------------------------------------------------------------------------- patching


def test_patching_matches_a_plain_torch_patch_in_the_order_asked(lab, tmp_path):
    result = lab.activation_patching(CLEAN, CORRUPTED, TARGET, layers=[2, 0])  # not in model order
    clean_ids, corrupt_ids = _enc(lab, CLEAN + TARGET), _enc(lab, CORRUPTED + TARGET)
    target_ids = _enc(lab, TARGET)[0]
    prefix = clean_ids.shape[1] - target_ids.numel()
    assert result.layers == [2, 0] and result.positions == list(range(prefix))
    for li, layer in enumerate([2, 0]):
        for pos in (0, prefix // 2, prefix - 1):
            expected = _torch_patch(lab, layer, pos, clean_ids, corrupt_ids, prefix, target_ids)
            assert float(result.patched_logprob[li, pos]) == pytest.approx(expected, abs=1e-4)
    differing = next(i for i in range(prefix) if clean_ids[0, i] != corrupt_ids[0, i])
    assert abs(float(result.effect[1, differing])) > 0.05  # the changed token matters
    # positions that are identical and come before the change cannot matter
    assert torch.allclose(result.effect[:, :differing], torch.zeros(2, differing), atol=1e-4)
    assert result.plot().data[0].type == "heatmap" and len(result.to_frame()) == 2 * prefix
    # positions in the order asked
    some = activation_patching(lab, CLEAN, CORRUPTED, TARGET, layers=[0], positions=[differing, 0])
    assert some.positions == [differing, 0]
    torch.testing.assert_close(some.patched_logprob[0], result.patched_logprob[1, [differing, 0]])
    result.save(tmp_path / "patch.safetensors")
    again = PatchingResult.load(tmp_path / "patch.safetensors")
    torch.testing.assert_close(again.effect, result.effect)
    assert (again.layers, again.positions, again.target) == ([2, 0], result.positions, TARGET)


def test_patching_takes_traces(lab, trace):
    result = activation_patching(lab, trace, trace, "15", layers=[1], positions=[0, trace.prompt_length])
    n = trace.prompt_length + len(trace) + len(_enc(lab, "15")[0])
    assert len(result.token_texts) == n and "".join(result.token_texts[-2:]) == "15"
    assert "".join(result.token_texts[trace.prompt_length : n - 2]) == trace.text
    # clean == corrupted: every patch leaves the clean log-prob
    assert result.clean_logprob == pytest.approx(result.corrupted_logprob)
    assert torch.allclose(result.patched_logprob, torch.full((1, 2), result.clean_logprob), atol=1e-5)
    ids = torch.cat([trace.prompt_ids, trace.token_ids, _enc(lab, "15")[0]])[None]
    n = ids.shape[1]
    with torch.no_grad():
        logits = lab.model(ids).logits[0, n - 3 : n - 1].log_softmax(-1)
    assert result.clean_logprob == pytest.approx(float(logits.gather(-1, ids[0, n - 2 :, None]).sum()), abs=1e-4)


def test_patching_refuses_different_lengths(lab):
    with pytest.raises(ValueError, match="same number of tokens"):
        activation_patching(lab, CLEAN, "What is 17 + 2889? The answer is", TARGET)


# ----------------------------------------------------------------------------- steering

POSITIVE, NEGATIVE = ["Wait, let me check.", "Hmm, wait."], ["So the sum is 45.", "Tens: 1 + 2."]


@pytest.fixture(scope="module")
def vector(lab):
    return steering_vector(lab, POSITIVE, NEGATIVE, 1)


def test_steering_vector_is_the_difference_of_means_and_its_norm_the_unit(lab, vector):
    resid = {t: lab.capture(t, sites="resid", layers=[1]).get("resid", 1) for t in POSITIVE + NEGATIVE}
    pos = torch.cat([resid[t] for t in POSITIVE])
    neg = torch.cat([resid[t] for t in NEGATIVE])
    torch.testing.assert_close(vector.vector, pos.mean(0) - neg.mean(0), atol=1e-5, rtol=1e-4)
    assert vector.norm == pytest.approx(float(torch.cat([pos, neg]).norm(dim=-1).mean()), rel=1e-5)
    assert vector.counts == (pos.shape[0], neg.shape[0])
    with lab.steer(vector, 2.5) as steering:
        assert float(steering.shift.norm()) == pytest.approx(2.5 * vector.norm, rel=1e-5)  # scale x mean norm


def test_a_string_is_one_text(lab):
    one = steering_vector(lab, "Wait, let me check.", "So the sum is 45.", 1)
    listed = steering_vector(lab, ["Wait, let me check."], ["So the sum is 45."], 1)
    torch.testing.assert_close(one.vector, listed.vector)
    whole = lab.capture("Wait, let me check.", sites="resid", layers=[1]).get("resid", 1).mean(0)
    rest = lab.capture("So the sum is 45.", sites="resid", layers=[1]).get("resid", 1).mean(0)
    torch.testing.assert_close(one.vector, whole - rest, atol=1e-5, rtol=1e-4)


def _hooked_resid(lab, layer: int, ids: torch.Tensor) -> torch.Tensor:
    """Layer `layer`'s output for one sequence through a plain forward hook: an independent reading."""
    keep = {}
    handle = lab.model.model.layers[layer].register_forward_hook(
        lambda module, args, output: keep.update(v=(output[0] if isinstance(output, tuple) else output)[0].clone()))
    with torch.no_grad():
        lab.model(ids[None])
    handle.remove()
    return keep["v"].float()


@pytest.mark.parametrize("lead", [0, 1, 3])
def test_behaviour_vector_is_the_in_context_difference_of_means(lab, trace, lead):
    """Venhoff et al.'s reading: the trace runs whole; the mean at the backtracking sentence's
    positions (and `lead` tokens before it) minus the mean at the other generated positions."""
    vector = behaviour_vector(lab, [trace, trace], 1, "backtracking", lead=lead)
    resid = _hooked_resid(lab, 1, torch.cat([trace.prompt_ids, trace.token_ids]))
    sentence = next(s for s in trace.sentences if s.stripped.startswith("Wait"))  # its characters -> tokens
    wait, end = sentence.start, sentence.end
    starts = trace.spans[:, 0]
    first = int(((starts >= wait) & (starts < end)).nonzero()[0])
    last = int(((starts >= wait) & (starts < end)).nonzero()[-1])
    inside = torch.zeros(len(trace), dtype=torch.bool)
    inside[max(0, first - lead):last + 1] = True
    generated = resid[trace.prompt_length:]
    torch.testing.assert_close(vector.vector, generated[inside].mean(0) - generated[~inside].mean(0),
                               atol=1e-4, rtol=1e-4)
    assert vector.counts == (2 * int(inside.sum()), 2 * int((~inside).sum()))
    assert vector.norm == pytest.approx(float(generated.norm(dim=-1).mean()), rel=1e-4)
    by_text = behaviour_vector(lab, trace, 1, lambda text: text.startswith("Wait"), lead=lead)
    torch.testing.assert_close(by_text.vector, vector.vector, atol=1e-5, rtol=1e-5)


def test_behaviour_vector_at_the_lead_tokens_against_the_other_sentences(lab, trace):
    """span="lead", against="other_sentences": the token before the Wait sentence against the token
    before every other sentence of the trace (read through a plain forward hook)."""
    vector = behaviour_vector(lab, [trace], 1, "backtracking", lead=1, span="lead", against="other_sentences")
    resid = _hooked_resid(lab, 1, torch.cat([trace.prompt_ids, trace.token_ids]))[trace.prompt_length:]
    starts = trace.spans[:, 0]
    before = {}  # the generated index of the token before each sentence's first token
    for sentence in trace.sentences:
        first = int(((starts >= sentence.start) & (starts < sentence.end)).nonzero()[0])
        before[max(0, first - 1)] = sentence.stripped.startswith("Wait")
    pos = [i for i, wait in before.items() if wait]
    neg = [i for i, wait in before.items() if not wait and i not in pos]
    assert len(pos) == 1 and len(neg) >= 2
    torch.testing.assert_close(vector.vector, resid[pos].mean(0) - resid[neg].mean(0), atol=1e-4, rtol=1e-4)
    assert vector.counts == (len(pos), len(neg))
    assert vector.norm == pytest.approx(float(resid.norm(dim=-1).mean()), rel=1e-4)


def test_behaviour_vector_bad_input(lab, trace):
    with pytest.raises(ValueError, match="span='lead' with lead=0"):
        behaviour_vector(lab, [trace], 1, span="lead", lead=0)
    with pytest.raises(ValueError, match="against='others' is not accepted"):
        behaviour_vector(lab, [trace], 1, against="others")
    with pytest.raises(ValueError, match="where='dithering' is not accepted: a marker name"):
        behaviour_vector(lab, [trace], 1, "dithering")
    with pytest.raises(TypeError, match=r"traces\[0\]='What is' \(str\) is not accepted: a Trace is"):
        behaviour_vector(lab, ["What is"], 1)
    with pytest.raises(ValueError, match="no sentence of the 1 traces shows the behaviour"):
        behaviour_vector(lab, [trace], 1, lambda text: "zebra" in text)
    with pytest.raises(ValueError, match="lead"):
        behaviour_vector(lab, [trace], 1, lead=-1)


def test_capture_inside_steering_sees_the_steered_layer(lab, vector):
    text, scale = "What is 1 + 2?", 3.0
    plain = lab.capture(text, sites="resid", layers=[1, 2])
    with vector.apply(lab, scale):
        inside = lab.capture(text, sites="resid", layers=[1, 2])
        only = lab.capture(text, sites="resid", layers=[1])  # the steered layer as the last one read
    shift = scale * vector.norm * vector.direction
    torch.testing.assert_close(inside.get("resid", 1), plain.get("resid", 1) + shift, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(only.get("resid", 1), plain.get("resid", 1) + shift, atol=1e-5, rtol=1e-5)
    # the next layer equals an independent steering: a plain torch pre-hook adding the shift to its input
    keep = {}
    hooks = [lab.model.model.layers[2].register_forward_pre_hook(lambda m, a, k: ((a[0] + shift, *a[1:]), k),
                                                                 with_kwargs=True),
             lab.model.model.layers[2].register_forward_hook(lambda m, a, o: keep.update(v=o[0].clone()))]
    with torch.no_grad():
        lab.model(_enc(lab, text))
    for h in hooks:
        h.remove()
    torch.testing.assert_close(inside.get("resid", 2), keep["v"], atol=1e-5, rtol=1e-5)
    after = lab.capture(text, sites="resid", layers=[1, 2])  # nothing left behind
    torch.testing.assert_close(after["resid"], plain["resid"])


def test_steering_changes_generation_and_is_removed(lab, vector, tmp_path):
    plain = lab.generate("What is 1 + 2?", greedy=True, max_new_tokens=12, mtp=False)
    with vector.apply(lab, scale=8.0):
        steered = lab.generate("What is 1 + 2?", greedy=True, max_new_tokens=12, mtp=False)
    after = lab.generate("What is 1 + 2?", greedy=True, max_new_tokens=12, mtp=False)
    assert not torch.equal(steered.token_ids, plain.token_ids)
    assert torch.equal(after.token_ids, plain.token_ids)  # the shift is gone
    vector.save(tmp_path / "v.safetensors")
    again = SteeringVector.load(tmp_path / "v.safetensors")
    assert again.layer == 1 and torch.equal(again.vector, vector.vector) and again.norm == vector.norm
    assert again.plot().data[0].type == "bar" and len(again.to_frame()) == lab.model.config.hidden_size


def test_nested_steering_adds_up(lab, vector):
    text = "What is 1 + 2?"
    plain = lab.capture(text, sites="resid", layers=[1]).get("resid", 1)
    with lab.steer(vector, 1.0) as first, lab.steer(vector, -3.0):
        assert first.active and "; active" in repr(first)
        both = lab.capture(text, sites="resid", layers=[1]).get("resid", 1)
    torch.testing.assert_close(both, plain - 2.0 * vector.norm * vector.direction, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lab.capture(text, sites="resid", layers=[1]).get("resid", 1), plain)


def test_apply_without_with_is_loud(lab, vector):
    steering = vector.apply(lab, 2.0)
    assert "NOT ACTIVE" in repr(steering)
    with pytest.warns(UserWarning, match="never used in a `with` block"):
        del steering
        gc.collect()
    plain = lab.capture("What is 1 + 2?", sites="resid", layers=[1]).get("resid", 1)
    with pytest.warns(UserWarning, match="nothing was steered"):
        vector.apply(lab, 2.0)  # the bare call: discarded at once
        gc.collect()
    torch.testing.assert_close(lab.capture("What is 1 + 2?", sites="resid", layers=[1]).get("resid", 1), plain)


# ----------------------------------------------------------------------------- suppression


def _ta_sparse_kl(p_logits: np.ndarray, q_logits: np.ndarray, temperature: float, top_p: float, cap: int) -> float:
    """Thought Anchors' `compress_logits_top_p` + `calculate_kl_divergence_sparse`, one position, a plain loop."""
    def top(logits):
        z = logits / temperature
        probs = np.exp(z - z.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
        k = int(np.searchsorted(cum, top_p, side="left")) + 1
        k = max(1, min(k, cap, len(logits)))
        return order[:k], logits[order[:k]]

    (b_idx, b_log), (s_idx, s_log) = top(p_logits), top(q_logits)
    union = np.union1d(b_idx, s_idx)
    b = np.full(len(union), -1e9)
    s = np.full(len(union), -1e9)
    for idx, value in zip(b_idx, b_log, strict=True):
        b[np.searchsorted(union, idx)] = value
    for idx, value in zip(s_idx, s_log, strict=True):
        s[np.searchsorted(union, idx)] = value
    total = 0.0
    log_zb = np.log(np.exp(b / temperature - (b / temperature).max()).sum()) + (b / temperature).max()
    log_zs = np.log(np.exp(s / temperature - (s / temperature).max()).sum()) + (s / temperature).max()
    for i in range(len(union)):
        log_p, log_q = b[i] / temperature - log_zb, s[i] / temperature - log_zs
        p = math.exp(log_p)
        if p > 0:
            total += p * (log_p - log_q)
    return max(total, 0.0)


def test_kl_divergence_equals_a_brute_force_loop():
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(6, 40, generator=gen) * 3
    q = p + torch.randn(6, 40, generator=gen)
    q[0] = p[0]  # identical rows: KL 0
    for temperature, top_p, cap in [(0.6, 0.9999, 100), (0.6, 0.9, 10), (1.0, 0.5, 40), (0.6, 1.0, 7)]:
        got = kl_divergence(p, q, temperature=temperature, top_p=top_p, max_tokens=cap)
        expected = [_ta_sparse_kl(p[i].double().numpy(), q[i].double().numpy(), temperature, top_p, cap)
                    for i in range(6)]
        np.testing.assert_allclose(got.numpy(), expected, rtol=2e-4, atol=1e-5)
    full = kl_divergence(p, q, temperature=0.7)
    for i in range(6):
        lp, lq = (p[i].double() / 0.7).log_softmax(-1), (q[i].double() / 0.7).log_softmax(-1)
        assert float(full[i]) == pytest.approx(sum(float(lp[v].exp() * (lp[v] - lq[v])) for v in range(40)),
                                                abs=1e-5)


def test_suppression_only_affects_later_tokens_and_reports_positions(lab, trace, tmp_path):
    count = len(trace.sentences)
    assert count >= 2
    result = lab.suppress_sentence(trace, 0)
    start, end = result.ranges[0]
    assert result.kl.shape == (trace.prompt_length + len(trace),)  # one value per position of the full input
    assert start >= trace.prompt_length
    assert torch.all(result.kl[:end] < 1e-6)  # before the sentence ends nothing changes
    assert float(result.kl[end:].max()) > 1e-4
    frame = result.to_frame()
    assert frame["after_suppressed"].sum() == count - 1
    # the same positions as attention's sentence groups
    groups = lab.attention(trace, 0).by_sentence().groups[1 : 1 + count]
    assert result.ranges == [(g["start"], g["end"]) for g in groups]
    row = frame.loc[1]
    assert row["mean_log_kl"] == pytest.approx(float((result.kl[row["start"] : row["end"]] + 1e-9).log().mean()))
    assert result.plot().data[0].type == "bar"
    matrix = lab.suppression_matrix(trace)
    assert isinstance(matrix, SuppressionMatrix) and matrix.to_frame().shape == (count, count)
    assert matrix.to_frame().isna().values[0, 0] and matrix.plot().data[0].type == "heatmap"
    assert matrix.matrix[0, 1] == pytest.approx(row["mean_log_kl"], rel=1e-5)
    result.save(tmp_path / "s.safetensors")
    again = SuppressionResult.load(tmp_path / "s.safetensors")
    torch.testing.assert_close(again.kl, result.kl)
    assert again.to_frame().equals(frame)
    matrix.save(tmp_path / "m.safetensors")
    torch.testing.assert_close(SuppressionMatrix.load(tmp_path / "m.safetensors").matrix, matrix.matrix,
                               equal_nan=True)


def test_suppression_with_thought_anchors_settings(lab, trace):
    result = suppress_sentence(lab, trace, 1, kl="thought_anchors")
    assert result.settings == {"temperature": 0.6, "top_p": 0.9999, "max_tokens": 100}
    ids = torch.cat([trace.prompt_ids, trace.token_ids])[None]
    start, end = result.ranges[1]
    n = ids.shape[1]
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    allowed[end:, start:end] = False
    with torch.no_grad():
        base = lab.model(ids).logits[0]
        masked = lab.model(ids, attention_mask=allowed[None, None]).logits[0]
    expected = [_ta_sparse_kl(base[i].double().numpy(), masked[i].double().numpy(), 0.6, 0.9999, 100)
                for i in range(n)]
    np.testing.assert_allclose(result.kl.numpy(), expected, rtol=1e-3, atol=1e-5)
    later = result.to_frame().loc[2]
    assert later["mean_log_kl"] == pytest.approx(float(np.mean(np.log(np.array(
        expected[later["start"] : later["end"]]) + 1e-9))), rel=1e-4)
    # explicit settings override the preset
    custom = suppress_sentence(lab, trace, 1, temperature=0.6, top_p=0.9999, max_tokens=100)
    torch.testing.assert_close(custom.kl, result.kl)
    exact = suppress_sentence(lab, trace, 1)
    assert exact.settings["temperature"] == 1.0 and not torch.allclose(exact.kl, result.kl)
    assert suppression_matrix(lab, trace, kl="thought_anchors").settings == result.settings


def test_steering_survives_source_of_the_steered_layer_and_plain_calls(lab, vector):
    """nnsight swaps a layer's body for an instrumented copy the first time its `.source` is asked
    for; inside a steering block that must not drop the shift (for this trace or later plain calls),
    and an exception inside the block must leave nothing behind."""
    text, scale = "What is 1 + 2?", 3.0
    ids = _enc(lab, text)
    fresh = mimo_lab.load(lab.name)  # a layer that was never source-instrumented
    vec = SteeringVector(vector.vector, 1, vector.norm)
    with torch.no_grad():
        plain = fresh.model(ids, output_hidden_states=True).hidden_states[2]
    shift = scale * vec.norm * vec.direction
    with fresh.steer(vec, scale):
        with fresh.nn.trace(ids):
            fresh.nn.model.layers[1].source  # noqa: B018
            out = fresh.nn.model.layers[1].output.save()
        with torch.no_grad():
            later = fresh.model(ids, output_hidden_states=True).hidden_states[2]
    out = out[0] if isinstance(out, tuple) else out
    torch.testing.assert_close(out, plain + shift, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(later, plain + shift, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="boom"), fresh.steer(vec, scale):
        raise RuntimeError("boom")
    with torch.no_grad():
        torch.testing.assert_close(fresh.model(ids, output_hidden_states=True).hidden_states[2], plain)


def test_a_traces_sentences_carry_the_positions_the_probes_use(lab, trace):
    """`trace.sentences.to_frame()`'s start/end are character offsets; start_position/end_position are the
    token positions, the same ones suppression and attention report, and their tokens spell the sentence."""
    frame = trace.sentences.to_frame()
    suppressed = suppress_sentence(lab, trace, 0).to_frame()
    groups = lab.attention(trace, 0, heads=[0]).by_sentence().groups_frame()
    groups = groups[groups["role"] == "segment"]
    assert frame["start_position"].tolist() == suppressed["start"].tolist() == groups["start"].tolist()
    assert frame["end_position"].tolist() == suppressed["end"].tolist() == groups["end"].tolist()
    for (_, row), sentence in zip(frame.iterrows(), trace.sentences, strict=True):
        spelled = "".join(trace.tokens.loc[row["start_position"]:row["end_position"] - 1, "text"])
        assert spelled.strip() == sentence.text.strip()
        assert trace.text[row["start"]:row["end"]] == sentence.text  # the characters, unchanged
