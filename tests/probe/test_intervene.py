"""Interventions: patching checked against plain-torch patching, steering, attention suppression."""

from __future__ import annotations

import pytest
import torch

import mimo_lab
from mimo_lab.probe.intervene import (
    SteeringVector,
    activation_patching,
    steering_vector,
    suppress_sentence,
    suppression_matrix,
)

CLEAN, CORRUPTED, TARGET = "What is 17 + 28? The answer is", "What is 17 + 29? The answer is", " 45"


@pytest.fixture(scope="module")
def lab(mimo_checkpoint):
    return mimo_lab.load(mimo_checkpoint)


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


def test_patching_matches_a_plain_torch_patch(lab):
    result = activation_patching(lab, CLEAN, CORRUPTED, TARGET, layers=[0, 2])
    enc = lambda t: lab.tokenizer(t, add_special_tokens=False, return_tensors="pt")["input_ids"]  # noqa: E731
    clean_ids, corrupt_ids = enc(CLEAN + TARGET), enc(CORRUPTED + TARGET)
    target_ids = enc(TARGET)[0]
    prefix = clean_ids.shape[1] - target_ids.numel()
    for li, layer in enumerate([0, 2]):
        for pos in (0, prefix // 2, prefix - 1):
            expected = _torch_patch(lab, layer, pos, clean_ids, corrupt_ids, prefix, target_ids)
            assert float(result.patched_logprob[li, pos]) == pytest.approx(expected, abs=1e-4)
    differing = next(i for i in range(prefix) if clean_ids[0, i] != corrupt_ids[0, i])
    assert abs(float(result.effect[0, differing])) > 0.05  # the changed token matters
    # positions that are identical and come before the change cannot matter
    assert torch.allclose(result.effect[:, :differing], torch.zeros(2, differing), atol=1e-4)
    assert result.plot().data[0].type == "heatmap" and len(result.to_frame()) == 2 * prefix


def test_patching_refuses_different_lengths(lab):
    with pytest.raises(ValueError, match="same number of tokens"):
        activation_patching(lab, CLEAN, "What is 17 + 2889? The answer is", TARGET)


def test_steering_vector_changes_generation_and_is_removed(lab, tmp_path):
    vector = steering_vector(lab, ["Wait, let me check.", "Hmm, wait."], ["So the sum is 45.", "Tens: 1 + 2."], 1)
    pos = lab.capture("Wait, let me check.", sites="resid", layers=[1]).get("resid", 1).mean(0)
    pos2 = lab.capture("Hmm, wait.", sites="resid", layers=[1]).get("resid", 1)
    n1 = len(lab.capture("Wait, let me check.", sites="resid", layers=[1]).token_texts)
    assert vector.vector.shape == (lab.model.config.hidden_size,)
    expected_pos = (pos * n1 + pos2.sum(0)) / (n1 + pos2.shape[0])
    neg = torch.cat([lab.capture(t, sites="resid", layers=[1]).get("resid", 1)
                     for t in ["So the sum is 45.", "Tens: 1 + 2."]]).mean(0)
    torch.testing.assert_close(vector.vector, expected_pos - neg, atol=1e-5, rtol=1e-4)
    plain = lab.generate("What is 1 + 2?", greedy=True, max_new_tokens=12, mtp=False)
    with vector.apply(lab, scale=8.0):
        steered = lab.generate("What is 1 + 2?", greedy=True, max_new_tokens=12, mtp=False)
    after = lab.generate("What is 1 + 2?", greedy=True, max_new_tokens=12, mtp=False)
    assert not torch.equal(steered.token_ids, plain.token_ids)
    assert torch.equal(after.token_ids, plain.token_ids)  # the hook is gone
    vector.save(tmp_path / "v.safetensors")
    again = SteeringVector.load(tmp_path / "v.safetensors")
    assert again.layer == 1 and torch.equal(again.vector, vector.vector)


def test_suppression_only_affects_later_tokens(lab, make_trace):
    trace = make_trace(lab.tokenizer, "<think>\nI add 17 and 28. Ones: 7 + 8 = 15. Wait, check. So 45.\n</think>\n45")
    trace.prompt_ids = torch.tensor(lab.tokenizer("What is 17 + 28?", add_special_tokens=False)["input_ids"])
    count = len(trace.sentences)
    assert count >= 2
    result = suppress_sentence(lab, trace, 0)
    offset = trace.prompt_ids.numel()
    _, end = result.ranges[0]
    assert torch.all(result.kl[: end - offset] < 1e-6)  # before the sentence ends nothing changes
    assert float(result.kl[end - offset :].max()) > 1e-4
    frame = result.to_frame()
    assert frame["after_suppressed"].sum() == count - 1
    assert result.plot().data[0].type == "bar"
    matrix = suppression_matrix(lab, trace)
    assert matrix.shape == (count, count) and matrix.isna().values[0, 0]
    with pytest.raises(ValueError, match="out of range"):
        suppress_sentence(lab, trace, count)
