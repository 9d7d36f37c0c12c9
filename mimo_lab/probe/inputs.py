"""What a probe runs on: token ids of a text or a trace, with their texts and where generation began."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from mimo_lab.generation import TokenDecoder
from mimo_lab.trace import Trace


@dataclass
class Encoded:
    """ids [1, n]; token_texts[i]; text = their concatenation; spans into it; generation_start:
    index of the first generated token (0 for a plain text); trace when built from one."""

    ids: torch.Tensor
    token_texts: list[str]
    text: str
    spans: list[tuple[int, int]]
    generation_start: int
    trace: Trace | None = None

    @property
    def length(self) -> int:
        return int(self.ids.shape[1])


def encode(lab, text_or_trace, *, max_tokens: int | None = None) -> Encoded:
    """A Trace: its prompt and generated tokens (as the model saw them); a str: that text, as is."""
    if isinstance(text_or_trace, Trace):
        trace = text_or_trace
        if trace.prompt_ids.numel() == 0:
            raise ValueError("the trace has no prompt token ids (was it built by Lab.generate?)")
        ids = torch.cat([trace.prompt_ids, trace.token_ids])
        start = trace.prompt_ids.numel()
    elif isinstance(text_or_trace, str):
        if not text_or_trace:
            raise ValueError("the text is empty: give at least one token of text")
        trace = None
        ids = torch.tensor(lab.tokenizer(text_or_trace, add_special_tokens=False)["input_ids"])
        start = 0
    else:
        raise ValueError(f"expected a text (str) or a Trace, got {type(text_or_trace).__name__}")
    if max_tokens is not None and ids.numel() > max_tokens:
        raise ValueError(f"the input has {ids.numel()} tokens, more than max_tokens={max_tokens}")
    text, spans = TokenDecoder(lab.tokenizer).decode_with_spans(ids.tolist())
    return Encoded(ids[None].to(lab.device), [text[s:e] for s, e in spans], text, spans, start, trace)


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


def check_layers(lab, layers) -> list[int]:
    """None: all layers; an int or a list of ints (negative counts from the end)."""
    count = lab.num_layers
    if layers is None:
        return list(range(count))
    chosen = [layers] if isinstance(layers, int) else list(layers)
    out = []
    for layer in chosen:
        if not isinstance(layer, int) or not -count <= layer < count:
            raise ValueError(f"layer {layer!r} out of range: the model has {count} layers (0–{count - 1})")
        out.append(layer % count)
    return out
