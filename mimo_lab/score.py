"""Score any text with any model: a teacher-forced pass that gives a text the analytics `generate` records.

`lab.score(prompt, completion)` (or `lab.score(trace)`, or a list of either) reads the prompt (chat
template applied, as `generate` does) followed by the completion, and returns a `Trace` of the completion
with, per token, what the model would have recorded had it generated it: log-probability (temperature 1),
the entropy of the distribution it would have sampled from at the given settings (default: the card's
recommended sampling, recorded in `trace.sampling`), the model's own entropy, its top-k alternatives, and
for MiMo the MTP head's t+2 guesses. One forward pass, in chunks of `chunk_size` tokens with a KV cache, so
a 32k-token text needs memory linear in its length (one chunk's logits at a time).

A Trace from this model's tokenizer is scored on its own token ids (never a re-tokenisation of its text,
which need not give the same ids); a Trace from any other model is re-read from its prompt and text.
The result is a Trace like any other: every probe, view and saver accepts it. It was not sampled, so it
has no seed and cannot be regenerated; `meta["scored"]` says what was scored and where it came from.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from transformers import DynamicCache

from mimo_lab.checks import check_choice, check_int, check_str, show
from mimo_lab.generation import (
    Sampling,
    TokenDecoder,
    _add_special_tokens,
    _copy_prompt,
    _with_mtp,
    cache_argument,
    check_prompt,
    check_sampling,
    eos_token_ids,
    format_prompt,
    mtp_analytics,
    sampling_warpers,
)
from mimo_lab.trace import Trace, tokenizer_fingerprint


def _inputs(lab, prompt_or_traces, completion, system, suffix) -> tuple[list[tuple], bool]:
    """[(prompt, prompt_text, prompt_ids, completion_ids, source trace or None, how)], single — all checked."""
    if isinstance(prompt_or_traces, list | tuple) and not prompt_or_traces:
        raise ValueError("prompt_or_traces=[] is empty: give a prompt and a completion, a Trace, or a non-empty list")
    if isinstance(prompt_or_traces, Trace):
        if completion is not None:
            raise ValueError(f"completion={show(completion)} is for a prompt: a Trace brings its own text "
                             "(score(trace), or score(prompt, completion))")
        items, single = [prompt_or_traces], True
    elif isinstance(prompt_or_traces, list | tuple) and prompt_or_traces and not isinstance(prompt_or_traces[0], dict):
        if completion is not None:
            raise ValueError(f"completion={show(completion)} is for one prompt: a list holds Traces or "
                             "(prompt, completion) pairs")
        items, single = list(prompt_or_traces), False
    else:
        if completion is None:
            raise ValueError("completion=None: score(prompt, completion) needs the text to score after the prompt "
                             "(or give a Trace, or a list of Traces or (prompt, completion) pairs)")
        items, single = [(prompt_or_traces, completion)], True
    mine = tokenizer_fingerprint(lab.tokenizer)
    special = _add_special_tokens(lab)
    out = []
    for i, item in enumerate(items):
        name = "trace" if single else f"prompt_or_traces[{i}]"
        if isinstance(item, Trace):
            own = item.tokenizer_fingerprint == mine and item.prompt_ids.numel() > 0
            if own:
                out.append((item.prompt, item.prompt_text, item.prompt_ids.clone(), item.token_ids.clone(), item,
                            "the trace's own token ids"))
                continue
            if not item.text:
                raise ValueError(f"{name} has no text to score")
            prompt = check_prompt(item.prompt, f"{name}.prompt")
            text = format_prompt(lab, prompt, system) + suffix
            completion_text = item.text
        else:
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise TypeError(f"{name}={show(item)} is not accepted: a Trace or a (prompt, completion) pair is")
            prompt = check_prompt(item[0], "prompt" if single else f"{name}[0]")
            completion_text = check_str("completion" if single else f"{name}[1]", item[1])
            text = format_prompt(lab, prompt, system) + suffix
        prompt_ids = torch.tensor(lab.tokenizer(text, add_special_tokens=special)["input_ids"], dtype=torch.long)
        ids = torch.tensor(lab.tokenizer(completion_text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        out.append((prompt, text, prompt_ids, ids, item if isinstance(item, Trace) else None, "tokenized here"))
    return out, single


def chunked_logits(model, ids: torch.Tensor, chunk_size: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Run `model` over ids [n] in chunks with one KV cache (the same logits as one pass); yield
    (begin, stop, logits [stop - begin, vocab]) per chunk."""
    cache = DynamicCache(config=model.config)
    ids = ids.to(model.device)[None]
    for begin in range(0, ids.shape[1], chunk_size):
        stop = min(begin + chunk_size, ids.shape[1])
        yield begin, stop, model(input_ids=ids[:, begin:stop], use_cache=True, **cache_argument(model, cache)).logits[0]


