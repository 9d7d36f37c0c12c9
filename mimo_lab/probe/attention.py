"""Attention at reasoning-trace scale: patterns from post-RoPE q/k in query chunks, under sdpa.

The model runs with sdpa (no attention probabilities are ever materialised by it). nnsight
reads one layer's post-RoPE query and key states (`self_attn.source.apply_rotary_pos_emb_0`);
patterns are recomputed here, one head and one block of queries at a time (query head h reads
KV head h // (heads / kv_heads)). Token-level patterns [head, query, key] are kept only for
inputs up to `max_pattern_tokens`; sentence x sentence matrices are reduced block by block, so
memory grows linearly with the trace.

Sentence attention follows Thought Anchors (Bogdan et al. 2025): the mean token-level attention
over each (query sentence i, key sentence j) block (causally valid pairs); a sentence's vertical
score is the mean attention it receives from sentences at least `proximity` (4) later; heads
are ranked by the kurtosis of vertical scores across sentences ("receiver heads").
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
import torch
from transformers import DynamicCache

from mimo_lab.probe.inputs import Encoded, check_layers, encode, quiet_cache_warning, trace_kwargs
from mimo_lab.segment import segment
from mimo_lab.viz.style import base_layout, shorten


def _check_heads(lab, heads) -> list[int]:
    count = lab.model.config.num_attention_heads
    chosen = list(range(count)) if heads is None else ([heads] if isinstance(heads, int) else list(heads))
    for head in chosen:
        if not isinstance(head, int) or not 0 <= head < count:
            raise ValueError(f"head {head!r} out of range: the model has {count} heads per layer (0–{count - 1})")
    return chosen


@torch.no_grad()
def post_rope_qk(lab, ids: torch.Tensor, layer: int,
                 chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(q [heads, n, head_dim], k [kv_heads, n, head_dim]) after RoPE, float32 on the model's device."""
    n = ids.shape[1]
    if lab.remote and chunk_size is not None:
        raise ValueError("chunk_size needs a local model (the KV cache stays on this machine): use chunk_size=None "
                         "with remote execution")
    size = n if chunk_size is None else chunk_size
    cache = DynamicCache(config=lab.model.config) if size < n else None
    qs, ks = [], []
    attn = lab.nn.model.layers[layer].self_attn
    for start in range(0, n, size):
        with quiet_cache_warning(), lab.nn.trace(ids[:, start : start + size], **trace_kwargs(cache),
                                                 **lab.trace_options) as tracer:
            rotated = attn.source.apply_rotary_pos_emb_0.output.save()
            tracer.stop()  # the layers after this one are not needed
        q, k = rotated
        qs.append(q[0].float())
        ks.append(k[0].float())
    return torch.cat(qs, dim=1), torch.cat(ks, dim=1)


def token_groups(encoded: Encoded, kind: str = "sentence", labeller=None) -> tuple[torch.Tensor, list[dict]]:
    """Each token's group: 0 = the prompt (for a trace), then the sentences of the thinking (or of
    the text), then the answer. Returns (group id per token [n], group descriptions)."""
    n = encoded.length
    groups = torch.full((n,), -1, dtype=torch.long)
    info: list[dict] = []
    starts = [s for s, _ in encoded.spans]
    if encoded.trace is not None:
        trace, offset = encoded.trace, encoded.generation_start
        info.append({"name": "prompt", "label": "prompt", "text": "(prompt)"})
        groups[:offset] = 0
        sentences = trace.segments(kind, labeller)
        of_token = sentences.token_segments(trace.spans)
        for s in sentences:
            info.append({"name": f"{kind} {s.index}", "label": s.label, "text": s.stripped})
        for i, seg in enumerate(of_token):
            groups[offset + i] = 1 + seg if seg >= 0 else -1
        inside = (groups[offset:] >= 0).nonzero().flatten()
        if len(inside):  # tokens before the first sentence ("<think>\n") join the prompt group
            groups[offset : offset + int(inside[0])] = 0
        rest = (groups[offset:] == -1).nonzero().flatten()
        if len(rest):
            answer_id = len(info)
            info.append({"name": "answer", "label": "answer", "text": shorten(trace.answer or "(outside)", 80)})
            groups[offset + rest] = answer_id
    else:
        sentences = segment(encoded.text, kind=kind, labeller=labeller)
        for s in sentences:
            info.append({"name": f"{kind} {s.index}", "label": s.label, "text": s.stripped})
        for i, start in enumerate(starts):
            groups[i] = max(0, sentences.at(start))
    return groups, info


