"""What a probe runs on: token ids of a text or a trace, with their texts and where generation began.

Every probe reads its input through `encode`, so every probe refuses a Trace made with another
tokenizer the same way, and reads positions the same way: position i is the i-th token of the
sequence the model reads (a Trace's prompt tokens first, then its generated tokens).
"""

from __future__ import annotations

import numbers
import operator
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from mimo_lab.checks import show
from mimo_lab.generation import TokenDecoder
from mimo_lab.trace import Trace, tokenizer_fingerprint


class SequencePositions:
    """For a result over one sequence of `token_texts` whose generation began at `generation_start`:
    its `positions` (0 .. n-1, the prompt's tokens first) and `prompt_length`."""

    token_texts: list[str]
    generation_start: int

    @property
    def positions(self) -> list[int]:
        return list(range(len(self.token_texts)))

    @property
    def prompt_length(self) -> int:
        return self.generation_start


@dataclass
class Encoded:
    """ids [1, n]; token_texts[i]; text = their concatenation; spans into it; generation_start:
    position of the first generated token (0 for a plain text); trace when built from one."""

    ids: torch.Tensor
    token_texts: list[str]
    text: str
    spans: list[tuple[int, int]]
    generation_start: int
    trace: Trace | None = None

    @property
    def length(self) -> int:
        return int(self.ids.shape[1])

    @property
    def positions(self) -> list[int]:
        """Every position of the input, 0 .. n-1 (the row index of a probe's per-position tensors)."""
        return list(range(self.length))


def check_tokenizer(lab, trace: Trace) -> None:
    """Refuse a Trace whose tokenizer is not the lab's (its token ids would mean other tokens).

    A Trace records its tokenizer's fingerprint when generated; an older Trace without one is
    checked by decoding its token ids with the lab's tokenizer and comparing with its stored texts.
    """
    mine = tokenizer_fingerprint(lab.tokenizer)
    theirs = getattr(trace, "tokenizer_fingerprint", "") or ""
    source = f"the trace (from model {trace.model_name or 'unknown'!r})"
    if theirs:
        if theirs != mine:
            raise ValueError(f"{source} was made with tokenizer {theirs}, this lab ({lab.name!r}) has tokenizer "
                             f"{mine}: their token ids mean different tokens. Load the trace's model, or one "
                             "with the same tokenizer, to probe it")
        return
    ids = torch.cat([trace.prompt_ids, trace.token_ids]).tolist()
    size = len(lab.tokenizer)
    outside = [i for i in ids if not 0 <= i < size]
    if outside:
        raise ValueError(f"{source} holds token id {outside[0]}, outside this lab's ({lab.name!r}) tokenizer of "
                         f"{size} tokens: it was made with another tokenizer")
    if len(trace):
        text, spans = TokenDecoder(lab.tokenizer).decode_with_spans(trace.token_ids.tolist())
        texts = [text[s:e] for s, e in spans]
        if texts != list(trace.token_texts):
            first = next((i for i, (a, b) in enumerate(zip(texts, trace.token_texts, strict=False)) if a != b),
                         min(len(texts), len(trace.token_texts)))
            mine_text = texts[first] if first < len(texts) else None
            theirs_text = trace.token_texts[first] if first < len(trace.token_texts) else None
            raise ValueError(f"{source} was made with another tokenizer than this lab's ({lab.name!r}): its "
                             f"token {first} is {theirs_text!r} in the trace but {mine_text!r} under this lab's "
                             "tokenizer")