class _Stats:
    """Per completion token, from the logits chunks of one pass over prompt + completion: logprob, entropy (at
    `settings`), model entropy, top-k; and the end-of-turn log-prob after the last token."""

    def __init__(self, lab, full: torch.Tensor, start: int, settings: Sampling, k: int):
        self.full, self.start, self.n = full, start, int(full.numel())
        self.warpers = sampling_warpers(settings)
        self.eos = eos_token_ids(lab.model, lab.tokenizer)
        self.k = min(k, lab.model.config.vocab_size)
        self.rows = {name: [] for name in ("logprob", "entropy", "model_entropy", "top_ids", "top_logprobs")}
        self.end_logprob = math.nan

    def add(self, begin: int, stop: int, logits: torch.Tensor) -> None:
        # row j (position begin + j) predicts the token at begin + j + 1; keep the rows that predict a
        # completion token, and the last row (what follows the text)
        first = max(begin, self.start - 1)
        if first >= stop:
            return
        scores = logits[first - begin:].float()
        logprobs = scores.log_softmax(-1)
        if stop == self.n:
            self.end_logprob = float(torch.logsumexp(logprobs[-1, self.eos], -1)) if self.eos else math.nan
            scores, logprobs = scores[:-1], logprobs[:-1]
        if not len(scores):
            return
        targets = self.full[first + 1: first + 1 + len(scores)].to(logprobs.device)
        top = logprobs.topk(self.k, dim=-1)
        model_entropy = torch.special.entr(logprobs.exp()).sum(-1)
        entropy = model_entropy
        if self.warpers:
            warped = scores
            for warper in self.warpers:
                warped = warper(None, warped)
            entropy = torch.special.entr(warped.softmax(-1)).sum(-1)
        for name, value in (("logprob", logprobs.gather(-1, targets[:, None])[:, 0]), ("entropy", entropy),
                            ("model_entropy", model_entropy), ("top_ids", top.indices),
                            ("top_logprobs", top.values)):
            self.rows[name].append(value.cpu())

    def result(self) -> dict:
        out = {name: (torch.cat(parts) if parts else torch.zeros((0, self.k) if name.startswith("top") else 0))
               for name, parts in self.rows.items()}
        out["top_ids"] = out["top_ids"].long()
        out["end_logprob"] = self.end_logprob
        return out


def _make_trace(lab, item: tuple, stats: dict, settings: Sampling, with_mtp: bool) -> Trace:
    """The scored Trace of one `_inputs` item from its `_Stats` result."""
    prompt, prompt_text, prompt_ids, ids, source, how = item
    decoder = TokenDecoder(lab.tokenizer)
    text, spans = decoder.decode_with_spans(ids.tolist())
    scored = {"scorer": lab.name, "tokens": how, "end_logprob": stats["end_logprob"]}
    if source is not None:
        scored.update(source_model=source.model_name, source_seed=source.seed, source_sampling=source.sampling)
    trace = Trace(
        prompt=_copy_prompt(prompt), text=text, token_ids=ids, token_texts=[text[s:e] for s, e in spans],
        spans=torch.tensor(spans, dtype=torch.long).reshape(-1, 2), logprobs=stats["logprob"],
        entropies=stats["entropy"], model_entropies=stats["model_entropy"], top_ids=stats["top_ids"],
        top_logprobs=stats["top_logprobs"],
        top_texts=[[decoder.token_text(t) for t in row] for row in stats["top_ids"].tolist()],
        finish_reason=source.finish_reason if source is not None else "stop", prompt_text=prompt_text,
        prompt_ids=prompt_ids, model_name=lab.name, revision=lab.revision, sampling=settings.as_dict(),
        seed=None, think_start=lab.card.think_start, think_end=lab.card.think_end,
        meta={**(dict(source.meta) if source is not None else {}), "analytics": "teacher-forced", "scored": scored},
        tokenizer_fingerprint=tokenizer_fingerprint(lab.tokenizer))
    if with_mtp:
        trace.mtp = mtp_analytics(lab.model, prompt_ids, ids)
    return trace


def _check_items(lab, items: list[tuple], single: bool) -> None:
    for i, (_, _, prompt_ids, ids, _, _) in enumerate(items):
        where = "" if single else f" (item {i})"
        if not ids.numel():
            raise ValueError(f"the completion{where} is empty: there is no token to score")
        if prompt_ids.numel() + ids.numel() > lab.card.context_length:
            raise ValueError(f"the text{where} is {prompt_ids.numel() + ids.numel()} tokens: {lab.name!r} reads at "
                             f"most {lab.card.context_length} (card.context_length)")


def score(lab, prompt_or_traces, completion: str | None = None, *, system: str | None = None,
          mtp: bool | None = None, chunk_size: int = 1024, top_alternatives: int = 5,
          preset: str = "recommended", prompt_suffix: str = "", **sampling) -> Trace | list[Trace]:
    """See `Lab.score`."""
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    top_alternatives = check_int("top_alternatives", top_alternatives, minimum=1)
    with_mtp = _with_mtp(lab, mtp)
    settings = check_sampling(lab, sampling, base=check_choice("preset", preset, ("default", "recommended")))
    prompt_suffix = check_str("prompt_suffix", prompt_suffix, empty_ok=True)
    items, single = _inputs(lab, prompt_or_traces, completion, system, prompt_suffix)
    _check_items(lab, items, single)
    lab._need_weights("score")
    traces = []
    with lab._lock:
        for item in items:
            full = torch.cat([item[2], item[3]])
            stats = _Stats(lab, full, int(item[2].numel()), settings, top_alternatives)
            with torch.inference_mode():
                for chunk in chunked_logits(lab.model, full, chunk_size):
                    stats.add(*chunk)
            traces.append(_make_trace(lab, item, stats.result(), settings, with_mtp))
    return traces[0] if single else traces
