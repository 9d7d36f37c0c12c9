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
import inspect
import math
import queue
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace

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

from mimo_lab.checks import MAX_SEED, check_bool, check_choice, check_float, check_int, check_seed, check_str, show
from mimo_lab.trace import Trace, tokenizer_fingerprint

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "max_new_tokens", "greedy")
SOURCES = ("default", "recommended", "user")


@dataclass(frozen=True)
class Sampling:
    """Resolved sampling settings, and where they came from (`source`): the card's "default" decoding,
    its "recommended" sampling, or "user" when the caller set any of them."""

    temperature: float
    top_p: float
    top_k: int | None
    max_new_tokens: int
    greedy: bool
    source: str = "user"

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_sampling(card, *, temperature=None, top_p=None, top_k=None, max_new_tokens=None, greedy=None,
                     context_length: int | None = None, base: str = "default") -> Sampling:
    """Fill unset settings from the card and check every value (before any model work).

    base: "default" fills from `card.default_decoding` (generate, stream, Playground), "recommended" from
    `card.recommended_sampling` (anything that draws several samples). greedy=None follows the base,
    except that a temperature, top-p or top-k given to a greedy base means sampling.
    """
    check_choice("base", base, ("default", "recommended"))
    given = {k: v for k, v in {"temperature": temperature, "top_p": top_p, "top_k": top_k,
                               "max_new_tokens": max_new_tokens, "greedy": greedy}.items() if v is not None}
    settings = {**(card.default_decoding if base == "default" else card.recommended_sampling)}
    greedy = check_bool("greedy", greedy, none_ok=True)
    if greedy is None:
        greedy = bool(settings["greedy"]) and temperature is None and top_p is None and top_k is None
    # greedy decoding reads no temperature, so 0 (a common way to say "greedy") is accepted with it
    temperature = check_float("temperature", settings["temperature"] if temperature is None else temperature,
                              **({"minimum": 0.0} if greedy else {"above": 0.0}))
    top_p = check_float("top_p", settings["top_p"] if top_p is None else top_p, above=0.0, maximum=1.0)
    top_k = check_int("top_k", settings["top_k"] if top_k is None else top_k, minimum=1, none_ok=True)
    max_new_tokens = check_int("max_new_tokens", settings["max_new_tokens"] if max_new_tokens is None
                               else max_new_tokens, minimum=1, maximum=context_length or None)
    return Sampling(temperature, top_p, top_k, max_new_tokens, greedy, "user" if given else base)


def sampling_from_record(card, record: dict, *, context_length: int | None = None) -> Sampling:
    """The Sampling a Trace recorded (`trace.sampling`), checked; its source kept."""
    missing = [k for k in SAMPLING_KEYS if k not in record]
    if missing:
        raise ValueError(f"the trace's sampling record lacks {', '.join(missing)}: it cannot be regenerated exactly")
    resolved = resolve_sampling(card, context_length=context_length, **{k: record[k] for k in SAMPLING_KEYS})
    source = record.get("source", "user")
    return replace(resolved, source=source if source in SOURCES else "user")


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


def sampling_warpers(sampling: Sampling) -> list:
    """The logits warpers a sampled token is drawn through, in order (temperature, top-k, top-p); none for greedy."""
    if sampling.greedy:
        return []
    return [TemperatureLogitsWarper(sampling.temperature),
            *([TopKLogitsWarper(sampling.top_k)] if sampling.top_k else []),
            *([TopPLogitsWarper(sampling.top_p)] if sampling.top_p < 1 else [])]


def cache_argument(model, cache) -> dict:
    """The keyword that hands `model.forward` a KV cache: transformers renamed it (`past_key_values` up to
    5.19, `cache` from 5.20)."""
    return {"cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values": cache}


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
        self.warpers = sampling_warpers(sampling)
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
            prompt=_copy_prompt(prompts[row]),
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
            prompt=_copy_prompt(prompt), text=text_out,
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


