"""Attention at reasoning-trace scale: patterns from post-RoPE q/k in query chunks, under sdpa.

The model runs with sdpa (no attention probabilities are ever materialised by it). nnsight
reads one layer's post-RoPE query and key states (`self_attn.source.apply_rotary_pos_emb_0`);
patterns are recomputed here, one head and one block of queries at a time (query head h reads
KV head h // (heads / kv_heads)). Token-level patterns [head, query, key] are kept only for
inputs up to `max_pattern_tokens`; sentence x sentence matrices are reduced block by block, so
memory grows linearly with the trace.

Positions: a position is an index into the full token sequence the model reads (a Trace's
prompt tokens first, then its generated tokens; a text's tokens in order), the query / key
index of every pattern, the positions `.mass()` takes and the `start` / `end` of every group.

Sentence attention follows Thought Anchors (Bogdan et al. 2025): the mean token-level attention
over each (query sentence i, key sentence j) block (causally valid pairs); a sentence's vertical
score is the mean attention it receives from reasoning sentences at least `proximity` (4) later,
over the reasoning sentences only (the prompt and the answer after </think> are neither rows nor
columns); heads are ranked by the kurtosis of vertical scores across sentences (scipy's
`kurtosis(fisher=True, bias=True, nan_policy="omit")`), averaged over traces ("receiver heads").
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import DynamicCache

from mimo_lab.checks import check_choice, check_int, check_path, show
from mimo_lab.probe.inputs import Encoded, check_layers, encode, need_model, quiet_cache_warning, trace_kwargs
from mimo_lab.segment import SEGMENT_KINDS, segment
from mimo_lab.trace import Trace
from mimo_lab.viz.style import base_layout, shorten

# ----------------------------------------------------------------------------- argument checks


def check_input(value, name: str = "text_or_trace"):
    """A non-empty text or a Trace (TypeError for anything else, ValueError for '')."""
    if isinstance(value, Trace):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{name}={show(value)} ({type(value).__name__}) is not accepted: a text (str) or a Trace is")
    if not value:
        raise ValueError(f"{name}='' is empty: a non-empty text or a Trace is accepted")
    return value


def check_layer(lab, layer, name: str = "layer") -> int:
    """One layer index (negative counts from the end) -> 0..layers-1."""
    count = lab.num_layers
    return check_int(name, layer, minimum=-count, maximum=count - 1) % count


def check_layer_list(lab, layers, name: str = "layers") -> list[int]:
    """The shared layer-list check (`mimo_lab.probe.inputs.check_layers`): order kept, [] / repeats / sets refused."""
    return check_layers(lab, layers, name)


def check_positions(values, n: int, name: str, *, unique: bool = True) -> list[int]:
    """Positions (ints in [0, n)) in the order given; an int is one position; [] refused."""
    if isinstance(values, numbers.Integral) and not isinstance(values, bool):
        values = [values]
    if isinstance(values, str | bytes | bool) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name}={show(values)} ({type(values).__name__}) is not accepted: a position (int) or a "
                        "list of them is")
    out = [check_int(name, v, minimum=0, maximum=n - 1) for v in values]
    if not out:
        raise ValueError(f"{name}=[] is empty: give at least one position (0 to {n - 1})")
    if unique and len(set(out)) != len(out):
        raise ValueError(f"{name}={show(out)} repeats a position: give each position once")
    return out


def _check_heads(lab, heads) -> list[int]:
    count = lab.model.config.num_attention_heads
    if heads is None:
        return list(range(count))
    if isinstance(heads, numbers.Integral) and not isinstance(heads, bool):
        heads = [heads]
    if isinstance(heads, str | bytes | bool) or not hasattr(heads, "__iter__"):
        raise TypeError(f"heads={show(heads)} ({type(heads).__name__}) is not accepted: a head index, a list of "
                        "them or None (every head) is")
    chosen = [check_int("heads", h, minimum=0, maximum=count - 1) for h in heads]
    if not chosen:
        raise ValueError(f"heads=[] is empty: give at least one head (0 to {count - 1}), or None for every head")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"heads={chosen} repeats a head: give each head once")
    return chosen


def check_proximity(proximity) -> int:
    return check_int("proximity", proximity, minimum=1)



# ----------------------------------------------------------------------------- saving results


def save_result(path, kind: str, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """One safetensors file: the tensors, plus `meta` as JSON in its metadata (never pickle)."""
    path = check_path("path", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path),
              metadata={"mimo_lab": kind, "json": json.dumps(meta)})
    return path


def load_result(path, kind: str, tensor_names: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a file written by `save_result`; the error names the file and the field."""
    path = check_path("path", path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist: no saved {kind} there")
    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
            keys = set(f.keys())
            tensors = {name: f.get_tensor(name) for name in tensor_names if name in keys}
    except Exception as err:  # noqa: BLE001 - any unreadable file becomes one clear message
        raise ValueError(f"{str(path)!r} is not a readable safetensors file ({err})") from err
    if header.get("mimo_lab") != kind:
        found = header.get("mimo_lab")
        raise ValueError(f"{str(path)!r} is not a saved {kind}: its 'mimo_lab' field is {found!r}")
    try:
        meta = json.loads(header["json"])
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r}: field 'json' is missing or corrupt ({err})") from err
    missing = [name for name in tensor_names if name not in tensors]
    if missing:
        raise ValueError(f"{str(path)!r}: tensor field(s) {missing} missing")
    return tensors, meta


