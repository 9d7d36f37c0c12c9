"""Generation: analytics equal an independent recomputation; batching, seeds, streaming, stopping."""

from __future__ import annotations

import math

import pytest
import torch

import mimo_lab
from mimo_lab.generation import TokenDecoder, resolve_sampling
from mimo_lab.models.cards import CARDS, NANO_CARD

PROMPTS = ["What is 128 + 367?", "hi", "Hello world, this is a much longer prompt than the others. Solve for x."]


@pytest.fixture(scope="module")
def lab(mimo_checkpoint):
    return mimo_lab.load(mimo_checkpoint)


def _recompute(lab, trace):
    """Model log-probs over prompt + generated tokens, from one plain forward pass."""
    ids = torch.cat([trace.prompt_ids, trace.token_ids])[None]
    with torch.no_grad():
        logits = lab.model(ids).logits[0, trace.prompt_ids.numel() - 1 : -1].float()
    return logits.log_softmax(-1)


def test_greedy_analytics_match_a_plain_forward(lab):
    trace = lab.generate(PROMPTS[0], greedy=True, max_new_tokens=24, mtp=False)
    assert len(trace) == 24 and trace.finish_reason == "length"
    logprobs = _recompute(lab, trace)
    assert torch.equal(logprobs.argmax(-1), trace.token_ids)  # greedy = argmax
    chosen = logprobs.gather(-1, trace.token_ids[:, None])[:, 0]
    torch.testing.assert_close(trace.logprobs, chosen, atol=1e-4, rtol=1e-4)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    torch.testing.assert_close(trace.model_entropies, entropy, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(trace.entropies, entropy, atol=1e-4, rtol=1e-4)
    top = logprobs.topk(5)
    assert torch.equal(trace.top_ids, top.indices)
    torch.testing.assert_close(trace.top_logprobs, top.values, atol=1e-4, rtol=1e-4)


def test_sampling_entropy_is_of_the_warped_distribution(lab):
    trace = lab.generate(PROMPTS[0], temperature=0.7, top_p=0.9, top_k=50, max_new_tokens=16, seed=3, mtp=False)
    logprobs = _recompute(lab, trace)
    for i in range(len(trace)):
        scaled = (logprobs[i] / 0.7).log_softmax(-1)
        keep = torch.zeros_like(scaled, dtype=torch.bool)
        keep[scaled.topk(50).indices] = True
        order = scaled.masked_fill(~keep, -math.inf).sort(descending=True)
        cumulative = order.values.softmax(-1).cumsum(-1)  # top-p sees top-k renormalised
        nucleus = order.indices[: int((cumulative < 0.9).sum()) + 1]  # smallest set reaching 0.9
        kept = scaled[nucleus].log_softmax(-1)
        expected = float(-(kept.exp() * kept).sum())
        assert trace.entropies[i].item() == pytest.approx(expected, abs=1e-3)
        assert int(trace.token_ids[i]) in set(nucleus.tolist())  # sampled from the nucleus


def test_text_and_spans(lab):
    trace = lab.generate(PROMPTS[0], seed=1, max_new_tokens=40, mtp=False)
    assert trace.text == lab.tokenizer.decode(trace.token_ids.tolist(), skip_special_tokens=False)
    assert "".join(trace.token_texts) == trace.text
    spans = trace.spans.tolist()
    assert spans[0][0] == 0 and spans[-1][1] == len(trace.text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    frame = trace.tokens
    assert list(frame.columns[:5]) == ["text", "id", "start", "end", "logprob"]
    assert len(frame) == len(trace)


def test_batch_equals_one_by_one_greedy(lab):
    batch = lab.generate(PROMPTS, greedy=True, max_new_tokens=20, mtp=False)
    for prompt, batched in zip(PROMPTS, batch, strict=True):
        alone = lab.generate(prompt, greedy=True, max_new_tokens=20, mtp=False)
        assert torch.equal(batched.token_ids, alone.token_ids), prompt
        assert torch.equal(batched.prompt_ids, alone.prompt_ids)  # padding stripped
        torch.testing.assert_close(batched.logprobs, alone.logprobs, atol=1e-4, rtol=1e-4)


def test_seeded_samples_do_not_depend_on_batch_mates(lab):
    alone = lab.generate(PROMPTS[2], seed=11, max_new_tokens=20, mtp=False)
    batch = lab.generate([PROMPTS[0], PROMPTS[2]], seed=10, max_new_tokens=20, mtp=False)
    assert batch[1].seed == 11
    assert torch.equal(batch[1].token_ids, alone.token_ids)
    again = lab.generate(PROMPTS[2], seed=11, max_new_tokens=20, mtp=False)
    assert torch.equal(again.token_ids, alone.token_ids)
    other = lab.generate(PROMPTS[2], seed=12, max_new_tokens=20, mtp=False)
    assert not torch.equal(other.token_ids, alone.token_ids)


def test_stream_yields_the_same_tokens_and_can_stop(lab):
    full = lab.generate(PROMPTS[0], seed=5, max_new_tokens=30, mtp=False)
    streamed = list(lab.stream(PROMPTS[0], seed=5, max_new_tokens=30))
    assert [t.id for t in streamed] == full.token_ids.tolist()
    assert "".join(t.text for t in streamed) == full.text
    assert [round(t.logprob, 4) for t in streamed] == [round(x, 4) for x in full.logprobs.tolist()]

    seen = []
    for token in lab.stream(PROMPTS[0], seed=5, max_new_tokens=500):
        seen.append(token)
        if len(seen) == 5:
            break
    assert lab.last_trace.finish_reason == "stopped"
    assert len(lab.last_trace) <= 7  # stopped within a step or two, not after 500 tokens
    after = lab.generate(PROMPTS[0], seed=5, max_new_tokens=30, mtp=False)  # usable at once
    assert torch.equal(after.token_ids, full.token_ids)


def test_mtp_analytics_align_with_mtp_predictions(lab):
    trace = lab.generate(PROMPTS[0], seed=2, max_new_tokens=12)
    assert trace.mtp is not None
    full = torch.cat([trace.prompt_ids, trace.token_ids])[None]
    pred = lab.model.mtp_predictions(full)
    start = trace.prompt_ids.numel()
    for i in range(len(trace) - 1):
        assert int(trace.mtp["pred_id"][i]) == int(pred["top_id"][0, start + i])  # guess made at token i
    for i in range(len(trace) - 2):
        assert int(trace.mtp["hit"][i]) == int(pred["top_id"][0, start + i] == trace.token_ids[i + 2])
    assert trace.mtp["hit"][-2:].tolist() == [-1, -1]


def test_bad_sampling_settings_are_refused(lab):
    for kwargs, error, message in [
            ({"temperature": 0}, ValueError, "temperature=0.0"),
            ({"temperature": -1.0}, ValueError, "temperature=-1.0"),
            ({"top_p": 1.5}, ValueError, "top_p=1.5"), ({"top_k": 0}, ValueError, "top_k=0"),
            ({"max_new_tokens": 0}, ValueError, "max_new_tokens=0"),
            ({"temprature": 0.5}, TypeError, "unknown sampling"), ({"greedy": "yes"}, TypeError, "greedy='yes'")]:
        with pytest.raises(error, match=message):
            lab.generate("hi", **kwargs)
    with pytest.raises(ValueError, match="seed=-1"):
        lab.generate("hi", seed=-1)
    with pytest.raises(ValueError, match="prompt=\\[\\] is empty"):
        lab.generate([])


def test_resolve_sampling_uses_the_card():
    s = resolve_sampling(NANO_CARD)
    assert s.greedy and s.max_new_tokens == NANO_CARD.max_new_tokens  # MiMo-nano's card: greedy by default
    sampled = resolve_sampling(NANO_CARD, temperature=0.7)
    assert not sampled.greedy and (sampled.temperature, sampled.top_p) == (0.7, 0.95)
    assert not resolve_sampling(NANO_CARD, greedy=False).greedy
    mimo = resolve_sampling(CARDS["XiaomiMiMo/MiMo-7B-RL"])
    assert (mimo.temperature, mimo.top_p, mimo.greedy) == (0.6, 0.95, False)
    assert resolve_sampling(NANO_CARD, greedy=True, temperature=0).greedy  # temperature ignored when greedy


def test_token_decoder_handles_split_utf8(lab):
    decoder = TokenDecoder(lab.tokenizer)
    assert decoder.byte_level
    ids = lab.tokenizer("naïve café — 数字", add_special_tokens=False)["input_ids"]
    text, spans = decoder.decode_with_spans(ids)
    assert text == "naïve café — 数字"
    assert "".join(text[s:e] for s, e in spans) == text
