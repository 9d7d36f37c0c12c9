"""Interventions: activation patching, steering vectors, attention suppression of a sentence.

- `activation_patching`: run a corrupted input with one (layer, position) of the residual stream
  taken from the clean input (nnsight), and measure the target's log-prob; the effect is
  normalised so that 0 = corrupted, 1 = clean.
- `steering_vector` / `SteeringVector.apply`: difference of means of residual activations between
  two sets of traces at a layer (Venhoff et al. 2025), added at every position during generation
  at a scale relative to the layer's mean activation norm.
- `suppress_sentence` / `suppression_matrix`: mask all attention to one sentence's tokens from
  every later token (all layers and heads) and measure the KL divergence of later tokens' next-
  token distributions (Thought Anchors: per-sentence mean of log-KL).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import torch
from safetensors.torch import load_file, save_file

from mimo_lab.probe.capture import capture
from mimo_lab.probe.inputs import check_layers, encode
from mimo_lab.trace import Trace
from mimo_lab.viz.style import LABEL_COLOURS, base_layout, shorten

# ----------------------------------------------------------------------------- patching


class PatchingResult:
    """`effect` [layers, positions]: (patched - corrupted) / (clean - corrupted) target log-prob;
    `patched_logprob` the raw values; `clean_logprob`, `corrupted_logprob` the two baselines."""

    def __init__(self, layers, positions, token_texts, patched, clean, corrupted, target):
        self.layers, self.positions, self.token_texts = layers, positions, token_texts
        self.patched_logprob, self.clean_logprob, self.corrupted_logprob = patched, clean, corrupted
        self.target = target

    @property
    def effect(self) -> torch.Tensor:
        gap = self.clean_logprob - self.corrupted_logprob
        if abs(gap) < 1e-9:
            return torch.zeros_like(self.patched_logprob)
        return (self.patched_logprob - self.corrupted_logprob) / gap

    def __repr__(self) -> str:
        return (f"PatchingResult({len(self.layers)} layers x {len(self.positions)} positions, target {self.target!r}: "
                f"clean {self.clean_logprob:.3f}, corrupted {self.corrupted_logprob:.3f})")

    def to_frame(self) -> pd.DataFrame:
        rows = [{"layer": layer, "position": pos, "token": self.token_texts[pos],
                 "patched_logprob": float(self.patched_logprob[li, pi]), "effect": float(self.effect[li, pi])}
                for li, layer in enumerate(self.layers) for pi, pos in enumerate(self.positions)]
        return pd.DataFrame(rows)

    def plot(self, title: str | None = None) -> go.Figure:
        fig = go.Figure(go.Heatmap(z=self.effect.tolist(), x=[f"{p}:{self.token_texts[p]!r}" for p in self.positions],
                                   y=[f"L{layer}" for layer in self.layers], colorscale="RdBu", zmid=0,
                                   colorbar=dict(title="effect"),
                                   hovertemplate="%{y} %{x}<br>restored %{z:.2f}<extra></extra>"))
        fig.update_yaxes(autorange="reversed")
        return base_layout(fig, title or f"activation patching: log p({self.target!r}) restored by clean resid",
                           height=160 + 34 * len(self.layers))


@torch.no_grad()
def activation_patching(lab, clean: str, corrupted: str, target: str, layers=None, positions=None) -> PatchingResult:
    """Patch the clean residual stream into the corrupted run, one (layer, position) at a time.

    clean / corrupted: texts of the same token length (e.g. one digit changed); target: the
    continuation whose log-prob is measured (summed over its tokens) after each of them.
    """
    layers = check_layers(lab, layers)
    clean_enc, corrupt_enc = encode(lab, clean + target), encode(lab, corrupted + target)
    target_len = len(lab.tokenizer(target, add_special_tokens=False)["input_ids"])
    if target_len == 0:
        raise ValueError("target is empty: give the continuation whose log-prob to measure")
    if clean_enc.length != corrupt_enc.length:
        raise ValueError(f"clean and corrupted inputs must have the same number of tokens "
                         f"({clean_enc.length} vs {corrupt_enc.length}): change tokens, do not add or remove them")
    n = clean_enc.length
    prefix = n - target_len
    positions = list(range(prefix)) if positions is None else list(positions)
    for pos in positions:
        if not isinstance(pos, int) or not 0 <= pos < n:
            raise ValueError(f"position {pos!r} out of range: the input has {n} tokens")
    target_ids = clean_enc.ids[0, prefix:]

    def target_logprob(logits: torch.Tensor) -> float:
        logprobs = logits[0, prefix - 1 : n - 1].float().log_softmax(-1)
        return float(logprobs.gather(-1, target_ids[:, None]).sum())

    clean_acts = capture(lab, clean + target, sites="resid", layers=layers)
    model_nn, options = lab.nn, lab.trace_options  # local names: traced blocks must not carry the Lab
    with model_nn.trace(clean_enc.ids, **options):
        clean_logits = model_nn.lm_head.output.save()
    with model_nn.trace(corrupt_enc.ids, **options):
        corrupted_logits = model_nn.lm_head.output.save()
    clean_lp, corrupted_lp = target_logprob(clean_logits), target_logprob(corrupted_logits)
    patched = torch.zeros(len(layers), len(positions))
    for li, layer in enumerate(layers):
        for pi, pos in enumerate(positions):
            value = clean_acts.get("resid", layer)[pos].to(lab.device, lab.model.dtype)
            with model_nn.trace(corrupt_enc.ids, **options):
                model_nn.model.layers[layer].output[0, pos, :] = value
                logits = model_nn.lm_head.output.save()
            patched[li, pi] = target_logprob(logits)
    return PatchingResult(layers, positions, clean_enc.token_texts, patched, clean_lp, corrupted_lp, target)


# ----------------------------------------------------------------------------- steering


class SteeringVector:
    """A direction in the residual stream at `layer`; `norm` = the layer's mean activation norm."""

    def __init__(self, vector: torch.Tensor, layer: int, norm: float, model_name: str = ""):
        self.vector, self.layer, self.norm, self.model_name = vector, layer, norm, model_name

    def __repr__(self) -> str:
        return (f"SteeringVector(layer {self.layer}, |v| {float(self.vector.norm()):.3f}, "
                f"layer norm {self.norm:.3f})")

    @property
    def direction(self) -> torch.Tensor:
        return self.vector / self.vector.norm().clamp(min=1e-12)

    @contextmanager
    def apply(self, lab, scale: float):
        """Inside the block, every forward pass adds scale * norm * direction to layer `layer`'s
        output at every position (so `lab.generate` produces steered traces)."""
        lab._need_weights("steering during generation")
        if not isinstance(scale, int | float) or math.isnan(scale):
            raise ValueError(f"scale {scale!r} is not allowed: use a number (negative steers away)")
        shift = (scale * self.norm * self.direction).to(lab.device, lab.model.dtype)

        def add(_module, _args, output):
            return output + shift

        # A single torch forward hook: generation runs through `transformers.generate`, which
        # nnsight's trace contexts do not wrap.
        handle = lab.model.model.layers[self.layer].register_forward_hook(add)
        try:
            yield self
        finally:
            handle.remove()

    def save(self, path: str | Path) -> Path:
        save_file({"vector": self.vector.contiguous()}, str(path),
                  metadata={"layer": str(self.layer), "norm": str(self.norm), "model_name": self.model_name})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        return cls(load_file(str(path))["vector"], int(meta["layer"]), float(meta["norm"]), meta.get("model_name", ""))