def field(meta: dict, name: str, path) -> object:
    if name not in meta:
        raise ValueError(f"{str(path)!r}: field {name!r} missing")
    return meta[name]


# ----------------------------------------------------------------------------- q / k


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


# ----------------------------------------------------------------------------- groups


def token_groups(encoded: Encoded, kind: str = "sentence", labeller=None) -> tuple[torch.Tensor, list[dict]]:
    """Each token's group: for a Trace, 0 = the prompt, then the sentences of the thinking, then
    the answer; for a text, its sentences. Returns (group id per position [n], group descriptions:
    name, role ('prompt' / 'segment' / 'answer'), label, text, and start / end positions)."""
    n = encoded.length
    groups = torch.full((n,), -1, dtype=torch.long)
    info: list[dict] = []
    if encoded.trace is not None:
        trace, offset = encoded.trace, encoded.generation_start
        info.append({"name": "prompt", "role": "prompt", "label": "prompt", "text": "(prompt)"})
        groups[:offset] = 0
        sentences = trace.segments(kind, labeller)
        of_token = sentences.token_segments(trace.spans)
        for s in sentences:
            info.append({"name": f"{kind} {s.index}", "role": "segment", "label": s.label, "text": s.stripped})
        last = max((i for i, seg in enumerate(of_token) if seg >= 0), default=-1)
        previous = -1
        for i, seg in enumerate(of_token):  # a gap between two segments (Thought Anchors' chunks leave the
            previous = 1 + seg if seg >= 0 else previous  # whitespace between them) stays with the one before
            groups[offset + i] = previous if i <= last else -1
        inside = (groups[offset:] >= 0).nonzero().flatten()
        if len(inside):  # tokens before the first sentence ("<think>\n") join the prompt group
            groups[offset : offset + int(inside[0])] = 0
        rest = (groups[offset:] == -1).nonzero().flatten()
        if len(rest):
            answer_id = len(info)
            info.append({"name": "answer", "role": "answer", "label": "answer",
                         "text": shorten(trace.answer or "(outside)", 80)})
            groups[offset + rest] = answer_id
    else:
        sentences = segment(encoded.text, kind=kind, labeller=labeller)
        for s in sentences:
            info.append({"name": f"{kind} {s.index}", "role": "segment", "label": s.label, "text": s.stripped})
        previous = 0
        for i, (start, _) in enumerate(encoded.spans):
            at = sentences.at(start)
            previous = at if at >= 0 else previous  # whitespace between sentences stays with the one before
            groups[i] = previous
        if not info:
            info.append({"name": "text", "role": "segment", "label": "", "text": shorten(encoded.text, 80)})
    for gi, grp in enumerate(info):
        where = (groups == gi).nonzero().flatten()
        grp["start"], grp["end"] = (int(where[0]), int(where[-1]) + 1) if len(where) else (-1, -1)
    return groups, info


