"""Comparisons. Two traces of one prompt: where they part ways, the first differing token, and their steps side
by side (`divergence`, also `trace.divergence(other)`). Two models on one trace: per-token log-probs, KL both
ways, per-sentence aggregates and per-layer residual differences (`model_diff`). Positions are absolute (the
prompt's tokens count), as everywhere in mimo_lab.
"""

from __future__ import annotations

import difflib
import html
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import torch

from mimo_lab.checks import check_path
from mimo_lab.trace import Trace
from mimo_lab.viz.style import base_layout, shorten


@dataclass
class Divergence:
    """The fork between trace `a` and trace `b` (None fields when they never diverge)."""

    a: Trace
    b: Trace
    position: int | None  # position of the first differing generated token (prompt_length + its index)
    prefix: str  # the shared text before it

    @property
    def identical(self) -> bool:
        return self.position is None

    @property
    def index(self) -> int | None:
        """The fork as an index into the traces' generated tokens (position - prompt_length)."""
        return None if self.position is None else self.position - self.a.prompt_length

    def _side(self, trace: Trace) -> dict:
        i = self.index
        if i is None or i >= len(trace):
            return {"token": None, "prob": None, "entropy": None, "alternatives": []}
        return {"token": trace.token_texts[i], "prob": math.exp(float(trace.logprobs[i])),
                "entropy": float(trace.entropies[i]),
                "alternatives": list(zip(trace.top_texts[i], trace.top_logprobs[i].exp().tolist(), strict=True))}

    @property
    def fork(self) -> pd.DataFrame:
        """The two choices at the fork: token, its probability, the entropy there, the alternatives."""
        return pd.DataFrame([self._side(self.a), self._side(self.b)], index=["a", "b"])

    def steps(self, kind: str = "step") -> pd.DataFrame:
        """The two traces' steps aligned side by side (difflib on the step texts)."""
        left = [s.stripped for s in self.a.segments(kind)]
        right = [s.stripped for s in self.b.segments(kind)]
        rows = []
        matcher = difflib.SequenceMatcher(a=left, b=right, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            for k in range(max(i2 - i1, j2 - j1)):
                rows.append({"a": left[i1 + k] if i1 + k < i2 else "", "b": right[j1 + k] if j1 + k < j2 else "",
                             "same": tag == "equal"})
        return pd.DataFrame(rows)

    def to_frame(self) -> pd.DataFrame:
        return self.steps()

    def plot(self, kind: str = "step", title: str | None = None) -> go.Figure:
        """A two-column table of the aligned steps; differing rows highlighted."""
        frame = self.steps(kind)
        fill = [["#ffffff" if same else "#fde8e8" for same in frame["same"]]] * 2
        fig = go.Figure(go.Table(
            header=dict(values=[f"a: {self.a.final_answer!r} ({len(self.a)} tokens)",
                                f"b: {self.b.final_answer!r} ({len(self.b)} tokens)"], align="left"),
            cells=dict(values=[frame["a"].tolist(), frame["b"].tolist()], align="left", fill_color=fill)))
        fork = "identical" if self.identical else (
            f"fork at position {self.position}: {self._side(self.a)['token']!r} vs {self._side(self.b)['token']!r}")
        return base_layout(fig, title or fork, height=min(900, 120 + 28 * len(frame)))

    def __repr__(self) -> str:
        if self.identical:
            return f"Divergence(identical, {len(self.a)} tokens)"
        a, b = self._side(self.a), self._side(self.b)
        return (f"Divergence(at position {self.position}: {a['token']!r} (p={a['prob']}) vs {b['token']!r} "
                f"(p={b['prob']}), after {shorten(self.prefix[-40:], 40)!r})")

    def save(self, path: str | Path) -> Path:
        """Write both traces (`path/a`, `path/b`, each a saved Trace); the fork is recomputed on load."""
        path = check_path("path", path)
        self.a.save(path / "a")
        self.b.save(path / "b")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Divergence:
        """Reopen a Divergence written by `save` (FileNotFoundError naming the folder if a trace is missing)."""
        path = check_path("path", path)
        for side in ("a", "b"):
            if not (path / side / "trace.json").is_file():
                raise FileNotFoundError(f"{path} is not a saved Divergence: {path / side / 'trace.json'} is missing")
        return divergence(Trace.load(path / "a"), Trace.load(path / "b"))

    def _repr_html_(self) -> str:
        if self.identical:
            return "<b>The traces are identical.</b>"
        a, b = self._side(self.a), self._side(self.b)
        return (f"<div><b>Fork at position {self.position}</b> after …{html.escape(self.prefix[-80:])}<br>"
                f"a: <code>{html.escape(repr(a['token']))}</code> p={a['prob']:.3f}, entropy {a['entropy']:.3f}; "
                f"b: <code>{html.escape(repr(b['token']))}</code> p={b['prob']:.3f}, entropy {b['entropy']:.3f}"
                f"</div>{self.steps()._repr_html_()}")


def divergence(a: Trace, b: Trace, *, _names: tuple[str, str] = ("a", "b")) -> Divergence:
    """Compare two traces of the same prompt: where they first differ (an absolute position), and their
    steps side by side. Also `a.divergence(b)`."""
    for name, trace in zip(_names, (a, b), strict=True):
        if not isinstance(trace, Trace):
            raise TypeError(f"{name}={shorten(repr(trace), 60)} ({type(trace).__name__}) is not accepted: a Trace "
                            "is")
    if a.tokenizer_fingerprint and b.tokenizer_fingerprint and a.tokenizer_fingerprint != b.tokenizer_fingerprint:
        raise ValueError(f"{_names[0]} (from {a.model_name or 'unknown'!r}, tokenizer {a.tokenizer_fingerprint}) and "
                         f"{_names[1]} (from {b.model_name or 'unknown'!r}, tokenizer {b.tokenizer_fingerprint}) were "
                         "made with different tokenizers: their tokens cannot be compared position by position")
    if a.prompt_text and b.prompt_text and a.prompt_text != b.prompt_text:
        raise ValueError(f"{_names[0]} and {_names[1]} answer different prompts: compare samples of the same prompt "
                         f"({shorten(a.prompt_display, 40)!r} vs {shorten(b.prompt_display, 40)!r})")
    if a.prompt_length != b.prompt_length or not torch.equal(a.prompt_ids, b.prompt_ids):
        raise ValueError(f"{_names[0]} and {_names[1]} have different prompt tokens ({a.prompt_length} vs "
                         f"{b.prompt_length}): compare samples of the same prompt, tokenized by the same tokenizer")
    ids_a, ids_b = a.token_ids.tolist(), b.token_ids.tolist()
    index = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=False)) if x != y), None)
    if index is None and len(ids_a) != len(ids_b):
        index = min(len(ids_a), len(ids_b))
    prefix = a.text[: int(a.spans[index, 0])] if index is not None and index < len(a) else a.text
    return Divergence(a, b, None if index is None else a.prompt_length + index, prefix)