class SentenceAttention:
    """Sentence x sentence attention per head: `matrix` [heads, G, G] (mean over the causally valid
    token pairs of each block; NaN where a block has none), groups described by `groups`."""

    def __init__(self, matrix: torch.Tensor, heads: list[int], layer: int, groups: list[dict]):
        self.matrix, self.heads, self.layer, self.groups = matrix, heads, layer, groups

    def __repr__(self) -> str:
        return f"SentenceAttention(layer {self.layer}, heads {self.heads}, {len(self.groups)} groups)"

    def vertical_scores(self, proximity: int = 4) -> torch.Tensor:
        """[heads, G]: mean attention each sentence receives from sentences >= `proximity` later."""
        g = self.matrix.shape[-1]
        far = torch.ones(g, g, dtype=torch.bool).tril(-proximity)  # [i, j]: i >= j + proximity
        values = torch.where(far, self.matrix.nan_to_num(0.0), torch.zeros(()))
        counts = far.sum(0)
        return torch.where(counts > 0, values.sum(1) / counts.clamp(min=1), torch.tensor(math.nan))

    def receiver_kurtosis(self, proximity: int = 4) -> torch.Tensor:
        """[heads]: excess kurtosis of the vertical scores across sentences (prompt/answer excluded)."""
        scores = self.vertical_scores(proximity)
        keep = torch.tensor([grp["label"] not in ("prompt", "answer") for grp in self.groups])
        return kurtosis(scores[:, keep])

    def to_frame(self, head: int | None = None) -> pd.DataFrame:
        h = self.heads.index(head) if head is not None else 0
        names = [grp["name"] for grp in self.groups]
        return pd.DataFrame(self.matrix[h].numpy(), index=names, columns=names)

    def plot(self, head: int | None = None, title: str | None = None) -> go.Figure:
        """Heatmap of one head's (default: the mean over heads) sentence x sentence attention."""
        if head is None:
            z, which = self.matrix.nanmean(0), "mean over heads"
        else:
            if head not in self.heads:
                raise ValueError(f"head {head} was not computed: computed heads {self.heads}")
            z, which = self.matrix[self.heads.index(head)], f"head {head}"
        names = [f"{grp['name']} ({grp['label']})" for grp in self.groups]
        hover = [[f"{shorten(self.groups[i]['text'], 60)}<br>→ {shorten(self.groups[j]['text'], 60)}"
                  for j in range(len(names))] for i in range(len(names))]
        fig = go.Figure(go.Heatmap(z=z.tolist(), x=names, y=names, customdata=hover, colorscale="Viridis",
                                   hovertemplate="%{customdata}<br>%{z:.4f}<extra></extra>",
                                   colorbar=dict(title="attention")))
        fig.update_yaxes(autorange="reversed", title_text="query sentence")
        fig.update_xaxes(title_text="key sentence", showticklabels=len(names) <= 40)
        return base_layout(fig, title or f"sentence attention, layer {self.layer}, {which}", height=560)


def kurtosis(values: torch.Tensor) -> torch.Tensor:
    """Excess kurtosis along the last dimension, ignoring NaN (scipy.stats.kurtosis, fisher=True)."""
    out = []
    for row in values:
        row = row[~torch.isnan(row)].double()
        if row.numel() < 2:
            out.append(math.nan)
            continue
        centred = row - row.mean()
        m2, m4 = centred.pow(2).mean(), centred.pow(4).mean()
        out.append(float(m4 / m2**2 - 3) if m2 > 0 else math.nan)
    return torch.tensor(out)