def check_position(trace: Trace, position, name: str = "position") -> int:
    """A position to resample from: one of the trace's generated tokens, or its end (continue it)."""
    first, end = trace.prompt_length, trace.prompt_length + len(trace)
    position = check_int(name, position)
    if position < first:
        raise ValueError(f"{name}={position} is inside the prompt (positions 0 to {first - 1}): a generated "
                         f"token's position, {first} to {end}, is accepted ({end}: continue after the last token)")
    if position > end:
        raise ValueError(f"{name}={position} is past the end of the trace: its generated tokens are at positions "
                         f"{first} to {end - 1}; {first} to {end} is accepted")
    return position


def resample_from(model, tokenizer, trace: Trace, position: int, *, sampling: Sampling, seed: int,
                  with_mtp: bool = False, stop_event: threading.Event | None = None,
                  on_token: Callable[[StreamToken], None] | None = None, model_name: str | None = None,
                  revision: str | None = None, meta: dict | None = None) -> Trace:
    """A new Trace that keeps `trace`'s tokens before `position` (their analytics too) and samples from there.

    position: absolute (the prompt's tokens count), prompt_length .. prompt_length + len(trace).
    meta: the new trace's meta (default: the old one's, with `resampled_from` = this position and origin seed).
    """
    position = check_position(trace, position)
    keep = position - trace.prompt_length  # generated tokens kept
    prefix_ids = trace.token_ids[:keep].tolist()
    name = trace.model_name if model_name is None else model_name
    tail = generate_traces(model, tokenizer, [trace.prompt_text], [trace.prompt], sampling=sampling, seeds=[seed],
                           model_name=name, revision=revision, with_mtp=False,
                           top_alternatives=trace.top_ids.shape[1] if trace.top_ids.dim() == 2 else 5,
                           input_ids=[trace.prompt_ids.tolist() + prefix_ids], stop_event=stop_event,
                           on_token=on_token)[0]
    ids = prefix_ids + tail.token_ids.tolist()
    text, spans = TokenDecoder(tokenizer).decode_with_spans(ids)
    if meta is None:
        meta = {**trace.meta, "resampled_from": {"position": position, "prompt_length": trace.prompt_length,
                                                 "seed": trace.seed, "sampling": dict(trace.sampling)}}
    joined = Trace(
        prompt=_copy_prompt(trace.prompt), text=text, token_ids=torch.tensor(ids, dtype=torch.long),
        token_texts=[text[s:e] for s, e in spans], spans=torch.tensor(spans, dtype=torch.long).reshape(-1, 2),
        logprobs=torch.cat([trace.logprobs[:keep], tail.logprobs]),
        entropies=torch.cat([trace.entropies[:keep], tail.entropies]),
        model_entropies=torch.cat([trace.model_entropies[:keep], tail.model_entropies]),
        top_ids=torch.cat([trace.top_ids[:keep], tail.top_ids]),
        top_logprobs=torch.cat([trace.top_logprobs[:keep], tail.top_logprobs]),
        top_texts=trace.top_texts[:keep] + tail.top_texts, finish_reason=tail.finish_reason,
        prompt_text=trace.prompt_text, prompt_ids=trace.prompt_ids, model_name=name,
        revision=trace.revision if revision is None else revision, sampling=sampling.as_dict(), seed=seed,
        think_start=trace.think_start, think_end=trace.think_end, meta=meta,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
    )
    if with_mtp and len(ids):
        joined.mtp = mtp_analytics(model, trace.prompt_ids, joined.token_ids)
    return joined


def _copy_prompt(prompt):
    """A trace keeps its own copy of chat messages (a caller editing its list later changes nothing)."""
    return [dict(m) for m in prompt] if isinstance(prompt, list | tuple) else prompt


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


# ----------------------------------------------------------------------------- what Lab's methods call
# Lab.generate / stream / regenerate / resample / format_prompt are thin delegates to these.