# ----------------------------------------------------------------------------- two models on one trace


@dataclass
class ModelDiff:
    """Two models reading one trace (`model_diff`). Per generated token i (position prompt_length + i):

    - `logprob_a[i]`, `logprob_b[i]`: log-probability of token i under each model (temperature 1), nats;
    - `kl_ab[i]` = KL(a || b) and `kl_ba[i]` = KL(b || a) between the two next-token distributions
      for token i (computed at the position before it), nats;
    - `resid_rel[i, l]` (same architecture only; None otherwise) = ||h_a - h_b|| / ||h_a|| and
      `resid_cos[i, l]` their cosine, where h is layer l's output (the residual stream) at token i's own
      position.
    `trace` is the text as model a scored it (`Lab.score`); `sentence[i]` the sentence token i starts in.
    """

    trace: Trace
    name_a: str
    name_b: str
    logprob_a: torch.Tensor
    logprob_b: torch.Tensor
    kl_ab: torch.Tensor
    kl_ba: torch.Tensor
    resid_rel: torch.Tensor | None
    resid_cos: torch.Tensor | None
    kind: str = "sentence"

    @property
    def positions(self) -> list[int]:
        return list(self.trace.positions)

    @property
    def sentence(self) -> list[int]:
        return self.trace.segments(self.kind).token_segments(self.trace.spans)

    def to_frame(self) -> pd.DataFrame:
        """One row per generated token: position, token, sentence, log-probs under a and b, their
        difference (b - a: where b expects the token more), both KLs."""
        return pd.DataFrame({
            "position": self.positions, "token": self.trace.token_texts, "sentence": self.sentence,
            "logprob_a": self.logprob_a.tolist(), "logprob_b": self.logprob_b.tolist(),
            "delta": (self.logprob_b - self.logprob_a).tolist(), "kl_ab": self.kl_ab.tolist(),
            "kl_ba": self.kl_ba.tolist()})

    def disagreements(self, n: int = 20) -> pd.DataFrame:
        """The n tokens where the models disagree most (KL(a||b) + KL(b||a)), with each model's top guess."""
        from mimo_lab.checks import check_int

        n = check_int("n", n, minimum=1)
        frame = self.to_frame()
        frame["kl_sum"] = frame["kl_ab"] + frame["kl_ba"]
        frame["context"] = [shorten(self.trace.text[max(0, int(s) - 40): int(e)], 48)
                            for s, e in self.trace.spans.tolist()]
        return frame.sort_values("kl_sum", ascending=False, kind="stable").head(n)

    def by_sentence(self) -> pd.DataFrame:
        """Per sentence (of `kind`): its text, tokens, summed log-probs under a and b (the sentence's
        log-likelihood), their difference, and the mean and largest KL both ways."""
        frame = self.to_frame()
        segments = self.trace.segments(self.kind)
        rows = []
        for seg in segments:
            part = frame[frame["sentence"] == seg.index]
            if part.empty:
                continue
            rows.append({"sentence": seg.index, "label": seg.label, "text": seg.stripped, "tokens": len(part),
                         "logprob_a": part["logprob_a"].sum(), "logprob_b": part["logprob_b"].sum(),
                         "delta": part["delta"].sum(), "mean_kl_ab": part["kl_ab"].mean(),
                         "mean_kl_ba": part["kl_ba"].mean(), "max_kl_ab": part["kl_ab"].max(),
                         "max_kl_ba": part["kl_ba"].max()})
        return pd.DataFrame(rows)

    def by_layer(self) -> pd.DataFrame:
        """Per layer: the mean relative residual difference and mean cosine over the generated tokens."""
        if self.resid_rel is None:
            raise ValueError(f"{self.name_a!r} and {self.name_b!r} have different shapes: there are no per-layer "
                             "residual differences")
        return pd.DataFrame({"layer": range(self.resid_rel.shape[1]),
                             "mean_rel_diff": self.resid_rel.mean(0).tolist(),
                             "mean_cos": self.resid_cos.mean(0).tolist()})

    def plot(self, title: str | None = None) -> go.Figure:
        """Top: per-token KL both ways and the log-prob difference; bottom (same architecture): the relative
        residual difference per layer and position."""
        from plotly.subplots import make_subplots

        rows = 2 if self.resid_rel is not None else 1
        fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                            row_heights=[0.5, 0.5][:rows])
        x, hover = self.positions, [repr(t) for t in self.trace.token_texts]
        for values, name in ((self.kl_ab, f"KL({self.name_a} ‖ {self.name_b})"),
                             (self.kl_ba, f"KL({self.name_b} ‖ {self.name_a})"),
                             (self.logprob_b - self.logprob_a, "log p_b - log p_a")):
            fig.add_trace(go.Scatter(x=x, y=values.tolist(), name=name, text=hover, mode="lines",
                                     hovertemplate="%{x} %{text}: %{y:.3f}<extra>" + name + "</extra>"), row=1, col=1)
        if self.resid_rel is not None:
            fig.add_trace(go.Heatmap(x=x, y=list(range(self.resid_rel.shape[1])), z=self.resid_rel.T.tolist(),
                                     colorscale="Viridis", colorbar=dict(title="‖h_a-h_b‖/‖h_a‖", y=0.25, len=0.45),
                                     text=[hover] * self.resid_rel.shape[1],
                                     hovertemplate="layer %{y}, %{x} %{text}: %{z:.3f}<extra></extra>"), row=2, col=1)
            fig.update_yaxes(title_text="layer", row=2, col=1)
        fig.update_xaxes(title_text="position", row=rows, col=1)
        fig.update_yaxes(title_text="nats", row=1, col=1)
        return base_layout(fig, title or f"{self.name_a} vs {self.name_b} on one trace", height=300 + 220 * rows)

    def __repr__(self) -> str:
        return (f"ModelDiff({self.name_a!r} vs {self.name_b!r}, {len(self.trace)} tokens, mean KL(a||b) "
                f"{float(self.kl_ab.mean()):.4f}, mean KL(b||a) {float(self.kl_ba.mean()):.4f})")

    def _repr_html_(self) -> str:
        return f"<div><b>{html.escape(repr(self))}</b></div>{self.disagreements(10)._repr_html_()}"

    def save(self, path: str | Path) -> Path:
        """`path/trace` (the Trace) and `path/model_diff.safetensors` (the per-token tensors, names in its metadata)."""
        from safetensors.torch import save_file

        path = check_path("path", path)
        self.trace.save(path / "trace")
        tensors = {"logprob_a": self.logprob_a, "logprob_b": self.logprob_b, "kl_ab": self.kl_ab, "kl_ba": self.kl_ba}
        if self.resid_rel is not None:
            tensors.update(resid_rel=self.resid_rel, resid_cos=self.resid_cos)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model_diff.safetensors"),
                  metadata={"name_a": self.name_a, "name_b": self.name_b, "kind": self.kind})
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModelDiff:
        """Reopen a ModelDiff written by `save`."""
        from safetensors import safe_open

        path = check_path("path", path)
        file = path / "model_diff.safetensors"
        if not file.is_file():
            raise FileNotFoundError(f"{path} is not a saved ModelDiff: {file} is missing")
        with safe_open(str(file), "pt") as f:
            meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        return cls(Trace.load(path / "trace"), meta["name_a"], meta["name_b"], tensors["logprob_a"],
                   tensors["logprob_b"], tensors["kl_ab"], tensors["kl_ba"], tensors.get("resid_rel"),
                   tensors.get("resid_cos"), meta.get("kind", "sentence"))


