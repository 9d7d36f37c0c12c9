"""Interventions: activation patching, steering vectors, attention suppression of a sentence.

- `activation_patching`: run a corrupted input with one (layer, position) of the residual stream
  taken from the clean input (nnsight), and measure the target's log-prob; the effect is
  normalised so that 0 = corrupted, 1 = clean.
- `steering_vector` / `lab.steer(vector, scale)`: difference of means of residual activations
  between two sets of texts or traces at a layer (Venhoff et al. 2025), added to that layer's
  output at every position inside a `with` block, `scale` times the layer's mean residual norm.
- `suppress_sentence` / `suppression_matrix`: mask all attention to one sentence's tokens from
  every later token (all layers and heads) and measure the KL divergence of later tokens' next-
  token distributions (Thought Anchors: per-sentence mean of log(KL + 1e-9)).

Positions are indices into the full token sequence (a Trace's prompt, then its generated tokens).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import torch

from mimo_lab.checks import check_choice, check_float, check_int, check_str, show
from mimo_lab.generation import TokenDecoder
from mimo_lab.probe.attention import (
    check_input,
    check_inputs,
    check_layer,
    check_layer_list,
    check_positions,
    field,
    load_result,
    save_result,
)
from mimo_lab.probe.capture import capture
from mimo_lab.probe.inputs import encode, need_model
from mimo_lab.segment import SEGMENT_KINDS
from mimo_lab.trace import Trace
from mimo_lab.viz.style import LABEL_COLOURS, base_layout, shorten

# ----------------------------------------------------------------------------- patching


class PatchingResult:
    """`effect` [layers, positions]: (patched - corrupted) / (clean - corrupted) target log-prob;
    `patched_logprob` the raw values; `clean_logprob`, `corrupted_logprob` the two baselines.
    Rows follow `layers` and columns `positions` in the order they were asked for."""

    def __init__(self, layers, positions, token_texts, patched, clean, corrupted, target):
        self.layers, self.positions, self.token_texts = list(layers), list(positions), list(token_texts)
        self.patched_logprob, self.clean_logprob, self.corrupted_logprob = patched, float(clean), float(corrupted)
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

    def save(self, path: str | Path) -> Path:
        """One safetensors file: `patched_logprob`, the rest as JSON."""
        return save_result(path, "PatchingResult", {"patched_logprob": self.patched_logprob},
                           {"layers": self.layers, "positions": self.positions, "token_texts": self.token_texts,
                            "clean_logprob": self.clean_logprob, "corrupted_logprob": self.corrupted_logprob,
                            "target": self.target})

    @classmethod
    def load(cls, path: str | Path) -> PatchingResult:
        tensors, meta = load_result(path, "PatchingResult", ("patched_logprob",))
        return cls(*(field(meta, name, path) for name in ("layers", "positions", "token_texts")),
                   tensors["patched_logprob"], *(field(meta, name, path) for name in
                                                  ("clean_logprob", "corrupted_logprob", "target")))


def _patching_ids(lab, value, target: str, name: str) -> torch.Tensor:
    """[n] token ids of a text + target (tokenized together), or of a Trace's tokens + the target's."""
    check_input(value, name)
    if isinstance(value, Trace):
        target_ids = lab.tokenizer(target, add_special_tokens=False)["input_ids"]
        return torch.cat([encode(lab, value).ids[0].cpu(), torch.tensor(target_ids, dtype=torch.long)])
    return torch.tensor(lab.tokenizer(value + target, add_special_tokens=False)["input_ids"], dtype=torch.long)


@torch.no_grad()
def activation_patching(lab, clean, corrupted, target: str, layers=None, positions=None) -> PatchingResult:
    """Patch the clean residual stream into the corrupted run, one (layer, position) at a time.

    clean / corrupted: texts (or Traces) of the same token length (e.g. one digit changed);
    target: the continuation whose log-prob is measured (summed over its tokens) after each of
    them. layers (None: all) and positions (None: every position before the target) are kept in
    the order given; positions index the full input (a Trace's prompt, then its tokens).
    """
    target = check_str("target", target)
    layers = check_layer_list(lab, layers)
    need_model(lab, "activation_patching")
    clean_ids = _patching_ids(lab, clean, target, "clean")
    corrupt_ids = _patching_ids(lab, corrupted, target, "corrupted")
    target_len = len(lab.tokenizer(target, add_special_tokens=False)["input_ids"])
    if target_len == 0:
        raise ValueError(f"target={target!r} has no tokens: give the continuation whose log-prob to measure")
    if clean_ids.numel() != corrupt_ids.numel():
        raise ValueError(f"clean and corrupted inputs must have the same number of tokens "
                         f"({clean_ids.numel()} vs {corrupt_ids.numel()}): change tokens, do not add or remove them")
    n = clean_ids.numel()
    prefix = n - target_len
    if prefix < 1:
        raise ValueError("clean: give at least one token before the target")
    positions = list(range(prefix)) if positions is None else check_positions(positions, n, "positions")
    text, spans = TokenDecoder(lab.tokenizer).decode_with_spans(clean_ids.tolist())
    token_texts = [text[s:e] for s, e in spans]
    clean_ids, corrupt_ids = clean_ids[None].to(lab.device), corrupt_ids[None].to(lab.device)
    target_ids = clean_ids[0, prefix:]

    def target_logprob(logits: torch.Tensor) -> float:
        logprobs = logits[0, prefix - 1 : n - 1].float().log_softmax(-1)
        return float(logprobs.gather(-1, target_ids[:, None]).sum())

    model_nn, options = lab.nn, lab.trace_options  # local names: traced blocks must not carry the Lab
    saved = {}
    with model_nn.trace(clean_ids, **options):
        for layer in sorted(layers):  # nnsight reads values in the order the model computes them
            saved[layer] = model_nn.model.layers[layer].output.save()
        clean_logits = model_nn.lm_head.output.save()
    with model_nn.trace(corrupt_ids, **options):
        corrupted_logits = model_nn.lm_head.output.save()
    clean_lp, corrupted_lp = target_logprob(clean_logits), target_logprob(corrupted_logits)
    patched = torch.zeros(len(layers), len(positions))
    for li, layer in enumerate(layers):
        resid = saved[layer][0] if isinstance(saved[layer], tuple) else saved[layer]
        for pi, pos in enumerate(positions):
            value = resid[0, pos].clone()
            with model_nn.trace(corrupt_ids, **options):
                model_nn.model.layers[layer].output[0, pos, :] = value
                logits = model_nn.lm_head.output.save()
            patched[li, pi] = target_logprob(logits)
    return PatchingResult(layers, positions, token_texts, patched, clean_lp, corrupted_lp, target)


# ----------------------------------------------------------------------------- steering

_SHIFTS = "_mimo_lab_steering"  # per decoder layer: [inner body, active shifts]


def _add_shifts(output, shift: torch.Tensor):
    hidden = output[0] if isinstance(output, tuple) else output
    steered = hidden + shift.to(hidden.device, hidden.dtype)  # a sharded model may hold the layer on another GPU
    return (steered, *output[1:]) if isinstance(output, tuple) else steered


def _install_shift(lab, layer: int, shift: torch.Tensor) -> None:
    """Add `shift` to decoder layer `layer`'s output inside its forward.

    nnsight 0.8 reads a module's output inside the module's (instance) forward, before torch's
    forward hooks run, so a forward hook would steer the next layers while a capture of this
    layer still read the value before the shift. The shift therefore goes into the body that
    nnsight's controller runs: every forward pass, traced by nnsight or not (`lab.generate`),
    then sees the steered output. (Asking for this decoder layer's `.source` inside the block
    would swap a plain body for nnsight's instrumented copy and drop the shift, so the layer is
    source-instrumented first: a later `.source` then keeps the body, shift included. The
    instrumented body is inert outside a trace.)
    """
    envoy = lab.nn.model.layers[layer]  # nnsight's controller must wrap the layer before its body is wrapped
    try:
        envoy.source  # noqa: B018 - instrument now, so `.source` inside the block cannot replace the body
    except Exception:  # noqa: BLE001 - a layer nnsight cannot instrument: `.source` is unavailable anyway
        pass
    module = lab.model.model.layers[layer]
    state = module.__dict__.get("__nnsight__")
    if state is None or not hasattr(state, "body"):
        raise RuntimeError("steering needs nnsight 0.8's module controller (module.__dict__['__nnsight__'].body), "
                           "which this nnsight version does not have")
    entry = module.__dict__.get(_SHIFTS)
    if entry is None:
        inner, shifts = state.body, []

        def steered_body(mod, *args, **kwargs):
            out = inner(mod, *args, **kwargs)
            return _add_shifts(out, sum(shifts[1:], shifts[0])) if shifts else out

        state.body = steered_body
        entry = module.__dict__[_SHIFTS] = (inner, shifts, steered_body)
    entry[1].append(shift)


def _remove_shift(lab, layer: int, shift: torch.Tensor) -> None:
    module = lab.model.model.layers[layer]
    inner, shifts, steered_body = module.__dict__[_SHIFTS]
    for i, s in enumerate(shifts):
        if s is shift:
            del shifts[i]
            break
    if not shifts:
        state = module.__dict__["__nnsight__"]
        if state.body is steered_body:
            state.body = inner
        del module.__dict__[_SHIFTS]


class Steering:
    """What `lab.steer(vector, scale)` / `vector.apply(lab, scale)` return: a context manager that
    adds `scale * vector.norm * vector.direction` to layer `vector.layer`'s output at every position
    of every forward pass inside its `with` block, and nothing outside it. Never entered, it warns
    when discarded (a bare `vector.apply(lab, 2.0)` steers nothing)."""

    def __init__(self, lab, vector: SteeringVector, scale: float):
        lab._need_weights("steering")
        self.scale = check_float("scale", scale)
        hidden = lab.model.config.hidden_size
        if vector.vector.numel() != hidden:
            raise ValueError(f"vector has {vector.vector.numel()} dimensions, this Lab's residual stream {hidden}: "
                             f"it was built on another model ({vector.model_name!r})")
        self.layer = check_layer(lab, vector.layer, "vector.layer")
        self.lab, self.vector = lab, vector
        self.shift = (self.scale * vector.norm * vector.direction).to(lab.device, lab.model.dtype)
        self.entered, self.active = False, False

    def __enter__(self) -> Steering:
        if self.active:
            raise RuntimeError("this steering is already active: use a new `lab.steer(...)` for a nested block")
        _install_shift(self.lab, self.layer, self.shift)
        self.entered = self.active = True
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            _remove_shift(self.lab, self.layer, self.shift)
            self.active = False

    def __repr__(self) -> str:
        state = "active" if self.active else ("finished" if self.entered else
                                               "NOT ACTIVE: it steers only inside `with lab.steer(vector, scale):`")
        return (f"Steering(layer {self.layer}, scale {self.scale:g} x mean residual norm {self.vector.norm:.3f} "
                f"= |shift| {self.scale * self.vector.norm:.3f}; {state})")

    def __del__(self) -> None:
        if not getattr(self, "entered", True):
            warnings.warn("a steering was created but never used in a `with` block, so nothing was steered: write "
                          "`with lab.steer(vector, scale): ...` (or `with vector.apply(lab, scale): ...`)",
                          stacklevel=2)


class SteeringVector:
    """A direction in the residual stream after layer `layer`; `norm` = the mean L2 norm of that
    layer's residual over the tokens it was built from (the unit of the steering scale)."""

    def __init__(self, vector: torch.Tensor, layer: int, norm: float, model_name: str = "",
                 counts: tuple[int, int] = (0, 0)):
        self.vector, self.layer, self.norm, self.model_name = vector, int(layer), float(norm), model_name
        self.counts = tuple(int(c) for c in counts)

    def __repr__(self) -> str:
        return (f"SteeringVector(layer {self.layer}, |v| {float(self.vector.norm()):.3f}, mean residual norm "
                f"{self.norm:.3f}, from {self.counts[0]} positive / {self.counts[1]} negative tokens)")

    @property
    def direction(self) -> torch.Tensor:
        """The unit vector along `vector`."""
        return self.vector / self.vector.norm().clamp(min=1e-12)

    def apply(self, lab, scale: float) -> Steering:
        """The same as `lab.steer(self, scale)`: use it in a `with` block."""
        return Steering(lab, self, scale)

    def to_frame(self) -> pd.DataFrame:
        """One row per residual dimension: the vector and its direction."""
        return pd.DataFrame({"vector": self.vector.tolist(), "direction": self.direction.tolist()},
                            index=pd.RangeIndex(self.vector.numel(), name="dim"))

    def plot(self, title: str | None = None) -> go.Figure:
        """The vector's components by residual dimension."""
        fig = go.Figure(go.Bar(y=self.vector.tolist(), hovertemplate="dim %{x}<br>%{y:.4f}<extra></extra>"))
        fig.update_xaxes(title_text="residual dimension")
        fig.update_yaxes(title_text="component")
        return base_layout(fig, title or f"steering vector, layer {self.layer} (|v| {float(self.vector.norm()):.3f})",
                           height=320)

    def save(self, path: str | Path) -> Path:
        """One safetensors file: `vector`, plus layer, norm, model and counts as JSON."""
        return save_result(path, "SteeringVector", {"vector": self.vector},
                           {"layer": self.layer, "norm": self.norm, "model_name": self.model_name,
                            "counts": list(self.counts)})

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        tensors, meta = load_result(path, "SteeringVector", ("vector",))
        return cls(tensors["vector"], int(field(meta, "layer", path)), float(field(meta, "norm", path)),
                   meta.get("model_name", ""), tuple(meta.get("counts", (0, 0))))


def _mean_resid(lab, items, layer: int, name: str) -> tuple[torch.Tensor, float, int]:
    total, norm_total, count = None, 0.0, 0
    for item in items:
        acts = capture(lab, item, sites="resid", layers=[layer]).get("resid", layer)
        if isinstance(item, Trace):
            acts = acts[item.prompt_length:]  # the generated part
        total = acts.sum(0) if total is None else total + acts.sum(0)
        norm_total += float(acts.norm(dim=-1).sum())
        count += acts.shape[0]
    if count == 0:
        raise ValueError(f"{name}: no tokens to average over (traces without generated tokens?)")
    return total / count, norm_total / count, count


def steering_vector(lab, positive, negative, layer: int) -> SteeringVector:
    """Difference of means of residual activations (positive - negative) after `layer`.

    positive / negative: a text, a Trace, or a list of them (e.g. backtracking sentences vs the
    rest); a text counts all its tokens, a Trace its generated tokens. `norm` is the mean L2 norm
    of the residual over all those tokens: `lab.steer(vector, scale)` adds scale * norm along the
    vector's direction, so scale 1 is a shift as long as an average residual at that layer.
    """
    positive, negative = check_inputs(positive, "positive"), check_inputs(negative, "negative")
    layer = check_layer(lab, layer)
    pos_mean, pos_norm, n_pos = _mean_resid(lab, positive, layer, "positive")
    neg_mean, neg_norm, n_neg = _mean_resid(lab, negative, layer, "negative")
    norm = (pos_norm * n_pos + neg_norm * n_neg) / (n_pos + n_neg)
    return SteeringVector(pos_mean - neg_mean, layer, norm, lab.name, (n_pos, n_neg))


def _sentence_selector(where):
    """`where` -> a predicate on a sentence (its text and label), with a clear error for anything else."""
    from mimo_lab.segment import LABELS, MARKERS

    if callable(where):
        return lambda text, label: bool(where(text))
    if isinstance(where, str) and where in MARKERS:
        return lambda text, label: bool(MARKERS[where].search(text))
    if isinstance(where, str) and where in LABELS:
        return lambda text, label: label == where
    raise ValueError(f"where={show(where)} is not accepted: a marker name ({', '.join(MARKERS)}), a sentence label "
                     f"({', '.join(LABELS)}) or a function of the sentence text is")


def behaviour_vector(lab, traces, layer: int, where="backtracking", *, kind: str = "sentence",
                     lead: int = 1, span: str = "sentence", against: str = "rest") -> SteeringVector:
    """A steering vector for one reasoning behaviour, taken in context (Venhoff et al. 2025,
    arXiv 2506.18167: "difference of means of residual activations between spans of one behaviour
    (e.g. backtracking) and the rest"): each trace runs once, whole; the mean residual after
    `layer` at the token positions of its sentences that show the behaviour, minus the mean at all
    its other generated positions, pooled over `traces`.

    where: a marker name of `mimo_lab.segment.MARKERS` ("backtracking": Wait, Hmm, Actually, ...),
    a sentence label ("uncertainty_management"), or a function of a sentence's text.
    lead: the tokens just before each such sentence count with it (1: the position whose
    next-token prediction is the sentence's first token, e.g. " Wait"); 0 for the sentence alone.
    span: "sentence" (the sentence and its lead tokens) or "lead" (the lead tokens only: the
    positions where the model decides to begin such a sentence; needs lead >= 1).
    against: "rest" (every other generated position, Venhoff et al.'s contrast) or
    "other_sentences" (the same span of the sentences that do not show the behaviour: a
    contrast of like with like, e.g. the sentence ends followed by " Wait" against those followed
    by anything else).
    `norm` is the mean residual norm over all the generated positions, as `steering_vector`'s.
    """
    items = check_inputs(traces, "traces")
    for i, item in enumerate(items):
        if not isinstance(item, Trace):
            raise TypeError(f"traces[{i}]={show(item)} ({type(item).__name__}) is not accepted: a Trace is (the "
                            "behaviour's positions are found in its sentences)")
    layer = check_layer(lab, layer)
    select = _sentence_selector(where)
    kind = check_choice("kind", kind, SEGMENT_KINDS)
    lead = check_int("lead", lead, minimum=0)
    span = check_choice("span", span, ("sentence", "lead"))
    against = check_choice("against", against, ("rest", "other_sentences"))
    if span == "lead" and lead == 0:
        raise ValueError("span='lead' with lead=0 selects no position: give lead >= 1, or span='sentence'")
    masks = []  # per trace, over its generated tokens: (behaviour positions, contrast positions)
    for trace in items:  # before any forward pass
        pos = torch.zeros(len(trace), dtype=torch.bool)
        other = torch.zeros(len(trace), dtype=torch.bool)
        for row in _sentences(trace, kind):
            start = max(0, row["start"] - lead - trace.prompt_length)
            end = row["end"] - trace.prompt_length if span == "sentence" else row["start"] - trace.prompt_length
            (pos if select(row["text"], row["label"]) else other)[start:max(start, end)] = True
        masks.append((pos, other & ~pos if against == "other_sentences" else ~pos))
    n_pos = sum(int(p.sum()) for p, _ in masks)
    n_neg = sum(int(n.sum()) for _, n in masks)
    if n_pos == 0:
        raise ValueError(f"where={show(where)}: no sentence of the {len(items)} traces shows the behaviour, so there "
                         "is nothing to average (sample more traces, or choose another behaviour)")
    if n_neg == 0:
        rest = "rest" if against == "rest" else "other sentence"
        raise ValueError(f"where={show(where)}: no {rest} position is left to contrast with (against={against!r})")
    pos_sum = neg_sum = 0.0
    norm_total, n_all = 0.0, 0
    for trace, (pos, neg) in zip(items, masks, strict=True):
        acts = capture(lab, trace, sites="resid", layers=[layer]).get("resid", layer)[trace.prompt_length:].float()
        pos_sum = pos_sum + acts[pos].sum(0)
        neg_sum = neg_sum + acts[neg].sum(0)
        norm_total += float(acts.norm(dim=-1).sum())
        n_all += len(acts)
    return SteeringVector(pos_sum / n_pos - neg_sum / n_neg, layer, norm_total / n_all, lab.name, (n_pos, n_neg))


def steer(lab, vector: SteeringVector, scale: float) -> Steering:
    """A context manager: inside `with steer(lab, vector, scale):` every forward pass (generate,
    capture, attention, ...) adds scale * vector.norm * vector.direction to layer vector.layer's
    output at every position; capture at that layer reads the steered value."""
    if not isinstance(vector, SteeringVector):
        raise TypeError(f"vector={show(vector)} ({type(vector).__name__}) is not accepted: a SteeringVector "
                        "(from lab.steering_vector) is")
    return Steering(lab, vector, scale)


# ----------------------------------------------------------------------------- suppression

# How the KL between the base and suppressed next-token distributions is taken.
KL_SETTINGS = {
    # The model's own next-token distributions, full vocabulary: no cut-offs, nothing to tune.
    "exact": {"temperature": 1.0, "top_p": 1.0, "max_tokens": None},
    # Thought Anchors' code (attn_supp_funcs.py / logits_funcs.py): softmax at T 0.6 over the union
    # of each side's top-p 0.9999 tokens (at most 100 per side; a side's logit outside its own
    # set is -1e9, as there, so tokens kept by P only dominate the KL).
    "thought_anchors": {"temperature": 0.6, "top_p": 0.9999, "max_tokens": 100},
}
LOG_EPSILON = 1e-9  # score = mean of log(KL + 1e-9), as Thought Anchors


def _nucleus(logits: torch.Tensor, temperature: float, top_p: float, max_tokens: int | None) -> torch.Tensor:
    """[rows, vocab] bool: each row's smallest top set with probability >= top_p (softmax at
    `temperature`), at least 1 and at most `max_tokens` tokens."""
    vocab = logits.shape[-1]
    probs = (logits / temperature).softmax(-1)
    sorted_probs, order = probs.sort(-1, descending=True)
    if top_p >= 1:
        k = torch.full(logits.shape[:-1], vocab, device=logits.device)
    else:  # as torch.searchsorted(cumsum, top_p) + 1
        k = (sorted_probs.cumsum(-1) < top_p).sum(-1) + 1
    if max_tokens is not None:
        k = k.clamp(max=max_tokens)
    k = k.clamp(1, vocab)
    ranked = torch.arange(vocab, device=logits.device)[None, :] < k[:, None]
    return torch.zeros_like(ranked).scatter(-1, order, ranked)


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, *, temperature: float = 1.0, top_p: float = 1.0,
                  max_tokens: int | None = None) -> torch.Tensor:
    """KL(P || Q) in nats per row of [rows, vocab] logits, P = softmax(p_logits / T), Q likewise.

    top_p < 1 or max_tokens: restricted to the union of each side's top-p set (capped at
    max_tokens), a side's logits outside its own set replaced by -1e9 (Thought Anchors' sparse
    KL). Negative rounding is clipped to 0.
    """
    p_logits, q_logits = p_logits.float(), q_logits.float()
    if top_p >= 1 and max_tokens is None:
        log_p, log_q = (p_logits / temperature).log_softmax(-1), (q_logits / temperature).log_softmax(-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1).clamp(min=0)
    keep_p = _nucleus(p_logits, temperature, top_p, max_tokens)
    keep_q = _nucleus(q_logits, temperature, top_p, max_tokens)
    union = keep_p | keep_q
    a = p_logits.masked_fill(~keep_p, -1e9) / temperature
    b = q_logits.masked_fill(~keep_q, -1e9) / temperature
    log_p = a.masked_fill(~union, -math.inf).log_softmax(-1)
    log_q = b.masked_fill(~union, -math.inf).log_softmax(-1)
    p = log_p.exp()
    terms = (p * (log_p - log_q)).masked_fill(~(union & (p > 0)), 0.0)  # outside the union: nan -> 0
    return terms.sum(-1).clamp(min=0)