# ----------------------------------------------------------------------------- sentence attention


class SentenceAttention:
    """Sentence x sentence attention per head: `matrix` [heads, G, G] (mean over the causally valid
    token pairs of each block; NaN where a block has none), groups described by `groups` (each with
    its `start` / `end` positions; role 'prompt', 'segment' or 'answer')."""

    def __init__(self, matrix: torch.Tensor, heads: list[int], layer: int, groups: list[dict]):
        self.matrix, self.heads, self.layer, self.groups = matrix, list(heads), layer, groups

    def __repr__(self) -> str:
        return (f"SentenceAttention(layer {self.layer}, heads {self.heads}, {len(self.groups)} groups, "
                f"{len(self.segments)} of them reasoning sentences)")

    @property
    def segments(self) -> list[int]:
        """Indices (into `groups`) of the reasoning sentences: neither the prompt nor the answer."""
        return [i for i, g in enumerate(self.groups) if g.get("role", "segment") == "segment"]

    def vertical_scores(self, proximity: int = 4) -> torch.Tensor:
        """[heads, S] over the S reasoning sentences: the mean attention sentence j receives from the
        reasoning sentences i >= j + proximity (Thought Anchors' `get_vertical_scores`; NaN for the
        last `proximity` sentences, which have none)."""
        proximity = check_proximity(proximity)
        keep = torch.tensor(self.segments, dtype=torch.long)
        count = len(keep)
        if count <= proximity:
            raise ValueError(f"proximity={proximity} is too large for {count} reasoning sentences: every vertical "
                             f"score would be NaN (use proximity <= {max(count - 1, 1)})")
        m = self.matrix[:, keep][:, :, keep]
        far = torch.ones(count, count, dtype=torch.bool).tril(-proximity)  # [i, j]: i >= j + proximity
        values = torch.where(far & ~m.isnan(), m, torch.zeros(()))
        counts = (far & ~m.isnan()).sum(1)
        return torch.where(counts > 0, values.sum(1) / counts.clamp(min=1), torch.tensor(math.nan))

    def receiver_kurtosis(self, proximity: int = 4) -> torch.Tensor:
        """[heads]: Fisher kurtosis (bias=True, NaN omitted) of the vertical scores across the
        reasoning sentences; needs at least proximity + 2 of them (two finite scores)."""
        proximity = check_proximity(proximity)
        count = len(self.segments)
        if count < proximity + 2:
            raise ValueError(f"proximity={proximity} is too large for {count} reasoning sentences: the kurtosis needs "
                             f"at least two vertical scores, so at least {proximity + 2} sentences")
        return kurtosis(self.vertical_scores(proximity))

    def groups_frame(self) -> pd.DataFrame:
        """One row per group: name, role, label, text and its [start, end) positions."""
        return pd.DataFrame(self.groups).set_index("name")

    def to_frame(self, head: int | None = None) -> pd.DataFrame:
        """The G x G matrix of one head (default: the mean over heads), query rows, key columns."""
        names = [grp["name"] for grp in self.groups]
        return pd.DataFrame(self._one(head)[0].numpy(), index=pd.Index(names, name="query"),
                            columns=pd.Index(names, name="key"))

    def _one(self, head) -> tuple[torch.Tensor, str]:
        if head is None:
            return self.matrix.nanmean(0), "mean over heads"
        if isinstance(head, bool) or not isinstance(head, numbers.Integral):
            raise TypeError(f"head={show(head)} ({type(head).__name__}) is not accepted: a head index or None is")
        if head not in self.heads:
            raise ValueError(f"head={head} was not computed: the computed heads are {self.heads}")
        return self.matrix[self.heads.index(head)], f"head {head}"

    def plot(self, head: int | None = None, title: str | None = None) -> go.Figure:
        """Heatmap of one head's (default: the mean over heads) sentence x sentence attention."""
        z, which = self._one(head)
        names = [f"{grp['name']} ({grp['label']})" for grp in self.groups]
        hover = [[f"{shorten(self.groups[i]['text'], 60)}<br>→ {shorten(self.groups[j]['text'], 60)}"
                  for j in range(len(names))] for i in range(len(names))]
        fig = go.Figure(go.Heatmap(z=z.tolist(), x=names, y=names, customdata=hover, colorscale="Viridis",
                                   hovertemplate="%{customdata}<br>%{z:.4f}<extra></extra>",
                                   colorbar=dict(title="attention")))
        fig.update_yaxes(autorange="reversed", title_text="query sentence")
        fig.update_xaxes(title_text="key sentence", showticklabels=len(names) <= 40)
        return base_layout(fig, title or f"sentence attention, layer {self.layer}, {which}", height=560)

    def save(self, path: str | Path) -> Path:
        """One safetensors file: `matrix`, plus layer, heads and groups as JSON."""
        return save_result(path, "SentenceAttention", {"matrix": self.matrix},
                           {"layer": self.layer, "heads": self.heads, "groups": self.groups})

    @classmethod
    def load(cls, path: str | Path) -> SentenceAttention:
        tensors, meta = load_result(path, "SentenceAttention", ("matrix",))
        return cls(tensors["matrix"], field(meta, "heads", path), field(meta, "layer", path),
                   field(meta, "groups", path))