def _mean_resid(lab, items, layer: int) -> tuple[torch.Tensor, float, int]:
    total, norm_total, count = None, 0.0, 0
    for item in items:
        acts = capture(lab, item, sites="resid", layers=[layer]).get("resid", layer)
        if isinstance(item, Trace):
            acts = acts[item.prompt_ids.numel():]  # the generated part
        total = acts.sum(0) if total is None else total + acts.sum(0)
        norm_total += float(acts.norm(dim=-1).sum())
        count += acts.shape[0]
    if count == 0:
        raise ValueError("no tokens to average over: give non-empty texts or traces")
    return total / count, norm_total / count, count


def steering_vector(lab, positive, negative, layer: int) -> SteeringVector:
    """Difference of means of residual activations (positive - negative) at `layer`.

    positive / negative: lists of texts (e.g. backtracking sentences vs the rest) or Traces
    (their generated tokens are averaged)."""
    (layer,) = check_layers(lab, [layer])
    if not positive or not negative:
        raise ValueError("steering_vector needs at least one positive and one negative example")
    pos_mean, pos_norm, n_pos = _mean_resid(lab, list(positive), layer)
    neg_mean, neg_norm, n_neg = _mean_resid(lab, list(negative), layer)
    norm = (pos_norm * n_pos + neg_norm * n_neg) / (n_pos + n_neg)
    return SteeringVector(pos_mean - neg_mean, layer, norm, lab.name)


# ----------------------------------------------------------------------------- suppression


def _sentence_token_ranges(trace: Trace, kind: str) -> list[tuple[int, int]]:
    """For each sentence, its [start, end) in prompt + generated token positions."""
    offset = trace.prompt_ids.numel()
    of_token = trace.segments(kind).token_segments(trace.spans)
    ranges = []
    for s in trace.segments(kind):
        members = [i for i, seg in enumerate(of_token) if seg == s.index]
        ranges.append((offset + members[0], offset + members[-1] + 1) if members else (offset, offset))
    return ranges