class AttentionResult:
    """One layer's attention for chosen heads. `.patterns` [head, query, key] (short inputs),
    `.by_sentence()` (any length), `.sink_mass()` [heads]."""

    def __init__(self, lab, encoded: Encoded, layer: int, heads: list[int], q: torch.Tensor, k: torch.Tensor,
                 query_chunk: int, max_pattern_tokens: int):
        self.lab, self.encoded, self.layer, self.heads = lab, encoded, layer, heads
        self.q, self.k = q, k
        self.query_chunk, self.max_pattern_tokens = query_chunk, max_pattern_tokens
        attn = lab.model.model.layers[layer].self_attn
        self.scale = attn.scaling
        self.group = lab.model.config.num_attention_heads // lab.model.config.num_key_value_heads
        self._patterns = None
        self._sink = None

    def __repr__(self) -> str:
        return f"AttentionResult(layer {self.layer}, heads {self.heads}, {self.encoded.length} tokens)"

    @property
    def token_texts(self) -> list[str]:
        return self.encoded.token_texts

    def _blocks(self):
        """Yield (head index, query start, probs [chunk, keys up to query end]) in fp32."""
        n = self.q.shape[1]
        for hi, head in enumerate(self.heads):
            q, k = self.q[head], self.k[head // self.group]
            for start in range(0, n, self.query_chunk):
                end = min(n, start + self.query_chunk)
                scores = (q[start:end] @ k[:end].T) * self.scale
                keys, queries = torch.arange(end, device=q.device), torch.arange(start, end, device=q.device)
                causal = keys[None, :] > queries[:, None]
                yield hi, start, scores.masked_fill(causal, -math.inf).softmax(-1)

    @property
    def patterns(self) -> torch.Tensor:
        """[head, query, key] attention probabilities (float32, CPU) for the chosen heads."""
        n = self.q.shape[1]
        if n > self.max_pattern_tokens:
            raise ValueError(f"{n} tokens is more than max_pattern_tokens={self.max_pattern_tokens} for token-level "
                             "patterns: use .by_sentence() (any length), or raise max_pattern_tokens")
        if self._patterns is None:
            out = torch.zeros(len(self.heads), n, n)
            for hi, start, probs in self._blocks():
                out[hi, start : start + probs.shape[0], : probs.shape[1]] = probs.cpu()
            self._patterns = out
        return self._patterns

    def mass(self, queries, keys) -> torch.Tensor:
        """[heads]: attention from each query position to the set `keys`, summed over the keys and
        averaged over the queries (positions index the whole input: prompt + generated)."""
        n = self.q.shape[1]
        queries, keys = sorted(set(queries)), sorted(set(keys))
        for pos in queries + keys:
            if not isinstance(pos, int) or not 0 <= pos < n:
                raise ValueError(f"position {pos!r} out of range: the input has {n} tokens")
        if not queries or not keys:
            raise ValueError("give at least one query and one key position")
        q_idx = torch.tensor(queries, device=self.q.device)
        k_idx = torch.tensor(keys, device=self.q.device)
        out = torch.zeros(len(self.heads))
        for hi, head in enumerate(self.heads):
            scores = (self.q[head, q_idx] @ self.k[head // self.group].T) * self.scale  # [queries, n]
            future = torch.arange(n, device=scores.device)[None, :] > q_idx[:, None]
            probs = scores.masked_fill(future, -math.inf).softmax(-1)
            out[hi] = float(probs[:, k_idx].sum(-1).mean())
        return out

    def sink_mass(self) -> torch.Tensor:
        """[heads]: mean attention on the first token, over queries after it."""
        if self._sink is None:
            total = torch.zeros(len(self.heads))
            for hi, start, probs in self._blocks():
                rows = probs[max(0, 1 - start):, 0]
                total[hi] += float(rows.sum())
            self._sink = total / max(1, self.q.shape[1] - 1)
        return self._sink

    def by_sentence(self, kind: str = "sentence", labeller=None) -> SentenceAttention:
        groups, info = token_groups(self.encoded, kind, labeller)
        if (groups < 0).any() or (groups[1:] < groups[:-1]).any():
            raise ValueError("sentence groups must cover every token in order (contiguous spans)")
        groups = groups.to(self.q.device)
        count = len(info)
        # Only [query chunk, keys] and [groups, groups] arrays ever exist: memory is linear in the trace.
        sums = torch.zeros(len(self.heads), count, count, device=self.q.device)
        for hi, start, probs in self._blocks():
            by_key = torch.zeros(probs.shape[0], count, device=probs.device)
            by_key.index_add_(1, groups[: probs.shape[1]], probs)
            sums[hi].index_add_(0, groups[start : start + probs.shape[0]], by_key)
        # Causally valid (query, key) pairs per block, from the contiguous group sizes alone.
        sizes = torch.bincount(groups, minlength=count).double().cpu()
        pairs = sizes[:, None] * sizes[None, :]
        pairs = pairs.tril(-1) + torch.diag(sizes * (sizes + 1) / 2)
        matrix = torch.where(pairs > 0, sums.double().cpu() / pairs.clamp(min=1), torch.tensor(math.nan,
                                                                                               dtype=torch.float64))
        return SentenceAttention(matrix.float(), self.heads, self.layer, info)

    def plot(self, head: int | None = None, start: int = 0, end: int | None = None, kind: str = "sentence"):
        """Token-level heatmap for windows up to ~2k tokens; sentence level beyond."""
        n = self.q.shape[1]
        end = n if end is None else min(end, n)
        if end - start > 2048 or n > self.max_pattern_tokens:
            return self.by_sentence(kind).plot(head)
        h = 0 if head is None else self.heads.index(head)
        z = self.patterns[h, start:end, start:end]
        labels = [f"{i}:{t!r}" for i, t in enumerate(self.token_texts)][start:end]
        fig = go.Figure(go.Heatmap(z=z.tolist(), x=labels, y=labels, colorscale="Viridis",
                                   hovertemplate="query %{y}<br>key %{x}<br>%{z:.4f}<extra></extra>"))
        fig.update_yaxes(autorange="reversed", showticklabels=end - start <= 80)
        fig.update_xaxes(showticklabels=end - start <= 80)
        return base_layout(fig, f"attention, layer {self.layer}, head {self.heads[h]}", height=600)


def attention(lab, text_or_trace, layer: int, heads=None, *, query_chunk: int = 512, chunk_size: int | None = None,
              max_pattern_tokens: int = 4096) -> AttentionResult:
    """Attention of `layer`'s heads (None: all) over a text or a Trace (see the module doc)."""
    if not isinstance(layer, int):
        raise ValueError(f"layer must be one integer, got {layer!r}")
    layer = check_layers(lab, [layer])[0]
    heads = _check_heads(lab, heads)
    if not isinstance(query_chunk, int) or query_chunk < 1:
        raise ValueError(f"query_chunk {query_chunk!r} is not allowed: use an integer >= 1")
    encoded = encode(lab, text_or_trace)
    q, k = post_rope_qk(lab, encoded.ids, layer, chunk_size)
    return AttentionResult(lab, encoded, layer, heads, q, k, query_chunk, max_pattern_tokens)


class HeadScores:
    """A score per (layer, head), e.g. attention mass from some positions to others."""

    value, colorscale = "score", "Viridis"

    def __init__(self, frame: pd.DataFrame, what: str):
        self.frame, self.what = frame, what

    def __repr__(self) -> str:
        best = ", ".join(f"L{r.layer}H{r.head} {getattr(r, self.value):.3f}" for r in self.top(3).itertuples())
        return f"{type(self).__name__}({self.what}; top: {best})"

    def to_frame(self) -> pd.DataFrame:
        return self.frame

    def top(self, count: int = 10) -> pd.DataFrame:
        return self.frame.sort_values(self.value, ascending=False).head(count)

    def plot(self, title: str | None = None) -> go.Figure:
        grid = self.frame.pivot(index="layer", columns="head", values=self.value)
        fig = go.Figure(go.Heatmap(z=grid.values.tolist(), x=[f"H{h}" for h in grid.columns],
                                   y=[f"L{layer}" for layer in grid.index], colorscale=self.colorscale,
                                   colorbar=dict(title=self.value),
                                   hovertemplate="%{y} %{x}<br>%{z:.3f}<extra></extra>"))
        fig.update_yaxes(autorange="reversed")
        return base_layout(fig, title or self.what, height=160 + 30 * len(grid.index))


class ReceiverHeads(HeadScores):
    """Receiver-head scores for every (layer, head): kurtosis of sentence vertical scores."""

    value, colorscale = "kurtosis", "Magma"

    def __init__(self, frame: pd.DataFrame, proximity: int):
        super().__init__(frame, f"receiver-head scores (kurtosis of vertical scores, proximity ≥ {proximity})")
        self.proximity = proximity


def attention_between(lab, text_or_trace, queries, keys, layers=None, what: str | None = None) -> HeadScores:
    """For every (layer, head): attention mass from `queries` to `keys` (see `AttentionResult.mass`)."""
    layers = check_layers(lab, layers)
    rows = []
    for layer in layers:
        masses = attention(lab, text_or_trace, layer).mass(queries, keys)
        rows += [{"layer": layer, "head": head, "score": float(m)} for head, m in enumerate(masses)]
    what = what or f"attention from {len(set(queries))} queries to {len(set(keys))} keys"
    return HeadScores(pd.DataFrame(rows), what)


def receiver_heads(lab, traces, layers=None, proximity: int = 4, kind: str = "sentence") -> ReceiverHeads:
    """Score every head of `layers` by the kurtosis of vertical scores, averaged over traces."""
    traces = [traces] if not isinstance(traces, list | tuple) else list(traces)
    layers = check_layers(lab, layers)
    rows = []
    for layer in layers:
        per_trace, sinks = [], []
        for trace in traces:
            result = attention(lab, trace, layer)
            per_trace.append(result.by_sentence(kind).receiver_kurtosis(proximity))
            sinks.append(result.sink_mass())
        mean = torch.stack(per_trace).nanmean(0)
        sinks = torch.stack(sinks).mean(0)
        for head in range(mean.numel()):
            rows.append({"layer": layer, "head": head, "kurtosis": float(mean[head]), "sink_mass": float(sinks[head])})
    return ReceiverHeads(pd.DataFrame(rows), proximity)


__all__ = ["attention", "AttentionResult", "SentenceAttention", "receiver_heads", "ReceiverHeads", "kurtosis",
           "post_rope_qk", "attention_between", "HeadScores"]
