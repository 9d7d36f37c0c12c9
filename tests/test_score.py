"""lab.score: a teacher-forced pass gives a text generate's analytics (checked against generate itself and
against a plain forward pass)."""

from __future__ import annotations

import math

import pytest
import torch

import mimo_lab
from mimo_lab.trace import Trace

PROMPT = "What is 17 + 28?"


@pytest.fixture(scope="module")
def sampled(nano):
    return nano.generate(PROMPT, temperature=0.6, top_p=0.95, seed=3)


def _same_analytics(a: Trace, b: Trace, tol: float = 1e-4) -> None:
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.prompt_ids, b.prompt_ids) and a.text == b.text
    for name in ("logprobs", "entropies", "model_entropies", "top_logprobs"):
        assert torch.allclose(getattr(a, name), getattr(b, name), atol=tol), name
    assert torch.equal(a.top_ids, b.top_ids) and a.top_texts == b.top_texts


def test_score_of_a_self_generated_trace_matches_generate(nano, sampled):
    scored = nano.score(sampled, temperature=0.6, top_p=0.95)
    _same_analytics(sampled, scored)
    assert sampled.entropies.max() > 0.01  # the comparison covers real uncertainty, not only certain tokens
    for key in ("pred_id", "hit"):
        assert torch.equal(scored.mtp[key], sampled.mtp[key])
    assert torch.allclose(scored.mtp["pred_prob"], sampled.mtp["pred_prob"], atol=1e-5, equal_nan=True)
    assert scored.meta["scored"]["tokens"] == "the trace's own token ids"
    assert scored.meta["scored"]["source_seed"] == 3 and scored.seed is None
    assert scored.finish_reason == sampled.finish_reason and scored.sampling["temperature"] == 0.6


def test_greedy_scoring_entropy_is_the_models(nano):
    greedy = nano.generate(PROMPT, greedy=True)
    scored = nano.score(greedy, greedy=True)
    _same_analytics(greedy, scored)
    assert torch.equal(scored.entropies, scored.model_entropies)


def test_chunked_pass_equals_one_pass(nano, sampled):
    whole = nano.score(sampled, chunk_size=4096)
    for size in (1, 7, 64):
        chunked = nano.score(sampled, chunk_size=size)
        assert torch.allclose(whole.logprobs, chunked.logprobs, atol=1e-5)
        assert torch.allclose(whole.entropies, chunked.entropies, atol=1e-5)
        assert torch.equal(whole.top_ids, chunked.top_ids)


def test_prompt_and_completion_against_a_plain_forward_pass(nano, sampled):
    scored = nano.score(PROMPT, sampled.text)
    # the default settings are the card's recommended sampling, recorded as such
    recommended = nano.card.recommended_sampling
    assert scored.sampling["source"] == "recommended"
    assert (scored.sampling["temperature"], scored.sampling["top_p"]) == (recommended["temperature"],
                                                                        recommended["top_p"])
    full = torch.cat([scored.prompt_ids, scored.token_ids])[None]
    with torch.no_grad():
        logits = nano.model(input_ids=full).logits[0].float()
    start = scored.prompt_length
    logprobs = logits.log_softmax(-1)[start - 1:-1]
    manual = logprobs.gather(-1, scored.token_ids[:, None])[:, 0]
    assert torch.allclose(scored.logprobs, manual, atol=1e-4)
    # entropy at T and top-p by hand: temper, keep the smallest set of mass >= top_p, renormalise
    t, p = recommended["temperature"], recommended["top_p"]
    probs = (logits[start - 1:-1] / t).softmax(-1)
    sorted_p, order = probs.sort(-1, descending=True)
    keep = (sorted_p.cumsum(-1) - sorted_p) < p
    kept = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
    kept = kept / kept.sum(-1, keepdim=True)
    manual_entropy = torch.special.entr(kept).sum(-1)
    assert torch.allclose(scored.entropies, manual_entropy, atol=1e-4)
    end = logits.log_softmax(-1)[-1, nano.tokenizer.convert_tokens_to_ids("<|im_end|>")].item()
    assert math.isclose(scored.meta["scored"]["end_logprob"], end, abs_tol=1e-4)


def test_a_foreign_trace_is_read_again_from_its_text(nano, sampled, mimo_checkpoint):
    tiny = mimo_lab.load(str(mimo_checkpoint))
    foreign = tiny.score(sampled)  # nano's trace read by another model with another tokenizer
    assert foreign.meta["scored"]["tokens"] == "tokenized here"
    assert foreign.meta["scored"]["source_model"] == "MiMo-nano"
    assert foreign.text == sampled.text and foreign.tokenizer_fingerprint != sampled.tokenizer_fingerprint
    assert foreign.model_name == tiny.name and len(foreign) != len(sampled)
    # and its result is a Trace every probe takes
    lens = tiny.logit_lens(foreign, layers=[0])
    assert lens.to_frame()["position"].max() == foreign.prompt_length + len(foreign) - 1


def test_probes_views_and_saving_accept_a_scored_trace(nano, sampled, tmp_path):
    scored = nano.score(PROMPT, sampled.text)
    assert len(scored.forking_tokens()) >= 1
    captured = nano.capture(scored, sites=("resid",), layers=[1])
    assert captured.get("resid", 1).shape[0] == scored.prompt_length + len(scored)
    again = Trace.load(scored.save(tmp_path / "scored"))
    _same_analytics(scored, again, tol=0)
    assert again.meta["scored"]["tokens"] == "tokenized here"


def test_a_list_scores_each(nano, sampled):
    out = nano.score([sampled, (PROMPT, sampled.text)])
    assert isinstance(out, list) and len(out) == 2
    assert torch.allclose(out[0].logprobs, out[1].logprobs, atol=1e-5)


@pytest.mark.parametrize("call, message", [
    (lambda lab, t: lab.score(PROMPT), "completion=None"),
    (lambda lab, t: lab.score(PROMPT, ""), "completion"),
    (lambda lab, t: lab.score(t, "more text"), "a Trace brings its own text"),
    (lambda lab, t: lab.score([]), "is empty"),
    (lambda lab, t: lab.score([t, 5]), r"prompt_or_traces\[1\]"),
    (lambda lab, t: lab.score(t, chunk_size=0), "chunk_size"),
    (lambda lab, t: lab.score(t, temperature=-1), "temperature"),
    (lambda lab, t: lab.score(t, beams=2), "unknown sampling"),
    (lambda lab, t: lab.score(PROMPT, "x" * 40000), "reads at most"),
])
def test_bad_input_is_refused_before_any_work(nano, sampled, call, message, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model ran before the input was checked")

    monkeypatch.setattr(nano.model, "forward", refuse)
    with pytest.raises((ValueError, TypeError), match=message):
        call(nano, sampled)