@torch.no_grad()
def _kl_after_masking(lab, ids: torch.Tensor, start: int, end: int, chunk: int = 1024) -> torch.Tensor:
    """KL(base || suppressed) of the next-token distribution at every position [n] (0 before `end`)."""
    n = ids.shape[1]
    allowed = torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()
    allowed[end:, start:end] = False  # later tokens may not look at the sentence
    base = lab.model.model(ids).last_hidden_state
    masked = lab.model.model(ids, attention_mask=allowed[None, None]).last_hidden_state
    kl = torch.zeros(n)
    for s in range(0, n, chunk):
        p = lab.model.lm_head(base[0, s : s + chunk]).float().log_softmax(-1)
        q = lab.model.lm_head(masked[0, s : s + chunk]).float().log_softmax(-1)
        kl[s : s + chunk] = (p.exp() * (p - q)).sum(-1).clamp(min=0).cpu()
    return kl


class SuppressionResult:
    """The effect of suppressing sentence `suppressed` on every generated token (`kl` [tokens])
    and on every later sentence (`to_frame()`: mean log-KL per sentence)."""

    def __init__(self, trace: Trace, suppressed: int, kl: torch.Tensor, ranges, kind: str):
        self.trace, self.suppressed, self.kl, self.ranges, self.kind = trace, suppressed, kl, ranges, kind

    def __repr__(self) -> str:
        return f"SuppressionResult({self.kind} {self.suppressed} suppressed, max KL {float(self.kl.max()):.4f})"

    def to_frame(self) -> pd.DataFrame:
        offset = self.trace.prompt_ids.numel()
        rows = []
        for s, (a, b) in zip(self.trace.segments(self.kind), self.ranges, strict=True):
            values = self.kl[a - offset : b - offset]
            rows.append({"sentence": s.index, "label": s.label, "text": s.stripped,
                         "after_suppressed": s.index > self.suppressed,
                         "mean_log_kl": float(values.clamp(min=1e-12).log().mean()) if len(values) else math.nan,
                         "mean_kl": float(values.mean()) if len(values) else math.nan})
        return pd.DataFrame(rows).set_index("sentence")

    def plot(self, title: str | None = None) -> go.Figure:
        frame = self.to_frame()
        later = frame[frame["after_suppressed"]]
        fig = go.Figure(go.Bar(x=later.index, y=later["mean_kl"],
                               marker_color=[LABEL_COLOURS.get(label, "#888") for label in later["label"]],
                               hovertext=[f"{label}: {shorten(text, 80)}" for label, text in
                                          zip(later["label"], later["text"], strict=True)], hoverinfo="text+y"))
        fig.update_xaxes(title_text=f"later {self.kind}")
        fig.update_yaxes(title_text="mean KL (nats)")
        text = shorten(self.trace.segments(self.kind)[self.suppressed].stripped, 60)
        return base_layout(fig, title or f"suppressing {self.kind} {self.suppressed} ({text!r})", height=340)


def suppress_sentence(lab, trace: Trace, sentence: int, kind: str = "sentence") -> SuppressionResult:
    """Mask attention to one sentence from all later tokens; KL on each later token."""
    if not isinstance(trace, Trace):
        raise ValueError(f"suppress_sentence needs a Trace, got {type(trace).__name__}")
    lab._need_weights("attention suppression")
    ranges = _sentence_token_ranges(trace, kind)
    if not isinstance(sentence, int) or not 0 <= sentence < len(ranges):
        raise ValueError(f"{kind} {sentence!r} out of range: the trace has {len(ranges)} {kind}s (0–{len(ranges) - 1})")
    ids = torch.cat([trace.prompt_ids, trace.token_ids])[None].to(lab.device)
    start, end = ranges[sentence]
    kl = _kl_after_masking(lab, ids, start, end)[trace.prompt_ids.numel():]
    return SuppressionResult(trace, sentence, kl, ranges, kind)


def suppression_matrix(lab, trace: Trace, kind: str = "sentence") -> pd.DataFrame:
    """[suppressed sentence i, later sentence j]: mean log-KL on j when i is suppressed (NaN for j <= i)."""
    count = len(trace.segments(kind))
    matrix = pd.DataFrame(math.nan, index=range(count), columns=range(count))
    for i in range(count):
        frame = suppress_sentence(lab, trace, i, kind).to_frame()
        for j in frame.index[frame["after_suppressed"]]:
            matrix.loc[i, j] = frame.loc[j, "mean_log_kl"]
    matrix.index.name, matrix.columns.name = "suppressed", "later"
    return matrix