def encode(lab, text_or_trace, *, max_tokens: int | None = None, name: str = "text_or_trace") -> Encoded:
    """A Trace: its prompt and generated tokens (as the model saw them); a str: that text, as is.

    Refuses an empty text, another type (TypeError), and a Trace made with another tokenizer.
    """
    if isinstance(text_or_trace, Trace):
        trace = text_or_trace
        if trace.prompt_ids.numel() == 0:
            raise ValueError(f"{name}: the trace has no prompt token ids (was it built by Lab.generate?)")
        check_tokenizer(lab, trace)
        ids = torch.cat([trace.prompt_ids, trace.token_ids]).long()
        start = trace.prompt_ids.numel()
    elif isinstance(text_or_trace, str):
        if not text_or_trace:
            raise ValueError(f"{name}='' is not accepted: the text is empty (give a non-empty text or a Trace)")
        trace = None
        ids = torch.tensor(lab.tokenizer(text_or_trace, add_special_tokens=False)["input_ids"], dtype=torch.long)
        if ids.numel() == 0:
            raise ValueError(f"{name}={text_or_trace!r} is not accepted: it has no tokens")
        start = 0
    else:
        raise TypeError(f"{name}={type(text_or_trace).__name__} is not accepted: a text (str) or a Trace is "
                        "(or a list of them where the probe takes several)")
    if max_tokens is not None and ids.numel() > max_tokens:
        raise ValueError(f"the input has {ids.numel()} tokens, more than max_tokens={max_tokens}")
    text, spans = TokenDecoder(lab.tokenizer).decode_with_spans(ids.tolist())
    return Encoded(ids[None].to(lab.device), [text[s:e] for s, e in spans], text, spans, start, trace)


def as_batch(text_or_traces, name: str = "text_or_trace") -> tuple[list, bool]:
    """(inputs, single): a text or a Trace is one input; a list or tuple of them is several (not empty)."""
    if isinstance(text_or_traces, str | Trace):
        return [text_or_traces], True
    if isinstance(text_or_traces, list | tuple):
        if not text_or_traces:
            raise ValueError(f"{name}=[] is empty: give a text, a Trace, or a non-empty list of them")
        return list(text_or_traces), False
    raise TypeError(f"{name}={type(text_or_traces).__name__} is not accepted: a text (str), a Trace, or a list "
                    "of them is")


def trace_kwargs(cache) -> dict:
    """Keyword arguments for `lab.nn.trace` that continue from a KV cache.

    nnsight reserves the `cache` keyword for itself, so the cache goes in under transformers'
    older name `past_key_values` (its deprecation warning is silenced by `quiet_cache_warning`).
    """
    return {} if cache is None else {"past_key_values": cache, "use_cache": True}


@contextmanager
def quiet_cache_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*past_key_values.* is deprecated", category=FutureWarning)
        yield


def check_layers(lab, layers, name: str = "layers") -> list[int]:
    """Layer indices in the order asked: None = all; an int or a list of ints (numpy ints too;
    negative counts from the end). TypeError for a bool or a non-integer; ValueError for an
    empty list, a layer out of range, or a layer asked twice."""
    count = lab.num_layers
    if layers is None:
        return list(range(count))
    accepted = "an integer, a list of integers, or None (all layers)"
    if isinstance(layers, bool) or isinstance(layers, str | bytes | dict | set | frozenset):
        raise TypeError(f"{name}={layers!r} ({type(layers).__name__}) is not accepted: {accepted} is"
                        + (" (a set has no order)" if isinstance(layers, set | frozenset) else ""))
    if isinstance(layers, numbers.Integral) or (isinstance(layers, torch.Tensor) and layers.dim() == 0):
        chosen = [layers]
    else:
        try:
            chosen = list(layers)
        except TypeError:
            raise TypeError(f"{name}={layers!r} ({type(layers).__name__}) is not accepted: {accepted} is") from None
    if not chosen:
        raise ValueError(f"{name}=[] is empty: give at least one layer (0–{count - 1}), or None for all")
    shown = show(layers.tolist() if isinstance(layers, torch.Tensor) else layers, 60)
    out: list[int] = []
    for layer in chosen:
        if isinstance(layer, bool) or not (isinstance(layer, numbers.Integral) or (
                isinstance(layer, torch.Tensor) and layer.dim() == 0 and not layer.is_floating_point())):
            raise TypeError(f"{name}={shown}: layer {layer!r} ({type(layer).__name__}) is not accepted: "
                            f"{accepted} is")
        layer = operator.index(layer)
        if not -count <= layer < count:
            raise ValueError(f"{name}={shown}: layer {layer} out of range: the model has {count} layers "
                             f"(0–{count - 1}, or -{count} to -1 from the end)")
        layer %= count
        if layer in out:
            raise ValueError(f"{name}={shown} asks for layer {layer} twice: give each layer once")
        out.append(layer)
    return out



def need_model(lab, what: str) -> None:
    """Refuse a probe on a Lab whose model is not here (weights=False), before any work; a remote
    (NDIF) Lab runs the probe's trace there instead."""
    if not lab.remote:
        lab._need_weights(what)