def check_prompt(prompt, name: str = "prompt") -> str | list[dict]:
    """A non-empty string, or a non-empty list of chat messages ({'role': str, 'content': str})."""
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError(f"{name}='' is empty: a non-empty string or a list of chat messages is accepted")
        return prompt
    if not isinstance(prompt, list | tuple) or not prompt or not all(isinstance(m, dict) for m in prompt):
        raise TypeError(f"{name}={show(prompt)} ({type(prompt).__name__}) is not accepted: a non-empty string or "
                        "a list of chat messages ({'role': ..., 'content': ...}) is")
    for i, message in enumerate(prompt):
        for key in ("role", "content"):
            if key not in message:
                raise ValueError(f"{name}[{i}]={show(message)} has no {key!r}: every chat message needs a 'role' "
                                 "and a 'content' string")
            if not isinstance(message[key], str):
                raise TypeError(f"{name}[{i}][{key!r}]={show(message[key])} ({type(message[key]).__name__}) is "
                                "not accepted: a string is")
    if not any(m["content"] for m in prompt):
        raise ValueError(f"{name}: every message's 'content' is empty: at least one non-empty message is accepted")
    return _copy_prompt(list(prompt))



def check_trace(trace, name: str = "trace") -> Trace:
    if not isinstance(trace, Trace):
        raise TypeError(f"{name}={show(trace)} ({type(trace).__name__}) is not accepted: a Trace (from "
                        "Lab.generate or Trace.load) is")
    return trace


def check_lab(lab, name: str = "lab"):
    """A Lab (from mimo_lab.load); TypeError naming the argument otherwise."""
    from mimo_lab.lab import Lab  # local: lab imports generation

    if not isinstance(lab, Lab):
        raise TypeError(f"{name}={show(lab)} ({type(lab).__name__}) is not accepted: a Lab (from mimo_lab.load) is")
    return lab


def format_prompt(lab, prompt, system: str | None = None) -> str:
    """The text the model sees: the chat template applied, the assistant turn opened."""
    prompt = check_prompt(prompt)
    system = check_str("system", system, empty_ok=True, none_ok=True)
    if isinstance(prompt, str):
        system = lab.card.system_prompt if system is None else system
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": prompt}]
    else:
        if system is not None:
            raise ValueError(f"system={show(system)} is for a string prompt: with chat messages, put a "
                             "{'role': 'system', ...} message first in the list")
        messages = prompt
    if lab.tokenizer.chat_template:
        return lab.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if lab.card.chat_format == "chatml":
        body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return body + "<|im_start|>assistant\n"
    return "\n\n".join(m["content"] for m in messages)


def check_sampling(lab, sampling: dict, base: str = "default") -> Sampling:
    """Sampling keyword arguments checked and completed from the lab's card (see `resolve_sampling`)."""
    unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
    if unknown:
        raise TypeError(f"unknown sampling setting(s) {unknown}: {', '.join(SAMPLING_KEYS)} are accepted")
    return resolve_sampling(lab.card, context_length=lab.card.context_length, base=base, **sampling)


def _with_mtp(lab, mtp) -> bool:
    mtp = check_bool("mtp", mtp, none_ok=True)
    return lab.has_mtp if mtp is None else bool(mtp and lab.has_mtp)


def _add_special_tokens(lab) -> bool:
    return not lab.tokenizer.chat_template