def kurtosis(values: torch.Tensor) -> torch.Tensor:
    """Excess kurtosis along the last dimension, NaN omitted: scipy.stats.kurtosis(fisher=True,
    bias=True, nan_policy="omit"), i.e. m4 / m2**2 - 3 with biased moments (NaN for fewer than two
    values or zero variance)."""
    out = []
    for row in values.reshape(-1, values.shape[-1]):
        row = row[~torch.isnan(row)].double()
        if row.numel() < 2:
            out.append(math.nan)
            continue
        centred = row - row.mean()
        m2, m4 = centred.pow(2).mean(), centred.pow(4).mean()
        out.append(float(m4 / m2**2 - 3) if m2 > 0 else math.nan)
    return torch.tensor(out).reshape(values.shape[:-1])


# ----------------------------------------------------------------------------- token attention


class AttentionResult:
    """One layer's attention for chosen heads. `.patterns` [head, query, key] (short inputs),
    `.by_sentence()` (any length), `.mass(queries, keys)`, `.sink_mass()` [heads]; positions index
    the full input (a Trace's prompt, then its generated tokens)."""

    def __init__(self, encoded: Encoded, layer: int, heads: list[int], q: torch.Tensor, k: torch.Tensor,
                 scale: float, group: int, query_chunk: int = 512, max_pattern_tokens: int = 4096,
                 saved_groups: dict | None = None, model_name: str = ""):
        self.encoded, self.layer, self.heads = encoded, layer, list(heads)
        self.q, self.k, self.scale, self.group = q, k, float(scale), int(group)
        self.query_chunk, self.max_pattern_tokens = query_chunk, max_pattern_tokens
        self.model_name = model_name
        self._saved_groups = saved_groups or {}  # kind -> (groups, info), for results loaded from a trace
        self._patterns = None
        self._sink = None

    def __repr__(self) -> str:
        return f"AttentionResult(layer {self.layer}, heads {self.heads}, {self.encoded.length} tokens)"

    @property
    def token_texts(self) -> list[str]:
        return self.encoded.token_texts

    @property
    def positions(self) -> range:
        """The positions covered: 0 .. n-1 of the full input (prompt + generated for a Trace)."""
        return range(self.encoded.length)

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
        queries = sorted(set(check_positions(queries, n, "queries", unique=False)))
        keys = sorted(set(check_positions(keys, n, "keys", unique=False)))
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

    def _groups(self, kind: str, labeller) -> tuple[torch.Tensor, list[dict]]:
        if self.encoded.trace is None and kind in self._saved_groups:
            if labeller is not None:
                raise ValueError("labeller: this result was loaded from a file without its Trace; only the groups "
                                 "saved with it (default labeller) are available")
            groups, info = self._saved_groups[kind]
            return groups.clone(), [dict(g) for g in info]
        return token_groups(self.encoded, kind, labeller)

    def by_sentence(self, kind: str = "sentence", labeller=None) -> SentenceAttention:
        """Sentence x sentence attention (see `SentenceAttention`), reduced block by block."""
        check_choice("kind", kind, SEGMENT_KINDS)
        groups, info = self._groups(kind, labeller)
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

    def to_frame(self) -> pd.DataFrame:
        """One row per position: its token, whether it was generated, and per head the mean
        attention it receives from the queries at or after it (`received_h{head}`)."""
        n = self.q.shape[1]
        received = torch.zeros(len(self.heads), n)
        for hi, _, probs in self._blocks():
            received[hi, : probs.shape[1]] += probs.sum(0).cpu()
        received /= torch.arange(n, 0, -1)  # queries at or after each key
        frame = pd.DataFrame({"token": self.token_texts}, index=pd.RangeIndex(n, name="position"))
        frame["generated"] = frame.index >= self.encoded.generation_start
        for hi, head in enumerate(self.heads):
            frame[f"received_h{head}"] = received[hi].tolist()
        return frame

    def plot(self, head: int | None = None, start: int | None = None, end: int | None = None,
             kind: str = "sentence") -> go.Figure:
        """Token-level heatmap of positions [start, end) (windows up to 2,048 tokens); sentence level beyond."""
        n = self.q.shape[1]
        h = 0
        if head is not None:
            if isinstance(head, bool) or not isinstance(head, numbers.Integral):
                raise TypeError(f"head={show(head)} ({type(head).__name__}) is not accepted: a head index or None is")
            if head not in self.heads:
                raise ValueError(f"head={head} was not computed: the computed heads are {self.heads}")
            h = self.heads.index(head)
        start = 0 if start is None else check_int("start", start, minimum=0, maximum=n - 1)
        end = n if end is None else check_int("end", end, minimum=1)
        end = min(end, n)
        if end <= start:
            raise ValueError(f"end={end} is not after start={start}: the window [start, end) would be empty")
        if end - start > 2048 or n > self.max_pattern_tokens:
            return self.by_sentence(kind).plot(head)
        z = self.patterns[h, start:end, start:end]
        labels = [f"{i}:{t!r}" for i, t in enumerate(self.token_texts)][start:end]
        fig = go.Figure(go.Heatmap(z=z.tolist(), x=labels, y=labels, colorscale="Viridis",
                                   hovertemplate="query %{y}<br>key %{x}<br>%{z:.4f}<extra></extra>"))
        fig.update_yaxes(autorange="reversed", showticklabels=end - start <= 80)
        fig.update_xaxes(showticklabels=end - start <= 80)
        return base_layout(fig, f"attention, layer {self.layer}, head {self.heads[h]}", height=600)

    def save(self, path: str | Path) -> Path:
        """One safetensors file: q, k and the input ids; token texts, layer, heads and (for a Trace)
        its sentence and step groups as JSON. `AttentionResult.load` needs no Lab."""
        enc = self.encoded
        tensors = {"q": self.q, "k": self.k, "ids": enc.ids}
        groups = {}
        kinds = self._saved_groups if enc.trace is None else SEGMENT_KINDS
        for kind in kinds:
            ids, info = self._groups(kind, None)
            tensors[f"groups_{kind}"] = ids
            groups[kind] = info
        meta = {"layer": self.layer, "heads": self.heads, "scale": self.scale, "group": self.group,
                "query_chunk": self.query_chunk, "max_pattern_tokens": self.max_pattern_tokens,
                "token_texts": enc.token_texts, "text": enc.text, "spans": [list(s) for s in enc.spans],
                "generation_start": enc.generation_start, "groups": groups, "model_name": self.model_name}
        return save_result(path, "AttentionResult", tensors, meta)

    @classmethod
    def load(cls, path: str | Path) -> AttentionResult:
        tensors, meta = load_result(path, "AttentionResult", ("q", "k", "ids"))
        kinds = dict(meta.get("groups", {}))
        group_ids, _ = load_result(path, "AttentionResult", tuple(f"groups_{kind}" for kind in kinds))
        encoded = Encoded(tensors["ids"], field(meta, "token_texts", path), field(meta, "text", path),
                          [tuple(s) for s in field(meta, "spans", path)], int(field(meta, "generation_start", path)))
        saved = {kind: (group_ids[f"groups_{kind}"], info) for kind, info in kinds.items()}
        return cls(encoded, int(field(meta, "layer", path)), field(meta, "heads", path), tensors["q"], tensors["k"],
                   float(field(meta, "scale", path)), int(field(meta, "group", path)),
                   int(meta.get("query_chunk", 512)), int(meta.get("max_pattern_tokens", 4096)), saved,
                   meta.get("model_name", ""))


