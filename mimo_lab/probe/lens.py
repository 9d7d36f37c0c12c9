"""Logit lens (top-k per layer and position, never layers x seq x vocab) and MiMo's MTP lens.

Positions are those of the whole sequence the model reads (a Trace's prompt tokens, then its
generated tokens), so a position from `trace.forking_tokens()` or any other result indexes
these results unchanged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import torch
from safetensors.torch import save_file

from mimo_lab.checks import check_bool, check_int, check_path
from mimo_lab.generation import TokenDecoder
from mimo_lab.probe.capture import check_chunk_size, check_window, iter_chunks, meta_field, read_saved, tensor_field
from mimo_lab.probe.inputs import Encoded, SequencePositions, as_batch, check_layers, encode
from mimo_lab.viz.style import base_layout

# ----------------------------------------------------------------------------- logit lens


class LensResult(SequencePositions):
    """Logit lens over a sequence. For layer l (row, in `layers` order) and position p (column):
    `top_ids` / `top_probs` [layers, positions, k]: the unembedded residual's k most likely next
    tokens; `target_prob` / `target_rank` [layers, positions]: probability and rank of the token
    actually at p+1 (NaN / -1 at the last position). `positions` = 0 .. n-1; `prompt_length`:
    the position of a Trace's first generated token (0 for a text)."""

    def __init__(self, layers, token_texts, top_ids, top_probs, target_prob, target_rank, top_texts, model_name="",
                 generation_start: int = 0):
        self.layers, self.token_texts = list(layers), token_texts
        self.top_ids, self.top_probs = top_ids, top_probs
        self.target_prob, self.target_rank = target_prob, target_rank
        self.top_texts, self.model_name = top_texts, model_name
        self.generation_start = generation_start

    def __repr__(self) -> str:
        k = self.top_ids.shape[-1]
        return (f"LensResult({len(self.layers)} layers {self.layers} x {len(self.token_texts)} positions "
                f"(generation from {self.generation_start}), top-{k}, model {self.model_name!r})")

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, position): the top-1 guess and the actual next token's probability and rank."""
        rows = []
        for li, layer in enumerate(self.layers):
            for pos in range(len(self.token_texts)):
                rows.append({"layer": layer, "position": pos, "token": self.token_texts[pos],
                             "top1": self.top_texts[li][pos][0], "top1_prob": float(self.top_probs[li, pos, 0]),
                             "target_prob": float(self.target_prob[li, pos]),
                             "target_rank": int(self.target_rank[li, pos])})
        return pd.DataFrame(rows)

    def at(self, position: int) -> pd.DataFrame:
        """The top-k guesses of every layer at one position: columns layer, rank, token, prob."""
        position = check_int("position", position)
        if not 0 <= position < len(self.token_texts):
            raise ValueError(f"position={position} is out of range: this result covers positions 0 to "
                             f"{len(self.token_texts) - 1}")
        return pd.DataFrame([{"layer": layer, "rank": r, "token": self.top_texts[li][position][r],
                              "prob": float(self.top_probs[li, position, r])}
                             for li, layer in enumerate(self.layers) for r in range(self.top_ids.shape[-1])])

    def plot(self, start: int | None = None, end: int | None = None, title: str | None = None) -> go.Figure:
        """Layers x positions [start, end): colour = probability of the actual next token, text = top-1 guess."""
        start, end = check_window(start, end, len(self.token_texts))
        cols = range(start, end)
        z = [[float(self.target_prob[li, c]) for c in cols] for li in range(len(self.layers))]
        text = [[self.top_texts[li][c][0] for c in cols] for li in range(len(self.layers))]
        hover = [[f"L{layer} pos {c} after {self.token_texts[c]!r}<br>top: " + ", ".join(
            f"{t!r} {float(p):.2f}" for t, p in zip(self.top_texts[li][c], self.top_probs[li, c].tolist(), strict=True))
            for c in cols] for li, layer in enumerate(self.layers)]
        fig = go.Figure(go.Heatmap(z=z, text=text, texttemplate="%{text}", hovertext=hover, hoverinfo="text",
                                   x=[f"{c}:{self.token_texts[c]!r}" for c in cols],
                                   y=[f"L{layer}" for layer in self.layers], colorscale="Blues", zmin=0, zmax=1,
                                   colorbar=dict(title="p(next)")))
        fig.update_xaxes(title_text="position:token")
        return base_layout(fig, title or "logit lens: top-1 guess per layer, colour = p(actual next token)",
                           height=140 + 34 * len(self.layers))

    def save(self, path: str | Path) -> Path:
        """One safetensors file: the four tensors and JSON metadata (layers, texts, model)."""
        path = check_path("path", path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"top_ids": self.top_ids.contiguous(), "top_probs": self.top_probs.contiguous(),
                   "target_prob": self.target_prob.contiguous(), "target_rank": self.target_rank.contiguous()},
                  str(path), metadata={"kind": "LensResult", "layers": json.dumps(self.layers),
                                       "token_texts": json.dumps(self.token_texts),
                                       "top_texts": json.dumps(self.top_texts), "model_name": self.model_name,
                                       "generation_start": str(self.generation_start)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> LensResult:
        kind = "LensResult"
        tensors, meta, path = read_saved(path, kind)
        layers = meta_field(meta, "layers", path, kind)
        texts = meta_field(meta, "token_texts", path, kind)
        top_texts = meta_field(meta, "top_texts", path, kind)
        shape = (len(layers), len(texts))
        top_ids = tensor_field(tensors, "top_ids", path, kind, shape)
        fields = [tensor_field(tensors, name, path, kind, shape)
                  for name in ("top_probs", "target_prob", "target_rank")]
        if len(top_texts) != len(layers) or any(len(row) != len(texts) for row in top_texts):
            raise ValueError(f"{kind}.load: field 'top_texts' of {str(path)!r} does not match its {len(layers)} "
                             f"layers x {len(texts)} positions: the file is corrupt")
        return cls(layers, texts, top_ids, *fields, top_texts, meta.get("model_name", ""),
                   meta_field(meta, "generation_start", path, kind, parse=int, default=0))


@torch.no_grad()
def logit_lens(lab, text_or_trace, layers=None, k: int = 5, chunk_size: int | None = 1024
               ) -> LensResult | list[LensResult]:
    """Unembed each layer's residual (final norm, then lm_head) and keep the top-k per position.

    text_or_trace: a text, a Trace, or a list of them (a list of results). layers: None (all),
    an int or a list in any order (results follow it). k: 1 .. vocabulary size. Runs in chunks of
    `chunk_size` tokens (KV cache): memory never holds layers x seq x vocab.
    """
    layers = check_layers(lab, layers)
    vocab = int(lab.model.config.vocab_size)
    k = check_int("k", k, minimum=1, maximum=vocab)
    chunk_size = check_chunk_size(chunk_size)
    inputs, single = as_batch(text_or_trace)
    lab._need_weights("the logit lens (it unembeds on this machine)")
    if lab.remote and chunk_size is not None:
        chunk_size = None  # remote traces cannot carry a local KV cache
    encoded = [encode(lab, item) for item in inputs]
    results = [_logit_lens_one(lab, enc, layers, k, chunk_size) for enc in encoded]
    return results[0] if single else results


def _logit_lens_one(lab, encoded: Encoded, layers: list[int], k: int, chunk_size: int | None) -> LensResult:
    ids = encoded.ids[0].cpu()
    n = ids.numel()
    norm, head = lab.model.model.norm, lab.model.lm_head
    top_ids = torch.zeros(len(layers), n, k, dtype=torch.long)
    top_probs = torch.zeros(len(layers), n, k)
    target_prob = torch.full((len(layers), n), math.nan)
    target_rank = torch.full((len(layers), n), -1, dtype=torch.long)
    for start, chunk in iter_chunks(lab, encoded.ids, ("resid",), layers, chunk_size):
        for li, layer in enumerate(layers):
            resid = chunk[("resid", layer)].to(lab.device, dtype=lab.model.dtype)
            logprobs = head(norm(resid)).float().log_softmax(-1).cpu()
            rows = slice(start, start + resid.shape[0])
            top = logprobs.topk(k, dim=-1)
            top_ids[li, rows], top_probs[li, rows] = top.indices, top.values.exp()
            positions = torch.arange(start, start + resid.shape[0])
            has_next = positions + 1 < n
            nxt = ids[(positions + 1).clamp(max=n - 1)]
            picked = logprobs.gather(-1, nxt[:, None])[:, 0]
            target_prob[li, rows] = torch.where(has_next, picked.exp(), torch.tensor(math.nan))
            rank = (logprobs > picked[:, None]).sum(-1)
            target_rank[li, rows] = torch.where(has_next, rank, torch.tensor(-1))
    decoder = TokenDecoder(lab.tokenizer)
    top_texts = [[[decoder.token_text(i) for i in top_ids[li, pos].tolist()] for pos in range(n)]
                 for li in range(len(layers))]
    return LensResult(layers, encoded.token_texts, top_ids, top_probs, target_prob, target_rank, top_texts, lab.name,
                      encoded.generation_start)


# ----------------------------------------------------------------------------- MTP lens


class MTPLens:
    """The MTP head's t+2 guesses along a sequence: at position p, its guess for the token at p+2,
    that guess's probability, the probability it gave the token actually there, whether it came
    true (`hit`: 1 / 0 / -1 where there is no token p+2), and the sentence label p sits in.

    For a Trace the rows are its generated positions (prompt_length .. n-1), for a text every
    position; `positions` lists them. `zero_first_embedding` records the slot-0 convention used.
    Tensors [rows]: `positions`, `guess_ids`, `guess_probs`, `target_probs`, `hits`, `entropies` (nats).
    """

    _TENSORS = ("positions", "guess_ids", "guess_probs", "target_probs", "hits", "entropies", "sentences")
    _TEXTS = ("token_texts", "guess_texts", "target_texts", "labels")

    def __init__(self, *, positions, guess_ids, guess_probs, target_probs, hits, entropies, sentences, token_texts,
                 guess_texts, target_texts, labels, model_name: str = "", zero_first_embedding: bool = False,
                 prompt_length: int = 0, trace=None):
        self.positions, self.guess_ids, self.guess_probs = positions, guess_ids, guess_probs
        self.target_probs, self.hits, self.entropies, self.sentences = target_probs, hits, entropies, sentences
        self.token_texts, self.guess_texts = token_texts, guess_texts
        self.target_texts, self.labels = target_texts, labels
        self.model_name, self.zero_first_embedding = model_name, zero_first_embedding
        self.prompt_length, self.trace = prompt_length, trace

    def __len__(self) -> int:
        return int(self.positions.numel())

    @property
    def frame(self) -> pd.DataFrame:
        return self.to_frame()

    def to_frame(self) -> pd.DataFrame:
        """One row per position (the index): token, guess (for p+2), guess_prob, target (the token at
        p+2), target_prob, hit, entropy, sentence, label."""
        return pd.DataFrame({
            "token": self.token_texts, "guess": self.guess_texts, "guess_prob": self.guess_probs.tolist(),
            "target": self.target_texts, "target_prob": self.target_probs.tolist(), "hit": self.hits.tolist(),
            "entropy": self.entropies.tolist(), "sentence": self.sentences.tolist(), "label": self.labels,
        }, index=pd.Index(self.positions.tolist(), name="position"))

    @property
    def accuracy(self) -> float:
        """Share of guesses that came true, over positions that have a token p+2 (NaN if none)."""
        known = self.hits >= 0
        return float(self.hits[known].float().mean()) if known.any() else math.nan

    def __repr__(self) -> str:
        first, last = (int(self.positions[0]), int(self.positions[-1])) if len(self) else (0, -1)
        convention = "slot 0 zeroed" if self.zero_first_embedding else "slot 0 unmasked"
        return (f"MTPLens({len(self)} positions {first}..{last}, t+2 accuracy {self.accuracy:.1%}, {convention}, "
                f"model {self.model_name!r})")

    def by_label(self) -> pd.DataFrame:
        """t+2 accuracy and mean probability of the true token, by the sentence label of position p."""
        frame = self.to_frame()
        known = frame[frame["hit"] >= 0]
        return (known.groupby("label").agg(tokens=("hit", "size"), accuracy=("hit", "mean"),
                                           mean_target_prob=("target_prob", "mean"))
                .sort_values("accuracy"))

    def plot(self, start: int | None = None, end: int | None = None, title: str | None = None) -> go.Figure:
        """p(true token p+2) along positions [start, end) (default: all rows), misses marked."""
        if not len(self):
            raise ValueError("this MTP lens has no positions to plot")
        first = int(self.positions[0])
        start, end = check_window(start, end, first + len(self), first=first)
        f = self.to_frame().loc[start : end - 1]
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=f.index, y=f["target_prob"], mode="lines", name="p(true token p+2)",
                                 line=dict(color="#b279a2", width=1), text=f["token"],
                                 hovertemplate="pos %{x} after %{text!r}<br>p=%{y:.3f}<extra></extra>"))
        misses = f[f["hit"] == 0]
        fig.add_trace(go.Scatter(x=misses.index, y=misses["target_prob"], mode="markers", name="guess missed",
                                 marker=dict(color="#e45756", size=6), text=misses["guess"],
                                 hovertemplate="pos %{x} guessed %{text!r}<extra></extra>"))
        fig.update_yaxes(range=[0, 1.02], title_text="probability")
        fig.update_xaxes(title_text="position")
        default = f"MTP head agreement along the trace ({self.accuracy:.1%} of guesses came true)"
        return base_layout(fig, title or default, height=320)

    def save(self, path: str | Path) -> Path:
        """One safetensors file: the per-position tensors and JSON metadata (texts, labels, convention)."""
        path = check_path("path", path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"kind": "MTPLens", "model_name": self.model_name,
                "zero_first_embedding": json.dumps(self.zero_first_embedding),
                "prompt_length": str(self.prompt_length)}
        meta.update({name: json.dumps(getattr(self, name)) for name in self._TEXTS})
        save_file({name: getattr(self, name).contiguous() for name in self._TENSORS}, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> MTPLens:
        kind = "MTPLens"
        tensors, meta, path = read_saved(path, kind)
        texts = {name: meta_field(meta, name, path, kind) for name in cls._TEXTS}
        rows = len(texts["token_texts"])
        values = {name: tensor_field(tensors, name, path, kind, (rows,)) for name in cls._TENSORS}
        for name, value in texts.items():
            if len(value) != rows:
                raise ValueError(f"{kind}.load: field {name!r} of {str(path)!r} has {len(value)} entries, "
                                 f"'token_texts' {rows}: the file is corrupt")
        zero = meta_field(meta, "zero_first_embedding", path, kind)
        return cls(**values, **texts, model_name=meta.get("model_name", ""), zero_first_embedding=bool(zero),
                   prompt_length=meta_field(meta, "prompt_length", path, kind, parse=int, default=0))


def mtp_convention(lab, zero_first_embedding: bool | None) -> bool:
    """The slot-0 convention: the caller's, else the model card's, else the checkpoint config's."""
    zero = check_bool("zero_first_embedding", zero_first_embedding, none_ok=True)
    if zero is None:
        zero = getattr(lab.card, "mtp_zero_first_embedding", None)
    if zero is None:
        zero = lab.model.model.resolve_zero_first_embedding(None)
    return bool(zero)


@torch.no_grad()
def mtp_lens(lab, text_or_trace, *, zero_first_embedding: bool | None = None, chunk_size: int = 1024
             ) -> MTPLens | list[MTPLens]:
    """Run this lab's MTP head over a text or a Trace (or a list of them) and report its t+2 guesses.

    Always computed now, by this lab: a Trace's stored MTP analytics (possibly another model's)
    are never read. zero_first_embedding: True zeroes the token embedding of the MTP layer's slot 0
    (vLLM / SGLang), False leaves it; None: the model card's convention (MiMo-7B: True; MiMo-nano:
    False, as it was trained). chunk_size: slots unembedded at a time.
    """
    if not lab.has_mtp:
        raise ValueError(f"lab {lab.name!r} has no MTP head: the MTP lens needs a MiMo model")
    zero = mtp_convention(lab, zero_first_embedding)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    inputs, single = as_batch(text_or_trace)
    lab._need_weights("the MTP lens (it runs the MTP head on this machine)")
    encoded = [encode(lab, item) for item in inputs]
    results = [_mtp_lens_one(lab, enc, zero, chunk_size) for enc in encoded]
    return results[0] if single else results


def _mtp_lens_one(lab, encoded: Encoded, zero: bool, chunk_size: int) -> MTPLens:
    ids = encoded.ids
    n = encoded.length
    first = encoded.generation_start if encoded.trace is not None else 0
    positions = torch.arange(first, n)
    rows = positions.numel()
    guess_ids = torch.full((rows,), -1, dtype=torch.long)
    guess_probs, target_probs, entropies = (torch.full((rows,), math.nan) for _ in range(3))
    if n >= 2:
        pred = {k: v[0].float().cpu() if v.is_floating_point() else v[0].cpu()
                for k, v in lab.model.mtp_predictions(ids, chunk_size=chunk_size, zero_first_embedding=zero).items()}
        has_slot = positions < n - 1  # slot p (p = 0 .. n-2) predicts the token at p+2
        slot = positions[has_slot]
        guess_ids[has_slot], guess_probs[has_slot] = pred["top_id"][slot], pred["top_prob"][slot]
        target_probs[has_slot], entropies[has_slot] = pred["target_prob"][slot], pred["entropy"][slot]
    flat = ids[0].cpu()
    has_target = positions + 2 < n
    hits = torch.full((rows,), -1, dtype=torch.long)
    hits[has_target] = (guess_ids[has_target] == flat[positions[has_target] + 2]).long()
    target_probs[~has_target] = math.nan
    decoder = TokenDecoder(lab.tokenizer)
    sentences, labels = _sentence_labels(encoded, first)
    return MTPLens(
        positions=positions, guess_ids=guess_ids, guess_probs=guess_probs, target_probs=target_probs, hits=hits,
        entropies=entropies, sentences=torch.tensor(sentences, dtype=torch.long),
        token_texts=encoded.token_texts[first:],
        guess_texts=[decoder.token_text(i) if i >= 0 else "" for i in guess_ids.tolist()],
        target_texts=[encoded.token_texts[p + 2] if p + 2 < n else "" for p in positions.tolist()],
        labels=labels, model_name=lab.name, zero_first_embedding=zero, prompt_length=encoded.generation_start,
        trace=encoded.trace)


def _sentence_labels(encoded: Encoded, first: int) -> tuple[list[int], list[str]]:
    """Per covered position: the index of the sentence it starts in (-1 outside) and its label.

    A Trace: its thinking's sentences ("answer" outside them); a text: the text's own sentences."""
    if encoded.trace is not None:
        trace = encoded.trace
        sentence_of = trace.sentences.token_segments(trace.spans)
        labels = [trace.sentences[s].label if s >= 0 else "answer" for s in sentence_of]
        return list(sentence_of), labels
    from mimo_lab.segment import segment

    sentences = segment(encoded.text)
    sentence_of = sentences.token_segments(encoded.spans[first:])
    return list(sentence_of), [sentences[s].label if s >= 0 else "other" for s in sentence_of]
