"""Sampling with per-token analytics, recorded while generating, for traces, streams and batches.

`transformers.generate` runs the model (KV cache, left-padded batches, EOS, stopping). One
logits processor, `AnalyticsSampler`, sees the model's raw logits at every step: it records
log-prob, entropy and top-k alternatives, applies temperature / top-k / top-p with the
transformers warpers, samples with a generator seeded per row (so a sample's tokens depend on
its own seed, not on its batch mates), and hands the choice back to `generate` as a one-hot
score that greedy decoding then takes. Nothing vocabulary-sized is kept beyond one step.
"""

from __future__ import annotations

import codecs
import math
import random
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from mimo_lab.trace import Trace, tokenizer_fingerprint


@dataclass(frozen=True)
class Sampling:
    """Resolved sampling settings (the card's recommendation, overridden by the caller)."""

    temperature: float
    top_p: float
    top_k: int | None
    max_new_tokens: int
    greedy: bool

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_sampling(card, *, temperature=None, top_p=None, top_k=None, max_new_tokens=None, greedy=None,
                     context_length: int | None = None) -> Sampling:
    """Fill unset settings from the model card and check every value (before any model work).

    greedy=None follows the card: greedy for a card that says so (MiMo-nano) unless a temperature,
    top-p or top-k is given; sampling otherwise.
    """
    if greedy is None:
        greedy = bool(getattr(card, "greedy", False)) and temperature is None and top_p is None and top_k is None
    temperature = card.temperature if temperature is None else temperature
    top_p = card.top_p if top_p is None else top_p
    top_k = card.top_k if top_k is None else top_k
    max_new_tokens = card.max_new_tokens if max_new_tokens is None else max_new_tokens
    if not isinstance(greedy, bool):
        raise ValueError(f"greedy must be True or False, got {greedy!r}")
    if not greedy and (not isinstance(temperature, int | float) or not temperature > 0 or math.isinf(temperature)):
        raise ValueError(f"temperature {temperature!r} is not allowed: use a number > 0, or greedy=True")
    if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        raise ValueError(f"top_p {top_p!r} is not allowed: use a number in (0, 1]")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k {top_k!r} is not allowed: use an integer >= 1, or None for no limit")
    limit = context_length or 10**9
    if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= limit:
        raise ValueError(f"max_new_tokens {max_new_tokens!r} is not allowed: use an integer from 1 to {limit}")
    return Sampling(float(temperature), float(top_p), top_k, max_new_tokens, greedy)