def attention(lab, text_or_trace, layer: int, heads=None, *, query_chunk: int = 512, chunk_size: int | None = None,
              max_pattern_tokens: int = 4096) -> AttentionResult:
    """Attention of `layer`'s heads (None: all) over a text or a Trace (see the module doc).

    query_chunk: queries per block when patterns are recomputed; chunk_size: run the input in
    chunks of this many tokens with a KV cache (None: one pass); max_pattern_tokens: the longest
    input whose token-level `.patterns` may be built.
    """
    check_input(text_or_trace)
    layer = check_layer(lab, layer)
    heads = _check_heads(lab, heads)
    query_chunk = check_int("query_chunk", query_chunk, minimum=1)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1, none_ok=True)
    max_pattern_tokens = check_int("max_pattern_tokens", max_pattern_tokens, minimum=1)
    need_model(lab, "attention")
    encoded = encode(lab, text_or_trace)
    q, k = post_rope_qk(lab, encoded.ids, layer, chunk_size)
    config = lab.model.config
    return AttentionResult(encoded, layer, heads, q, k, lab.model.model.layers[layer].self_attn.scaling,
                           config.num_attention_heads // config.num_key_value_heads, query_chunk, max_pattern_tokens,
                           model_name=lab.name)


# ----------------------------------------------------------------------------- scores per head