def _kl_settings(kl: str, temperature, top_p, max_tokens) -> dict:
    check_choice("kl", kl, KL_SETTINGS)
    out = dict(KL_SETTINGS[kl])
    if temperature is not None:
        out["temperature"] = check_float("temperature", temperature, above=0)
    if top_p is not None:
        out["top_p"] = check_float("top_p", top_p, above=0, maximum=1)
    if max_tokens is not None:
        out["max_tokens"] = check_int("max_tokens", max_tokens, minimum=1)
    return out


def _sentences(trace: Trace, kind: str) -> list[dict]:
    """For each sentence: index, label, text and its [start, end) positions (prompt + generated)."""
    segments = trace.segments(kind)
    return [{"sentence": s.index, "label": s.label, "text": s.stripped, "start": start, "end": end}
            for s, (start, end) in zip(segments, segments.positions, strict=True)]


def _check_trace(trace, kind: str) -> list[dict]:
    if not isinstance(trace, Trace):
        raise TypeError(f"trace={show(trace)} ({type(trace).__name__}) is not accepted: a Trace is")
    check_choice("kind", kind, SEGMENT_KINDS)
    sentences = _sentences(trace, kind)
    if not sentences:
        raise ValueError(f"trace has no {kind}s to suppress (its thinking is empty: {shorten(trace.text, 60)!r})")
    return sentences