class TokenDecoder:
    """Token ids to text with exact character spans (byte-level BPE aware, partial UTF-8 safe)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self.byte_level = decoder is not None and "ByteLevel" in repr(decoder)
        self._byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
        self._cache: dict[int, bytes] = {}
        self._added = {tok.content for tok in getattr(tokenizer, "added_tokens_decoder", {}).values()}

    def token_bytes(self, token_id: int) -> bytes:
        cached = self._cache.get(token_id)
        if cached is None:
            piece = self.tokenizer.convert_ids_to_tokens(int(token_id))
            if piece is None:
                cached = b""
            elif piece in self._added or not all(ch in self._byte_of for ch in piece):
                cached = piece.encode("utf-8")
            else:
                cached = bytes(self._byte_of[ch] for ch in piece)
            self._cache[token_id] = cached
        return cached

    def token_text(self, token_id: int) -> str:
        """The text of one token alone (a partial UTF-8 character shows as U+FFFD)."""
        if self.byte_level:
            return self.token_bytes(token_id).decode("utf-8", errors="replace")
        return self.tokenizer.decode([int(token_id)], skip_special_tokens=False)

    def decode_with_spans(self, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
        """(text, per-token character spans); joining the spans' text gives the text."""
        if not self.byte_level:
            return self._decode_by_prefix(ids)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        parts, spans, offset = [], [], 0
        for token_id in ids:
            piece = decoder.decode(self.token_bytes(token_id))
            parts.append(piece)
            spans.append((offset, offset + len(piece)))
            offset += len(piece)
        tail = decoder.decode(b"", final=True)
        if tail:
            parts.append(tail)
            spans[-1] = (spans[-1][0], offset + len(tail))
        return "".join(parts), spans

    def _decode_by_prefix(self, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
        # SentencePiece-style tokenizers: decode growing prefixes (quadratic; fine for traces
        # of a few thousand tokens, which is what non-byte-level models here produce).
        spans, previous = [], 0
        for i in range(len(ids)):
            length = len(self.tokenizer.decode(ids[: i + 1], skip_special_tokens=False))
            spans.append((previous, max(previous, length)))
            previous = max(previous, length)
        return self.tokenizer.decode(ids, skip_special_tokens=False), spans


class IncrementalText:
    """Turns a stream of token ids into text deltas (for streaming)."""

    def __init__(self, decoder: TokenDecoder):
        self.decoder = decoder
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        if self.decoder.byte_level:
            return self.utf8.decode(self.decoder.token_bytes(token_id))
        text = self.decoder.tokenizer.decode(self.ids, skip_special_tokens=False)
        delta, self.emitted = text[self.emitted:], len(text)
        return delta


@dataclass
class StreamToken:
    """One token as it is generated: its text delta and its analytics."""

    index: int
    id: int
    text: str
    logprob: float
    entropy: float
    alternatives: list[tuple[str, float]]


class AnalyticsSampler(LogitsProcessor):
    """Records per-token analytics from raw logits and picks the next token itself (see module doc).

    Sampling is by inverse CDF with uniforms drawn up front from each row's own generator, so
    the whole batch samples in one vectorised step and a row's tokens depend only on its seed.
    """

    def __init__(self, sampling: Sampling, seeds: list[int], top_alternatives: int = 5,
                 on_step: Callable[[torch.Tensor, dict], None] | None = None):
        self.sampling = sampling
        self.seeds = seeds
        self.k = top_alternatives
        self.on_step = on_step
        self.step = 0
        self.uniforms: torch.Tensor | None = None
        self.warpers = [] if sampling.greedy else [
            TemperatureLogitsWarper(sampling.temperature),
            *([TopKLogitsWarper(sampling.top_k)] if sampling.top_k else []),
            *([TopPLogitsWarper(sampling.top_p)] if sampling.top_p < 1 else []),
        ]
        self.records: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("token", "logprob", "entropy", "model_entropy", "top_ids", "top_logprobs")}

    def _draw(self, device: torch.device) -> torch.Tensor:
        rows = [torch.rand(self.sampling.max_new_tokens, generator=torch.Generator().manual_seed(s),
                           dtype=torch.float64) for s in self.seeds]
        return torch.stack(rows).clamp(min=1e-12).to(device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logprobs = scores.float().log_softmax(-1)
        model_entropy = torch.special.entr(logprobs.exp()).sum(-1)
        top = logprobs.topk(min(self.k, logprobs.shape[-1]), dim=-1)
        if self.sampling.greedy:  # the top-1 alternative is the greedy choice
            chosen, chosen_logprob, entropy = top.indices[:, 0], top.values[:, 0], model_entropy
        else:
            warped = scores.float()
            for warper in self.warpers:
                warped = warper(input_ids, warped)
            probs = warped.softmax(-1)
            entropy = torch.special.entr(probs).sum(-1)
            if self.uniforms is None:
                self.uniforms = self._draw(scores.device)
            cdf = probs.double().cumsum(-1)
            target = self.uniforms[:, self.step : self.step + 1] * cdf[:, -1:]
            chosen = torch.searchsorted(cdf, target).squeeze(-1).clamp(max=probs.shape[-1] - 1)
            chosen_logprob = logprobs.gather(-1, chosen[:, None])[:, 0]
        self.step += 1
        step = {"token": chosen, "logprob": chosen_logprob, "entropy": entropy,
                "model_entropy": model_entropy, "top_ids": top.indices, "top_logprobs": top.values}
        for key, value in step.items():
            self.records[key].append(value)
        if self.on_step is not None:
            self.on_step(chosen, step)
        if self.sampling.greedy:
            return scores  # generate's own argmax picks the same token
        one_hot = torch.full_like(scores, -math.inf)
        return one_hot.scatter_(-1, chosen[:, None], 0.0)

    def stacked(self) -> dict[str, torch.Tensor]:
        """Each record as [batch, steps(, k)] on the CPU."""
        return {k: torch.stack(v, dim=1).cpu() for k, v in self.records.items() if v}


class StopOnEvent(StoppingCriteria):
    """Ends generation for every row once `event` is set (Stop button, `break` out of a stream)."""

    def __init__(self, event: threading.Event):
        self.event = event
        self._running: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self.event.is_set():
            return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self._running is None:
            self._running = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return self._running


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a turn: generation config, tokenizer EOS, and ChatML's <|im_end|>."""
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, list) else [configured])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    im_end = tokenizer.get_vocab().get("<|im_end|>")
    if im_end is not None:
        ids.add(im_end)
    return sorted(ids)