class HeadScores:
    """A score per (layer, head), e.g. attention mass from some positions to others."""

    value, colorscale = "score", "Viridis"

    def __init__(self, frame: pd.DataFrame, what: str):
        self.frame, self.what = frame, what

    def __repr__(self) -> str:
        best = ", ".join(f"L{r.layer}H{r.head} {getattr(r, self.value):.3f}" for r in self.top(3).itertuples())
        return f"{type(self).__name__}({self.what}; top: {best})"

    def _repr_html_(self) -> str:
        return f"<p>{type(self).__name__}: {self.what}</p>" + self.top()._repr_html_()

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def top(self, count: int = 10) -> pd.DataFrame:
        """The `count` best heads (NaN scores last)."""
        count = check_int("count", count, minimum=1)
        return self.frame.sort_values(self.value, ascending=False, na_position="last").head(count)

    def plot(self, title: str | None = None) -> go.Figure:
        grid = self.frame.pivot(index="layer", columns="head", values=self.value)
        fig = go.Figure(go.Heatmap(z=grid.values.tolist(), x=[f"H{h}" for h in grid.columns],
                                   y=[f"L{layer}" for layer in grid.index], colorscale=self.colorscale,
                                   colorbar=dict(title=self.value),
                                   hovertemplate="%{y} %{x}<br>%{z:.3f}<extra></extra>"))
        fig.update_yaxes(autorange="reversed")
        return base_layout(fig, title or self.what, height=160 + 30 * len(grid.index))

    def _meta(self) -> dict:
        return {"what": self.what}

    def save(self, path: str | Path) -> Path:
        """One safetensors file: every numeric column as a tensor, the rest as JSON."""
        columns = list(self.frame.columns)
        tensors = {c: torch.tensor(self.frame[c].to_numpy(dtype="float64")) for c in columns}
        return save_result(path, type(self).__name__, tensors, {"columns": columns, **self._meta()})

    @classmethod
    def _from(cls, frame: pd.DataFrame, meta: dict, path):
        return cls(frame, field(meta, "what", path))

    @classmethod
    def load(cls, path: str | Path):
        _, meta = load_result(path, cls.__name__)
        columns = field(meta, "columns", path)
        tensors, _ = load_result(path, cls.__name__, tuple(columns))
        frame = pd.DataFrame({c: tensors[c].numpy() for c in columns})
        for c in ("layer", "head"):
            if c in frame:
                frame[c] = frame[c].astype(int)
        return cls._from(frame, meta, path)