def _same_shape(lab_a, lab_b) -> bool:
    ca, cb = lab_a.model.config, lab_b.model.config
    return (ca.num_hidden_layers, ca.hidden_size) == (cb.num_hidden_layers, cb.hidden_size)


@torch.inference_mode()
def model_diff(lab_a, lab_b, trace: Trace, *, kind: str = "sentence", chunk_size: int = 1024,
               residuals: bool | None = None) -> ModelDiff:
    """Two models reading one trace: per-token log-prob under each, KL(a||b) and KL(b||a) at every
    generated token, the tokens where they disagree most, per-sentence aggregates and (same architecture)
    per-layer residual differences. The use case: a base model reading its RL model's trace
    (`model_diff(base, rl, rl_trace)`: where did RL change what the model expects?).

    The trace may come from either model or any other; both read the same token ids (the trace's own
    when the two labs' tokenizer made it, else its prompt and text tokenized once). The two labs must
    share a tokenizer (else their token ids would mean different things: refused, naming both).
    kind: how `by_sentence` cuts the text (`segment.SEGMENT_KINDS`). chunk_size: tokens per forward chunk
    (each model keeps its own KV cache). residuals: compare layer outputs (default: when the two models
    have the same number of layers and hidden size).
    """
    from mimo_lab.checks import check_bool, check_choice, check_int
    from mimo_lab.generation import check_lab, check_sampling, check_trace
    from mimo_lab.score import _check_items, _inputs, _make_trace, _Stats, chunked_logits
    from mimo_lab.segment import SEGMENT_KINDS
    from mimo_lab.trace import tokenizer_fingerprint

    check_lab(lab_a, "lab_a")
    check_lab(lab_b, "lab_b")
    check_trace(trace)
    kind = check_choice("kind", kind, SEGMENT_KINDS)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    residuals = check_bool("residuals", residuals, none_ok=True)
    fa, fb = tokenizer_fingerprint(lab_a.tokenizer), tokenizer_fingerprint(lab_b.tokenizer)
    if fa != fb:
        raise ValueError(f"lab_a ({lab_a.name!r}, tokenizer {fa}) and lab_b ({lab_b.name!r}, tokenizer {fb}) have "
                         "different tokenizers: the same token ids would mean different text. Compare models that "
                         "share a tokenizer (MiMo-7B-Base and -RL do)")
    same = _same_shape(lab_a, lab_b)
    if residuals and not same:
        raise ValueError(f"residuals=True needs the same architecture: {lab_a.name!r} has "
                         f"{lab_a.model.config.num_hidden_layers} layers of {lab_a.model.config.hidden_size}, "
                         f"{lab_b.name!r} {lab_b.model.config.num_hidden_layers} of {lab_b.model.config.hidden_size}")
    residuals = same if residuals is None else residuals
    lab_a._need_weights("model_diff")
    lab_b._need_weights("model_diff")
    # the ids both read (the trace's own when lab_a's tokenizer made it), and a's analytics from the same pass
    items, _ = _inputs(lab_a, trace, None, None, "")
    _check_items(lab_a, items, True)
    item = items[0]
    full = torch.cat([item[2], item[3]])
    n, start = int(full.numel()), int(item[2].numel())
    settings = check_sampling(lab_a, {}, base="recommended")
    stats = _Stats(lab_a, full, start, settings, 5)
    parts = {k: [] for k in ("logprob_a", "logprob_b", "kl_ab", "kl_ba", "rel", "cos")}
    captured: tuple[list, list] = ([], [])
    hooks = []
    if residuals:
        for lab, into in zip((lab_a, lab_b), captured, strict=True):
            def keep(_module, _args, out, into=into):
                into.append((out[0] if isinstance(out, tuple) else out)[0].float().cpu())

            hooks += [layer.register_forward_hook(keep) for layer in lab.model.model.layers]
    try:
        for (begin, stop, logits_a), (_, _, logits_b) in zip(chunked_logits(lab_a.model, full, chunk_size),
                                                             chunked_logits(lab_b.model, full, chunk_size),
                                                             strict=True):
            stats.add(begin, stop, logits_a)
            la_all, lb_all = logits_a.float().cpu().log_softmax(-1), logits_b.float().cpu().log_softmax(-1)
            # distributions for generated tokens: rows at positions start-1 .. n-2
            first, last = max(begin, start - 1), min(stop, n - 1)
            if first < last:
                la, lb = la_all[first - begin:last - begin], lb_all[first - begin:last - begin]
                targets = full[first + 1: last + 1]
                parts["logprob_a"].append(la.gather(-1, targets[:, None])[:, 0])
                parts["logprob_b"].append(lb.gather(-1, targets[:, None])[:, 0])
                parts["kl_ab"].append((la.exp() * (la - lb)).sum(-1).clamp(min=0))
                parts["kl_ba"].append((lb.exp() * (lb - la)).sum(-1).clamp(min=0))
            # residuals at the generated tokens' own positions: start .. n-1 ([chunk, layers, hidden] per model)
            lo = max(begin, start)
            if residuals:
                ha, hb = (torch.stack(c, dim=1)[lo - begin:] for c in captured)
                for c in captured:
                    c.clear()
                if lo < stop:
                    parts["rel"].append((ha - hb).norm(dim=-1) / ha.norm(dim=-1).clamp(min=1e-12))
                    parts["cos"].append(torch.nn.functional.cosine_similarity(ha, hb, dim=-1))
    finally:
        for hook in hooks:
            hook.remove()
    scored = _make_trace(lab_a, item, stats.result(), settings, False)
    cat = {k: torch.cat(v) if v else None for k, v in parts.items()}
    return ModelDiff(scored, lab_a.name, lab_b.name, cat["logprob_a"], cat["logprob_b"], cat["kl_ab"], cat["kl_ba"],
                     cat["rel"], cat["cos"], kind)