def draw_seed() -> int:
    return random.SystemRandom().randrange(2**31)


@torch.no_grad()
def generate_traces(model, tokenizer, prompt_texts: list[str], prompts: list, *, sampling: Sampling,
                    seeds: list[int], model_name: str = "", revision: str | None = None, card=None,
                    with_mtp: bool = False, top_alternatives: int = 5,
                    on_token: Callable[[StreamToken], None] | None = None,
                    stop_event: threading.Event | None = None, add_special_tokens: bool = False,
                    min_new_tokens: int = 0, input_ids: list[list[int]] | None = None) -> list[Trace]:
    """Generate one Trace per prompt text (a batch, left-padded).

    min_new_tokens: EOS is impossible before this many tokens (for fixed-length benchmarks).
    input_ids: the token ids to continue from (one list per prompt) instead of tokenizing the texts.
    """
    if on_token is not None and len(prompt_texts) != 1:
        raise ValueError(f"streaming takes one prompt at a time, got {len(prompt_texts)}")
    device = model.device
    eos = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    if input_ids is None:
        previous_side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            batch = tokenizer(prompt_texts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
        finally:
            tokenizer.padding_side = previous_side
        input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    else:
        width = max(len(ids) for ids in input_ids)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in input_ids], device=device)
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + list(ids) for ids in input_ids], device=device)
    decoder = TokenDecoder(tokenizer)
    eos_set = set(eos)

    on_step = None
    if on_token is not None:
        incremental = IncrementalText(decoder)
        counter = {"index": 0, "done": False}

        def on_step(chosen: torch.Tensor, step: dict) -> None:
            token_id = int(chosen[0])
            if counter["done"] or token_id in eos_set:
                counter["done"] = True
                return
            alternatives = [(decoder.token_text(i), math.exp(lp)) for i, lp in
                            zip(step["top_ids"][0].tolist(), step["top_logprobs"][0].tolist(), strict=True)]
            on_token(StreamToken(counter["index"], token_id, incremental.push(token_id),
                                 float(step["logprob"][0]), float(step["entropy"][0]), alternatives))
            counter["index"] += 1

    sampler = AnalyticsSampler(sampling, seeds, top_alternatives, on_step)
    stop_event = stop_event or threading.Event()
    sequences = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=sampling.max_new_tokens,
        eos_token_id=eos, pad_token_id=pad_id, logits_processor=LogitsProcessorList([sampler]),
        stopping_criteria=StoppingCriteriaList([StopOnEvent(stop_event)]), use_cache=True,
        num_beams=1, temperature=None, top_p=None, top_k=None, min_new_tokens=min_new_tokens or None,
    )
    records = sampler.stacked()
    prompt_len = input_ids.shape[1]
    traces = []
    for row in range(len(prompt_texts)):
        generated = sequences[row, prompt_len:].tolist()
        n = next((i for i, t in enumerate(generated) if t in eos_set), None)
        if n is not None:
            finish = "stop"
        else:
            n = min(len(generated), records["token"].shape[1] if records else 0)
            finish = "stopped" if stop_event.is_set() and n < sampling.max_new_tokens else "length"
        ids = generated[:n]
        text, spans = decoder.decode_with_spans(ids)
        prompt_ids = input_ids[row][attention_mask[row].bool()].cpu()
        top_ids = records["top_ids"][row, :n] if records else torch.zeros(0, top_alternatives, dtype=torch.long)
        trace = Trace(
            prompt=prompts[row] if isinstance(prompts[row], str) else str(prompts[row]),
            text=text,
            token_ids=torch.tensor(ids, dtype=torch.long),
            token_texts=[text[s:e] for s, e in spans],
            spans=torch.tensor(spans, dtype=torch.long).reshape(-1, 2),
            logprobs=records["logprob"][row, :n] if records else torch.zeros(0),
            entropies=records["entropy"][row, :n] if records else torch.zeros(0),
            model_entropies=records["model_entropy"][row, :n] if records else torch.zeros(0),
            top_ids=top_ids,
            top_logprobs=records["top_logprobs"][row, :n] if records else torch.zeros(0, top_alternatives),
            top_texts=[[decoder.token_text(i) for i in row_ids] for row_ids in top_ids.tolist()],
            finish_reason=finish,
            prompt_text=prompt_texts[row],
            prompt_ids=prompt_ids,
            model_name=model_name,
            revision=revision,
            sampling=sampling.as_dict(),
            seed=seeds[row],
            think_start=getattr(card, "think_start", "<think>"),
            think_end=getattr(card, "think_end", "</think>"),
            tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        )
        if with_mtp and len(ids) >= 1:
            trace.mtp = mtp_analytics(model, prompt_ids, trace.token_ids)
        traces.append(trace)
    return traces


