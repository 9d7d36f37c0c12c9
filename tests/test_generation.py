"""Generation: analytics equal an independent recomputation; batching, seeds, streaming, stopping."""

from __future__ import annotations

import math

import pytest
import torch

import mimo_lab
from mimo_lab.generation import TokenDecoder, resolve_sampling
from mimo_lab.models.cards import CARDS, NANO_CARD
from mimo_lab.trace import Trace

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
    assert len(lab.last_trace) <= 20  # stopped within a few steps (the thread may run on a little), not after 500
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


# ---------------------------------------------------------------------------- regenerate (issue 15, B5)

CHAT = [{"role": "system", "content": "You add numbers."}, {"role": "user", "content": "What is 2 + 2?"}]


@pytest.mark.parametrize("case", ["plain", "chat", "resampled", "system"])
def test_regenerate_reproduces_the_tokens(lab, tmp_path, case):
    if case == "plain":
        trace = lab.generate(PROMPTS[0], seed=21, max_new_tokens=16)
    elif case == "chat":
        trace = lab.generate(CHAT, seed=22, max_new_tokens=16)
        assert trace.prompt == CHAT  # kept as messages, not str(list)
        assert trace.prompt_text == lab.format_prompt(CHAT)
    elif case == "resampled":
        origin = lab.generate(PROMPTS[0], seed=23, max_new_tokens=16)
        trace = lab.resample(origin, origin.prompt_length + 6, seed=99, max_new_tokens=10)
        assert trace.meta["resampled_from"]["position"] == origin.prompt_length + 6
    else:
        trace = lab.generate(PROMPTS[0], seed=24, max_new_tokens=16, system="You are terse.")
        assert "You are terse." in trace.prompt_text
    reopened = Trace.load(trace.save(tmp_path / case))
    assert reopened.prompt == trace.prompt and type(reopened.prompt) is type(trace.prompt)
    again = lab.regenerate(reopened)
    assert again.token_ids.tolist() == trace.token_ids.tolist()
    assert again.text == trace.text and again.prompt == trace.prompt
    torch.testing.assert_close(again.logprobs, trace.logprobs)
    assert again.mtp is not None and torch.equal(again.mtp["pred_id"], trace.mtp["pred_id"])


def test_regenerate_a_stopped_stream_and_an_older_resampled_trace(lab):
    for token in lab.stream(PROMPTS[0], seed=31, max_new_tokens=200):
        if token.index == 6:
            break
    stopped = lab.last_trace
    assert stopped.finish_reason == "stopped" and 7 <= len(stopped) < 200
    assert lab.regenerate(stopped).token_ids.tolist() == stopped.token_ids.tolist()
    # a resampled trace saved before positions counted the prompt: its meta holds the generated-token index
    origin = lab.generate(PROMPTS[0], seed=33, max_new_tokens=12)
    assert len(origin) == 12
    resampled = lab.resample(origin, origin.prompt_length + 4, seed=7, max_new_tokens=6)
    old_style = Trace(**{**resampled.__dict__, "meta": {"resampled_from": {"position": 4, "seed": 33}}})
    assert lab.regenerate(old_style).token_ids.tolist() == resampled.token_ids.tolist()


def test_regenerate_refuses_what_it_cannot_reproduce(lab, make_trace):
    trace = lab.generate(PROMPTS[0], seed=1, max_new_tokens=4, mtp=False)
    with pytest.raises(TypeError, match="trace='str'"):
        lab.regenerate("str")
    unseeded = Trace(**{**trace.__dict__, "seed": None})
    with pytest.raises(ValueError, match="no seed recorded"):
        lab.regenerate(unseeded)
    broken = Trace(**{**trace.__dict__, "meta": {"resampled_from": {"seed": 3}}})
    with pytest.raises(ValueError, match="records no position"):
        lab.regenerate(broken)


# ---------------------------------------------------------------------------- one set of defaults (C15)


def test_cards_hold_a_default_decoding_and_a_recommended_sampling():
    assert NANO_CARD.default_decoding["greedy"] is True
    assert NANO_CARD.recommended_sampling == {"temperature": 0.6, "top_p": 0.95, "top_k": None,
                                              "max_new_tokens": NANO_CARD.max_new_tokens, "greedy": False}
    mimo = CARDS["XiaomiMiMo/MiMo-7B-RL"]
    assert mimo.default_decoding == mimo.recommended_sampling
    assert (mimo.recommended_sampling["temperature"], mimo.recommended_sampling["top_p"]) == (0.6, 0.95)
    assert mimo.sampling() == {k: v for k, v in mimo.recommended_sampling.items() if k != "greedy"}  # old name
    recommended = resolve_sampling(NANO_CARD, base="recommended")
    assert not recommended.greedy and recommended.source == "recommended" and recommended.temperature == 0.6


def test_every_trace_records_the_settings_it_used_and_their_source(nano):
    keys = {"temperature", "top_p", "top_k", "max_new_tokens", "greedy", "source"}
    greedy = nano.generate("What is 12 + 30?", max_new_tokens=12, seed=0)
    assert set(greedy.sampling) == keys
    assert greedy.sampling["greedy"] and greedy.sampling["source"] == "user"  # max_new_tokens was given
    default = nano.generate("What is 12 + 30?", seed=0)
    assert default.sampling == {**NANO_CARD.default_decoding, "source": "default"}
    list(nano.stream("What is 12 + 30?", seed=0))
    assert nano.last_trace.sampling == default.sampling
    assert torch.equal(nano.last_trace.token_ids, default.token_ids)
    several = nano.generate(["What is 12 + 30?"] * 2, seed=0, preset="recommended")
    assert [t.sampling for t in several] == [{**NANO_CARD.recommended_sampling, "source": "recommended"}] * 2
    assert not torch.allclose(several[0].entropies, several[0].model_entropies)  # sampled at T 0.6, not greedy
    # drawing another sample: the recommended sampling, not the greedy default (which would repeat the trace)
    resampled = nano.resample(greedy, greedy.prompt_length + 2, seed=5)
    assert resampled.sampling == {**NANO_CARD.recommended_sampling, "source": "recommended"}
    told = nano.resample(greedy, greedy.prompt_length + 2, seed=5, temperature=0.9, max_new_tokens=5)
    assert told.sampling["temperature"] == 0.9 and told.sampling["source"] == "user" and not told.sampling["greedy"]


# ---------------------------------------------------------------------------- stream (B4, D18)


def test_stream_checks_its_arguments_when_called(lab, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("generation started before the arguments were checked")

    monkeypatch.setattr(lab.model, "generate", refuse)
    for kwargs, error in [({"seed": 1.5}, TypeError), ({"seed": -5}, ValueError), ({"temperature": 0}, ValueError),
                          ({"max_new_tokens": 10**7}, ValueError), ({"system": 5}, TypeError)]:
        with pytest.raises(error, match=next(iter(kwargs))):
            lab.stream("hi", **kwargs)  # no next(): refused at the call
    with pytest.raises(ValueError, match="prompt=''"):
        lab.stream("")


def test_streamed_traces_carry_the_mtp_analytics_of_generate(lab):
    full = lab.generate(PROMPTS[0], seed=5, max_new_tokens=20)
    list(lab.stream(PROMPTS[0], seed=5, max_new_tokens=20))
    streamed = lab.last_trace
    assert streamed.mtp is not None and streamed.mtp.keys() == full.mtp.keys()
    for key in full.mtp:
        torch.testing.assert_close(streamed.mtp[key], full.mtp[key], equal_nan=True)
    assert streamed.mtp_accuracy() == pytest.approx(full.mtp_accuracy(), nan_ok=True)