@torch.no_grad()
def _masked_logits_kl(lab, ids: torch.Tensor, base: torch.Tensor, start: int, end: int, settings: dict,
                      chunk: int = 256) -> torch.Tensor:
    """KL(base || suppressed) of the next-token distribution at every position [n] (0 before `end`);
    `chunk` positions at a time, so only [chunk, vocab] logits exist (the sparse KL keeps ~8 of them)."""
    n = ids.shape[1]
    allowed = torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()
    allowed[end:, start:end] = False  # later tokens may not look at the sentence, in any layer or head
    masked = lab.model.model(ids, attention_mask=allowed[None, None]).last_hidden_state
    kl = torch.zeros(n)
    for s in range(0, n, chunk):
        p = lab.model.lm_head(base[0, s : s + chunk])
        q = lab.model.lm_head(masked[0, s : s + chunk])
        kl[s : s + chunk] = kl_divergence(p, q, **settings).cpu()
    return kl


class SuppressionResult:
    """The effect of suppressing sentence `suppressed`: `kl` [n] per position of the full input
    (prompt + generated; KL of the next-token distribution there, nats), and per sentence
    (`to_frame()`: mean log(KL + 1e-9), mean KL, its [start, end) positions)."""

    def __init__(self, suppressed: int, kl: torch.Tensor, sentences: list[dict], kind: str, settings: dict,
                 trace: Trace | None = None):
        self.suppressed, self.kl, self.sentences, self.kind = suppressed, kl, sentences, kind
        self.settings, self.trace = dict(settings), trace

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """Each sentence's [start, end) positions."""
        return [(s["start"], s["end"]) for s in self.sentences]

    def __repr__(self) -> str:
        return (f"SuppressionResult({self.kind} {self.suppressed} suppressed, max KL {float(self.kl.max()):.4f}, "
                f"T {self.settings['temperature']}, top_p {self.settings['top_p']})")

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for s in self.sentences:
            values = self.kl[s["start"] : s["end"]]
            rows.append({**s, "after_suppressed": s["sentence"] > self.suppressed,
                         "mean_log_kl": float((values + LOG_EPSILON).log().mean()) if len(values) else math.nan,
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
        text = shorten(self.sentences[self.suppressed]["text"], 60)
        return base_layout(fig, title or f"suppressing {self.kind} {self.suppressed} ({text!r})", height=340)

    def save(self, path: str | Path) -> Path:
        """One safetensors file: `kl`, the sentences and settings as JSON."""
        return save_result(path, "SuppressionResult", {"kl": self.kl},
                           {"suppressed": self.suppressed, "sentences": self.sentences, "kind": self.kind,
                            "settings": self.settings})

    @classmethod
    def load(cls, path: str | Path) -> SuppressionResult:
        tensors, meta = load_result(path, "SuppressionResult", ("kl",))
        return cls(int(field(meta, "suppressed", path)), tensors["kl"], field(meta, "sentences", path),
                   field(meta, "kind", path), field(meta, "settings", path))


def _suppression_inputs(lab, trace):
    lab._need_weights("attention suppression")
    ids = encode(lab, trace).ids
    base = lab.model.model(ids).last_hidden_state
    return ids, base


@torch.no_grad()
def suppress_sentence(lab, trace: Trace, sentence: int, kind: str = "sentence", *, kl: str = "exact",
                      temperature: float | None = None, top_p: float | None = None,
                      max_tokens: int | None = None) -> SuppressionResult:
    """Mask attention to one sentence from all later tokens (every layer and head); KL on each later token.

    kl: "exact" (default: KL(P || Q) of the model's own next-token distributions, T = 1, over the
    full vocabulary, which has no cut-off to tune and no discontinuity when a token enters or
    leaves a nucleus) or "thought_anchors" (their code's settings, for numbers comparable with the
    paper: T = 0.6, the union of each side's top-p 0.9999 tokens, at most 100). temperature, top_p,
    max_tokens override the chosen settings. Sentence scores: mean of log(KL + 1e-9).
    """
    sentences = _check_trace(trace, kind)
    sentence = check_int("sentence", sentence, minimum=0, maximum=len(sentences) - 1)
    settings = _kl_settings(kl, temperature, top_p, max_tokens)
    ids, base = _suppression_inputs(lab, trace)
    start, end = sentences[sentence]["start"], sentences[sentence]["end"]
    return SuppressionResult(sentence, _masked_logits_kl(lab, ids, base, start, end, settings), sentences, kind,
                             settings, trace)


class SuppressionMatrix:
    """`matrix` [suppressed sentence i, later sentence j]: mean log(KL + 1e-9) on j's positions
    when i is suppressed (NaN for j <= i); `sentences` with their [start, end) positions."""

    def __init__(self, matrix: torch.Tensor, sentences: list[dict], kind: str, settings: dict):
        self.matrix, self.sentences, self.kind, self.settings = matrix, sentences, kind, dict(settings)

    def __repr__(self) -> str:
        finite = self.matrix[~self.matrix.isnan()]
        top = f", max {float(finite.max()):.3f}" if finite.numel() else ""
        return (f"SuppressionMatrix({len(self.sentences)} {self.kind}s, mean log-KL{top}, "
                f"T {self.settings['temperature']})")

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.matrix.numpy(), index=pd.RangeIndex(len(self.sentences), name="suppressed"),
                             columns=pd.RangeIndex(len(self.sentences), name="later"))
        return frame

    def plot(self, title: str | None = None) -> go.Figure:
        names = [f"{s['sentence']} ({s['label']})" for s in self.sentences]
        hover = [[f"suppressed: {shorten(a['text'], 50)}<br>later: {shorten(b['text'], 50)}" for b in self.sentences]
                 for a in self.sentences]
        fig = go.Figure(go.Heatmap(z=self.matrix.tolist(), x=names, y=names, customdata=hover, colorscale="Viridis",
                                   colorbar=dict(title="mean log KL"),
                                   hovertemplate="%{customdata}<br>%{z:.3f}<extra></extra>"))
        fig.update_yaxes(autorange="reversed", title_text=f"suppressed {self.kind}")
        fig.update_xaxes(title_text=f"later {self.kind}", showticklabels=len(names) <= 40)
        return base_layout(fig, title or f"attention suppression: mean log(KL + 1e-9), {self.kind} x {self.kind}",
                           height=560)

    def save(self, path: str | Path) -> Path:
        return save_result(path, "SuppressionMatrix", {"matrix": self.matrix},
                           {"sentences": self.sentences, "kind": self.kind, "settings": self.settings})

    @classmethod
    def load(cls, path: str | Path) -> SuppressionMatrix:
        tensors, meta = load_result(path, "SuppressionMatrix", ("matrix",))
        return cls(tensors["matrix"], field(meta, "sentences", path), field(meta, "kind", path),
                   field(meta, "settings", path))


@torch.no_grad()
def suppression_matrix(lab, trace: Trace, kind: str = "sentence", *, kl: str = "exact",
                       temperature: float | None = None, top_p: float | None = None,
                       max_tokens: int | None = None) -> SuppressionMatrix:
    """Every sentence suppressed in turn (see `suppress_sentence`, same KL settings): one masked
    forward pass per sentence, the base pass once."""
    sentences = _check_trace(trace, kind)
    settings = _kl_settings(kl, temperature, top_p, max_tokens)
    ids, base = _suppression_inputs(lab, trace)
    count = len(sentences)
    matrix = torch.full((count, count), math.nan)
    for i, s in enumerate(sentences):
        frame = SuppressionResult(i, _masked_logits_kl(lab, ids, base, s["start"], s["end"], settings), sentences,
                                  kind, settings).to_frame()
        for j in frame.index[frame["after_suppressed"]]:
            matrix[i, j] = frame.loc[j, "mean_log_kl"]
    return SuppressionMatrix(matrix, sentences, kind, settings)


__all__ = ["activation_patching", "PatchingResult", "steering_vector", "SteeringVector", "Steering", "steer",
           "suppress_sentence", "SuppressionResult", "suppression_matrix", "SuppressionMatrix", "kl_divergence",
           "KL_SETTINGS"]