def generate(lab, prompt_or_prompts, *, seed=None, mtp: bool | None = None, batch_size: int = 16,
             system: str | None = None, preset: str = "default", **sampling) -> Trace | list[Trace]:
    """See `Lab.generate`."""
    single = isinstance(prompt_or_prompts, str) or (
        isinstance(prompt_or_prompts, list | tuple) and bool(prompt_or_prompts)
        and isinstance(prompt_or_prompts[0], dict))
    if single:
        prompts = [check_prompt(prompt_or_prompts)]
    elif isinstance(prompt_or_prompts, list | tuple):
        if not prompt_or_prompts:
            raise ValueError("prompt=[] is empty: a string, a list of chat messages, or a non-empty list of them "
                             "is accepted")
        prompts = [check_prompt(p, f"prompt[{i}]") for i, p in enumerate(prompt_or_prompts)]
    else:
        prompts = [check_prompt(prompt_or_prompts)]  # raises the TypeError naming `prompt`
    if isinstance(seed, list | tuple):
        if len(seed) != len(prompts):
            raise ValueError(f"seed has {len(seed)} seeds for {len(prompts)} prompts: one per prompt is accepted")
        seeds = [check_seed(f"seed[{i}]", s, none_ok=False) for i, s in enumerate(seed)]
    else:
        base = check_seed("seed", seed)
        if base is not None and base + len(prompts) - 1 > MAX_SEED:
            raise ValueError(f"seed={base} is out of range for {len(prompts)} prompts (prompt i uses seed + i): "
                             f"an integer from 0 to {MAX_SEED - len(prompts) + 1} is accepted")
        seeds = None if base is None else [base + i for i in range(len(prompts))]
    batch_size = check_int("batch_size", batch_size, minimum=1)
    with_mtp = _with_mtp(lab, mtp)
    settings = check_sampling(lab, sampling, base=check_choice("preset", preset, ("default", "recommended")))
    texts = [format_prompt(lab, p, system) for p in prompts]
    if seeds is None:
        base = draw_seed()
        seeds = [base + i for i in range(len(prompts))]
    with lab._lock:
        if lab.remote:
            traces = generate_remote(lab, texts, prompts, sampling=settings, seeds=seeds)
        else:
            lab._need_weights("generation")
            traces = []
            for start in range(0, len(prompts), batch_size):
                part = slice(start, start + batch_size)
                traces += generate_traces(
                    lab.model, lab.tokenizer, texts[part], prompts[part], sampling=settings, seeds=seeds[part],
                    model_name=lab.name, revision=lab.revision, card=lab.card, with_mtp=with_mtp,
                    add_special_tokens=_add_special_tokens(lab))
    return traces[0] if single else traces


def stream(lab, prompt, *, seed=None, system: str | None = None, mtp: bool | None = None,
           **sampling) -> Iterator[StreamToken]:
    """See `Lab.stream`. Every argument is checked here, before the first token is asked for."""
    prompt = check_prompt(prompt)
    seed = check_seed("seed", seed)
    with_mtp = _with_mtp(lab, mtp)
    settings = check_sampling(lab, sampling)
    text = format_prompt(lab, prompt, system)
    lab._need_weights("streaming")
    lab.last_trace = None
    return _stream_tokens(lab, text, prompt, settings, draw_seed() if seed is None else seed, with_mtp)


def _stream_tokens(lab, text: str, prompt, settings: Sampling, seed: int, with_mtp: bool) -> Iterator[StreamToken]:
    tokens: queue.Queue = queue.Queue()
    stop = threading.Event()
    done = object()
    result: dict = {}

    def worker():
        try:
            with lab._lock:
                # the MTP pass runs once over the finished trace, after the last token was streamed
                result["trace"] = generate_traces(
                    lab.model, lab.tokenizer, [text], [prompt], sampling=settings, seeds=[seed],
                    model_name=lab.name, revision=lab.revision, card=lab.card, with_mtp=with_mtp,
                    on_token=tokens.put, stop_event=stop, add_special_tokens=_add_special_tokens(lab))[0]
        except BaseException as err:  # noqa: BLE001 - re-raised in the consumer
            result["error"] = err
        finally:
            tokens.put(done)

    thread = threading.Thread(target=worker, name="mimo-lab-stream", daemon=True)
    thread.start()
    try:
        while (item := tokens.get()) is not done:
            yield item
    finally:
        stop.set()
        thread.join()
        lab.last_trace = result.get("trace")
    if "error" in result:
        raise result["error"]