def generate_remote(lab, prompt_texts: list[str], prompts: list, *, sampling: Sampling, seeds: list[int],
                    top_alternatives: int = 5) -> list[Trace]:
    """Generation through nnsight (NDIF, or its local simulation), one prompt per request; the
    per-token analytics come from a second traced pass that returns only [tokens, k] tensors."""
    tokenizer = lab.tokenizer
    eos = eos_token_ids(lab.model, tokenizer)
    decoder = TokenDecoder(tokenizer)
    options = lab.trace_options
    traces = []
    for text, prompt, seed in zip(prompt_texts, prompts, seeds, strict=True):
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        kwargs = {"max_new_tokens": sampling.max_new_tokens, "do_sample": not sampling.greedy, "eos_token_id": eos,
                  "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]}
        if not sampling.greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or 0)
        torch.manual_seed(seed)  # reproducible under the local simulation; NDIF seeds its own workers
        with lab.nn.generate(ids, **kwargs, **options) as tracer:
            sequence = tracer.result.save()
        generated = sequence[0, ids.shape[1]:].tolist()
        n = next((i for i, t in enumerate(generated) if t in set(eos)), None)
        finish = "stop" if n is not None else "length"
        generated = generated[: len(generated) if n is None else n]
        full = torch.tensor(ids[0].tolist() + generated)[None]
        start, k = ids.shape[1], top_alternatives
        model_nn = lab.nn  # a local name: the traced block is shipped, and must not carry the Lab
        with model_nn.trace(full, **options):
            logprobs = model_nn.lm_head.output[0, start - 1 : -1].float().log_softmax(-1)
            top = logprobs.topk(k, dim=-1)
            top_values, top_indices = top.values.save(), top.indices.save()
            entropy = (-(logprobs.exp() * logprobs).sum(-1)).save()
            chosen = logprobs.gather(-1, full[0, start:, None].to(logprobs.device))[:, 0].save()
        text_out, spans = decoder.decode_with_spans(generated)
        traces.append(Trace(
            prompt=prompt if isinstance(prompt, str) else str(prompt), text=text_out,
            token_ids=torch.tensor(generated, dtype=torch.long), token_texts=[text_out[s:e] for s, e in spans],
            spans=torch.tensor(spans, dtype=torch.long).reshape(-1, 2), logprobs=chosen.cpu(),
            entropies=entropy.cpu(), model_entropies=entropy.cpu(), top_ids=top_indices.cpu(),
            top_logprobs=top_values.cpu(), top_texts=[[decoder.token_text(i) for i in row]
                                                      for row in top_indices.tolist()],
            finish_reason=finish, prompt_text=text, prompt_ids=ids[0], model_name=lab.name, revision=lab.revision,
            sampling=sampling.as_dict(), seed=seed, think_start=lab.card.think_start, think_end=lab.card.think_end,
            meta={"analytics": "second pass", "remote": lab.remote},
            tokenizer_fingerprint=tokenizer_fingerprint(tokenizer)))
    return traces


