"""Logit lens (top-k per layer and position, never layers x seq x vocab) and MiMo's MTP lens."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import torch
from safetensors.torch import load_file, save_file

from mimo_lab.generation import TokenDecoder
from mimo_lab.probe.capture import iter_chunks
from mimo_lab.probe.inputs import check_layers, encode
from mimo_lab.viz.style import base_layout


class LensResult:
    """Logit lens over a sequence. For layer l (row) and position t (column):
    `top_ids` / `top_probs` [layers, seq, k]: the unembedded residual's k most likely next tokens;
    `target_prob` / `target_rank` [layers, seq]: probability and rank of the token actually at t+1
    (NaN / -1 at the last position)."""

    def __init__(self, layers, token_texts, top_ids, top_probs, target_prob, target_rank, top_texts, model_name=""):
        self.layers, self.token_texts = list(layers), token_texts
        self.top_ids, self.top_probs = top_ids, top_probs
        self.target_prob, self.target_rank = target_prob, target_rank
        self.top_texts, self.model_name = top_texts, model_name

    def __repr__(self) -> str:
        k = self.top_ids.shape[-1]
        return f"LensResult({len(self.layers)} layers x {len(self.token_texts)} positions, top-{k})"

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for li, layer in enumerate(self.layers):
            for pos in range(len(self.token_texts)):
                rows.append({"layer": layer, "position": pos, "token": self.token_texts[pos],
                             "top1": self.top_texts[li][pos][0], "top1_prob": float(self.top_probs[li, pos, 0]),
                             "target_prob": float(self.target_prob[li, pos]),
                             "target_rank": int(self.target_rank[li, pos])})
        return pd.DataFrame(rows)

    def plot(self, start: int = 0, end: int | None = None, title: str | None = None) -> go.Figure:
        """Layers x positions: colour = probability of the actual next token, text = top-1 guess."""
        end = len(self.token_texts) if end is None else end
        cols = range(start, min(end, len(self.token_texts)))
        z = [[float(self.target_prob[li, c]) for c in cols] for li in range(len(self.layers))]
        text = [[self.top_texts[li][c][0] for c in cols] for li in range(len(self.layers))]
        hover = [[f"L{layer} pos {c} after {self.token_texts[c]!r}<br>top: " + ", ".join(
            f"{t!r} {float(p):.2f}" for t, p in zip(self.top_texts[li][c], self.top_probs[li, c].tolist(), strict=True))
            for c in cols] for li, layer in enumerate(self.layers)]
        fig = go.Figure(go.Heatmap(z=z, text=text, texttemplate="%{text}", hovertext=hover, hoverinfo="text",
                                   x=[f"{c}:{self.token_texts[c]!r}" for c in cols],
                                   y=[f"L{layer}" for layer in self.layers], colorscale="Blues", zmin=0, zmax=1,
                                   colorbar=dict(title="p(next)")))
        return base_layout(fig, title or "logit lens: top-1 guess per layer, colour = p(actual next token)",
                           height=140 + 34 * len(self.layers))

    def save(self, path: str | Path) -> Path:
        import json

        save_file({"top_ids": self.top_ids, "top_probs": self.top_probs, "target_prob": self.target_prob,
                   "target_rank": self.target_rank}, str(path),
                  metadata={"layers": json.dumps(self.layers), "token_texts": json.dumps(self.token_texts),
                            "top_texts": json.dumps(self.top_texts), "model_name": self.model_name})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> LensResult:
        import json

        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        t = load_file(str(path))
        return cls(json.loads(meta["layers"]), json.loads(meta["token_texts"]), t["top_ids"], t["top_probs"],
                   t["target_prob"], t["target_rank"], json.loads(meta["top_texts"]), meta["model_name"])


@torch.no_grad()
def logit_lens(lab, text_or_trace, layers=None, k: int = 5, chunk_size: int | None = 1024) -> LensResult:
    """Unembed each layer's residual (final norm, then lm_head) and keep the top-k per position.

    Runs in chunks of `chunk_size` tokens (KV cache): memory never holds layers x seq x vocab.
    """
    layers = check_layers(lab, layers)
    lab._need_weights("the logit lens (it unembeds on this machine)")
    if lab.remote and chunk_size is not None:
        chunk_size = None  # remote traces cannot carry a local KV cache
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k {k!r} is not allowed: use an integer >= 1")
    encoded = encode(lab, text_or_trace)
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
    return LensResult(layers, encoded.token_texts, top_ids, top_probs, target_prob, target_rank, top_texts, lab.name)


class MTPLens:
    """The MTP head's t+2 guesses along a trace: per generated token i, the guess made at i for
    token i+2, its probability, whether it came true, and the sentence label it sits in."""

    def __init__(self, trace, frame: pd.DataFrame):
        self.trace, self.frame = trace, frame

    def __repr__(self) -> str:
        known = self.frame[self.frame["hit"] >= 0]
        return f"MTPLens({len(self.frame)} tokens, t+2 accuracy {known['hit'].mean():.1%})"

    def to_frame(self) -> pd.DataFrame:
        return self.frame

    @property
    def accuracy(self) -> float:
        known = self.frame[self.frame["hit"] >= 0]
        return float(known["hit"].mean()) if len(known) else math.nan

    def by_label(self) -> pd.DataFrame:
        """t+2 accuracy and mean probability of the true token, by the sentence label of token i."""
        known = self.frame[self.frame["hit"] >= 0]
        return (known.groupby("label").agg(tokens=("hit", "size"), accuracy=("hit", "mean"),
                                           mean_target_prob=("target_prob", "mean"))
                .sort_values("accuracy"))

    def plot(self, title: str | None = None) -> go.Figure:
        f = self.frame
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=f.index, y=f["target_prob"], mode="lines", name="p(true token i+2)",
                                 line=dict(color="#b279a2", width=1), text=f["token"],
                                 hovertemplate="#%{x} after %{text!r}<br>p=%{y:.3f}<extra></extra>"))
        misses = f[f["hit"] == 0]
        fig.add_trace(go.Scatter(x=misses.index, y=misses["target_prob"], mode="markers", name="guess missed",
                                 marker=dict(color="#e45756", size=6), text=misses["guess"],
                                 hovertemplate="#%{x} guessed %{text!r}<extra></extra>"))
        fig.update_yaxes(range=[0, 1.02], title_text="probability")
        fig.update_xaxes(title_text="generated token position")
        default = f"MTP head agreement along the trace ({self.accuracy:.1%} of guesses came true)"
        return base_layout(fig, title or default, height=320)


@torch.no_grad()
def mtp_lens(lab, trace) -> MTPLens:
    """The MTP lens of a trace (runs the MTP head now if the trace has no MTP analytics yet)."""
    from mimo_lab.generation import mtp_analytics
    from mimo_lab.trace import Trace

    if not isinstance(trace, Trace):
        raise ValueError(f"mtp_lens needs a Trace (from Lab.generate), got {type(trace).__name__}")
    if not lab.has_mtp:
        raise ValueError(f"{lab.name} has no MTP head: the MTP lens needs a MiMo model")
    mtp = trace.mtp if trace.mtp is not None else mtp_analytics(lab.model, trace.prompt_ids, trace.token_ids)
    decoder = TokenDecoder(lab.tokenizer)
    sentence_of = trace.sentences.token_segments(trace.spans)
    labels = [trace.sentences[s].label if s >= 0 else "answer" for s in sentence_of]
    frame = pd.DataFrame({
        "token": trace.token_texts, "guess": [decoder.token_text(i) if i >= 0 else "" for i in mtp["pred_id"].tolist()],
        "guess_prob": mtp["pred_prob"].tolist(), "target_prob": mtp["target_prob"].tolist(),
        "hit": mtp["hit"].tolist(), "sentence": sentence_of, "label": labels,
    }, index=pd.RangeIndex(len(trace), name="position"))
    return MTPLens(trace, frame)