def regenerate(lab, trace: Trace, **overrides) -> Trace:
    """See `Lab.regenerate`: the same prompt tokens, sampling and seed; a resampled trace is resampled again
    from its recorded position (its kept tokens are in the trace itself)."""
    check_trace(trace)
    if trace.model_name and trace.model_name != lab.name:
        raise ValueError(f"the trace came from {trace.model_name!r}, this Lab holds {lab.name!r}: "
                         f"load that model to regenerate it")
    if trace.seed is None:
        raise ValueError("the trace has no seed recorded: it cannot be regenerated exactly")
    unknown = sorted(set(overrides) - set(SAMPLING_KEYS))
    if unknown:
        raise TypeError(f"unknown sampling setting(s) {unknown}: {', '.join(SAMPLING_KEYS)} are accepted")
    if overrides:
        record = {k: trace.sampling.get(k) for k in SAMPLING_KEYS}
        settings = check_sampling(lab, {**{k: v for k, v in record.items() if v is not None}, **overrides})
    else:
        settings = sampling_from_record(lab.card, trace.sampling, context_length=lab.card.context_length)
    origin = trace.meta.get("resampled_from")
    if origin is not None and not (isinstance(origin, dict) and isinstance(origin.get("position"), int)):
        raise ValueError(f"the trace's meta['resampled_from']={show(origin)} records no position: the resample "
                         "it came from cannot be re-run")
    if trace.prompt_ids.numel():
        prompt_ids = trace.prompt_ids
    elif trace.prompt_text:
        prompt_ids = torch.tensor(lab.tokenizer(trace.prompt_text, add_special_tokens=_add_special_tokens(lab))
                                  ["input_ids"], dtype=torch.long)
    else:
        raise ValueError("the trace records neither its prompt's token ids nor its prompt text: it cannot be "
                         "regenerated")
    start = None  # the position the resample began at
    if origin is not None:
        # traces saved before positions counted the prompt recorded a generated-token index (and no prompt_length)
        start = origin["position"] + (0 if "prompt_length" in origin else int(prompt_ids.numel()))
    if trace.meta.get("analytics") == "second pass" and not settings.greedy:
        raise ValueError("the trace was sampled by remote execution (transformers' own sampler, seeded on the "
                         "server): only its greedy traces can be regenerated exactly")
    if trace.finish_reason == "stopped" and "max_new_tokens" not in overrides:
        # stopped by hand after these tokens: the same seed gives the same tokens up to there (each row's
        # uniforms are drawn up front, and a shorter draw is a prefix of a longer one)
        kept = 0 if start is None else start - int(prompt_ids.numel())
        settings = replace(settings, max_new_tokens=max(1, len(trace) - kept))
    lab._need_weights("regenerate")
    with_mtp = trace.mtp is not None and lab.has_mtp
    with lab._lock:
        if origin is not None:
            source = replace(trace, prompt_ids=prompt_ids)
            return resample_from(lab.model, lab.tokenizer, source, start, sampling=settings,
                                 seed=trace.seed, with_mtp=with_mtp, model_name=lab.name, revision=lab.revision,
                                 meta=dict(trace.meta))
        again = generate_traces(lab.model, lab.tokenizer, [trace.prompt_text], [trace.prompt], sampling=settings,
                                seeds=[trace.seed], model_name=lab.name, revision=lab.revision, card=lab.card,
                                with_mtp=with_mtp, input_ids=[prompt_ids.tolist()])[0]
    again.meta = dict(trace.meta)
    return again


def resample(lab, trace: Trace, position: int, *, seed=None, mtp: bool | None = None, **sampling) -> Trace:
    """See `Lab.resample`."""
    from mimo_lab.probe.inputs import check_tokenizer  # local: probe imports generation

    check_trace(trace)
    check_tokenizer(lab, trace)
    position = check_position(trace, position)
    seed = check_seed("seed", seed)
    with_mtp = _with_mtp(lab, mtp)
    settings = check_sampling(lab, sampling, base="recommended")
    if not trace.prompt_ids.numel():
        raise ValueError("the trace has no prompt token ids (was it built by Lab.generate?): there is nothing to "
                         "continue from")
    lab._need_weights("resample")
    with lab._lock:
        return resample_from(lab.model, lab.tokenizer, trace, position, sampling=settings,
                             seed=draw_seed() if seed is None else seed, with_mtp=with_mtp, model_name=lab.name,
                             revision=lab.revision)