def resample_from(model, tokenizer, trace: Trace, position: int, *, sampling: Sampling, seed: int,
                  with_mtp: bool = False, stop_event: threading.Event | None = None,
                  on_token: Callable[[StreamToken], None] | None = None) -> Trace:
    """A new Trace that keeps `trace`'s first `position` tokens (and their analytics) and samples the rest."""
    if not isinstance(position, int) or not 0 <= position <= len(trace):
        raise ValueError(f"position {position!r} out of range: the trace has {len(trace)} tokens (0–{len(trace)})")
    prefix_ids = trace.token_ids[:position].tolist()
    tail = generate_traces(model, tokenizer, [trace.prompt_text], [trace.prompt], sampling=sampling, seeds=[seed],
                           model_name=trace.model_name, revision=trace.revision, with_mtp=False,
                           top_alternatives=trace.top_ids.shape[1] if trace.top_ids.dim() == 2 else 5,
                           input_ids=[trace.prompt_ids.tolist() + prefix_ids], stop_event=stop_event,
                           on_token=on_token)[0]
    ids = prefix_ids + tail.token_ids.tolist()
    text, spans = TokenDecoder(tokenizer).decode_with_spans(ids)
    joined = Trace(
        prompt=trace.prompt, text=text, token_ids=torch.tensor(ids, dtype=torch.long),
        token_texts=[text[s:e] for s, e in spans], spans=torch.tensor(spans, dtype=torch.long).reshape(-1, 2),
        logprobs=torch.cat([trace.logprobs[:position], tail.logprobs]),
        entropies=torch.cat([trace.entropies[:position], tail.entropies]),
        model_entropies=torch.cat([trace.model_entropies[:position], tail.model_entropies]),
        top_ids=torch.cat([trace.top_ids[:position], tail.top_ids]),
        top_logprobs=torch.cat([trace.top_logprobs[:position], tail.top_logprobs]),
        top_texts=trace.top_texts[:position] + tail.top_texts, finish_reason=tail.finish_reason,
        prompt_text=trace.prompt_text, prompt_ids=trace.prompt_ids, model_name=trace.model_name,
        revision=trace.revision, sampling=sampling.as_dict(), seed=seed, think_start=trace.think_start,
        think_end=trace.think_end,
        meta={**trace.meta, "resampled_from": {"position": position, "seed": trace.seed}},
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
    )
    if with_mtp and len(ids):
        joined.mtp = mtp_analytics(model, trace.prompt_ids, joined.token_ids)
    return joined


@torch.no_grad()
def mtp_analytics(model, prompt_ids: torch.Tensor, token_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The MTP head over a finished trace, one parallel pass: per generated token i, its guess
    for token i+2 (`pred_id`, `pred_prob`), whether it came true (`hit`: 1/0/-1 unknown) and the
    probability it gave the token actually generated at i+2 (`target_prob`)."""
    full = torch.cat([prompt_ids, token_ids]).to(model.device)[None]
    n, start = token_ids.numel(), prompt_ids.numel()
    out = {"pred_id": torch.full((n,), -1, dtype=torch.long), "pred_prob": torch.full((n,), math.nan),
           "hit": torch.full((n,), -1, dtype=torch.long), "target_prob": torch.full((n,), math.nan)}
    if full.shape[1] < 2:
        return out
    pred = {k: v[0].cpu() for k, v in model.mtp_predictions(full).items()}
    slots = pred["top_id"].numel()  # = len(full) - 1; slot a predicts token a+2
    positions = torch.arange(start, start + n)
    valid = positions < slots
    out["pred_id"][valid] = pred["top_id"][positions[valid]]
    out["pred_prob"][valid] = pred["top_prob"][positions[valid]]
    out["target_prob"][valid] = pred["target_prob"][positions[valid]].float()
    has_target = torch.arange(n) + 2 < n
    out["hit"][has_target] = (out["pred_id"][has_target] == token_ids[2:]).long()
    return out