class ReceiverHeads(HeadScores):
    """Receiver-head scores for every (layer, head): the kurtosis of the reasoning sentences'
    vertical scores, averaged over traces (`top()` gives the paper's top 20)."""

    value, colorscale = "kurtosis", "Magma"

    def __init__(self, frame: pd.DataFrame, proximity: int, traces: int = 1):
        super().__init__(frame, f"receiver-head scores (kurtosis of vertical scores, proximity ≥ {proximity}, "
                                f"{traces} trace{'s' if traces != 1 else ''})")
        self.proximity, self.traces = proximity, traces

    def top(self, count: int = 20) -> pd.DataFrame:
        return super().top(count)

    def _meta(self) -> dict:
        return {"proximity": self.proximity, "traces": self.traces}

    @classmethod
    def _from(cls, frame, meta, path):
        return cls(frame, int(field(meta, "proximity", path)), int(meta.get("traces", 1)))


def attention_between(lab, text_or_trace, queries, keys, layers=None, what: str | None = None) -> HeadScores:
    """For every (layer, head): attention mass from `queries` to `keys` (positions of the full
    input, see `AttentionResult.mass`)."""
    check_input(text_or_trace)
    layers = check_layer_list(lab, layers)
    need_model(lab, "attention_between")
    n = encode(lab, text_or_trace).length
    queries = check_positions(queries, n, "queries", unique=False)
    keys = check_positions(keys, n, "keys", unique=False)
    rows = []
    for layer in layers:
        masses = attention(lab, text_or_trace, layer).mass(queries, keys)
        rows += [{"layer": layer, "head": head, "score": float(m)} for head, m in enumerate(masses)]
    what = what or f"attention from {len(set(queries))} queries to {len(set(keys))} keys"
    return HeadScores(pd.DataFrame(rows), what)


def check_inputs(value, name: str) -> list:
    """A text, a Trace, or a non-empty list of them -> a list (a str is one text)."""
    items = [value] if isinstance(value, str | Trace) else value
    if not isinstance(items, list | tuple):
        raise TypeError(f"{name}={show(value)} ({type(value).__name__}) is not accepted: a text, a Trace, or a list "
                        "of them is")
    if not items:
        raise ValueError(f"{name}=[] is empty: give at least one text or Trace")
    for i, item in enumerate(items):
        check_input(item, f"{name}[{i}]")
    return list(items)


def receiver_heads(lab, traces, layers=None, proximity: int = 4, kind: str = "sentence") -> ReceiverHeads:
    """Score every head of `layers` by the kurtosis of the reasoning sentences' vertical scores,
    averaged over traces (Thought Anchors' receiver heads; their setting: proximity 4, top 20).

    traces: a Trace, a text, or a list of them. Only the sentences of the thinking count (the
    prompt and the answer after </think> are excluded); each trace needs at least proximity + 2.
    A trace whose kurtosis is NaN for a head (all its vertical scores equal) is left out of that
    head's mean.
    """
    traces = check_inputs(traces, "traces")
    layers = check_layer_list(lab, layers)
    proximity = check_proximity(proximity)
    check_choice("kind", kind, SEGMENT_KINDS)
    need_model(lab, "receiver_heads")
    for i, item in enumerate(traces):  # before any forward pass
        count = len(item.segments(kind) if isinstance(item, Trace) else segment(item, kind=kind))
        if count < proximity + 2:
            raise ValueError(f"proximity={proximity} is too large for traces[{i}], which has {count} {kind}s: every "
                             f"receiver score would be NaN (the kurtosis needs at least {proximity + 2} {kind}s)")
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
    return ReceiverHeads(pd.DataFrame(rows), proximity, len(traces))


__all__ = ["attention", "AttentionResult", "SentenceAttention", "receiver_heads", "ReceiverHeads", "kurtosis",
           "post_rope_qk", "attention_between", "HeadScores", "token_groups"]
