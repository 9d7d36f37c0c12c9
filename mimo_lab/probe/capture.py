"""Capture activations (resid / attn_out / mlp_out per layer) with nnsight, in chunks when long."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import DynamicCache

from mimo_lab.probe.inputs import Encoded, check_layers, encode, quiet_cache_warning, trace_kwargs
from mimo_lab.viz.style import base_layout

SITES = ("resid", "attn_out", "mlp_out")


def check_sites(sites) -> tuple[str, ...]:
    sites = (sites,) if isinstance(sites, str) else tuple(sites)
    unknown = [s for s in sites if s not in SITES]
    if unknown or not sites:
        raise ValueError(f"unknown site(s) {unknown or sites!r}: use any of {', '.join(SITES)}")
    return sites


def iter_chunks(lab, ids: torch.Tensor, sites: tuple[str, ...], layers: list[int],
                chunk_size: int | None) -> Iterator[tuple[int, dict[tuple[str, int], torch.Tensor]]]:
    """Run the model over ids [1, n] (in chunks with a KV cache: the same activations as one pass)
    and yield (start, {(site, layer): [chunk, hidden] on the CPU}) per chunk."""
    n = ids.shape[1]
    size = n if chunk_size is None else chunk_size
    if size < 1:
        raise ValueError(f"chunk_size {chunk_size!r} is not allowed: use an integer >= 1 or None")
    if lab.remote and size < n:
        raise ValueError("chunk_size needs a local model (the KV cache stays on this machine): use chunk_size=None "
                         "with remote execution")
    cache = DynamicCache(config=lab.model.config) if size < n else None
    model = lab.nn.model
    for start in range(0, n, size):
        piece = ids[:, start : start + size]
        saved = {}
        with torch.no_grad(), quiet_cache_warning(), \
                lab.nn.trace(piece, **trace_kwargs(cache), **lab.trace_options) as tracer:
            # nnsight needs values in the order the model computes them: per layer attention,
            # then MLP, then the layer's output.
            for layer in layers:
                block = model.layers[layer]
                if "attn_out" in sites:
                    saved[("attn_out", layer)] = block.self_attn.output[0].save()
                if "mlp_out" in sites:
                    saved[("mlp_out", layer)] = block.mlp.output.save()
                if "resid" in sites:
                    saved[("resid", layer)] = block.output.save()
            tracer.stop()  # nothing after the last layer asked for is needed
        yield start, {key: value[0].detach().float().cpu() for key, value in saved.items()}


class Activations:
    """Captured activations: `acts["resid"]` is [layers, seq, hidden] (float32, CPU) in the
    order of `acts.layers`; `acts.get(site, layer)` is [seq, hidden]."""

    def __init__(self, tensors: dict[str, torch.Tensor], layers: list[int], token_texts: list[str],
                 model_name: str = "", generation_start: int = 0):
        self.tensors, self.layers, self.token_texts = tensors, list(layers), token_texts
        self.model_name, self.generation_start = model_name, generation_start

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self.tensors)

    def __getitem__(self, site: str) -> torch.Tensor:
        if site not in self.tensors:
            raise KeyError(f"site {site!r} was not captured: captured {', '.join(self.tensors)}")
        return self.tensors[site]

    def get(self, site: str, layer: int) -> torch.Tensor:
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not captured: captured layers {self.layers}")
        return self[site][self.layers.index(layer)]

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in self.tensors.items())
        return f"Activations({len(self.token_texts)} tokens, layers {self.layers}, {shapes})"

    def to_frame(self) -> pd.DataFrame:
        """L2 norm per (site, layer, position)."""
        rows = []
        for site, tensor in self.tensors.items():
            norms = tensor.norm(dim=-1)
            for li, layer in enumerate(self.layers):
                for pos, value in enumerate(norms[li].tolist()):
                    rows.append((site, layer, pos, self.token_texts[pos], value))
        return pd.DataFrame(rows, columns=["site", "layer", "position", "token", "norm"])

    def plot(self, site: str = "resid") -> go.Figure:
        """Norm of a site's activation by layer x position."""
        norms = self[site].norm(dim=-1)
        fig = go.Figure(go.Heatmap(z=norms.tolist(), y=[f"L{layer}" for layer in self.layers],
                                   customdata=[self.token_texts] * len(self.layers), colorscale="Viridis",
                                   hovertemplate="%{y} pos %{x} %{customdata!r}<br>norm %{z:.2f}<extra></extra>"))
        fig.update_xaxes(title_text="token position")
        return base_layout(fig, f"{site} norm by layer and position", height=120 + 30 * len(self.layers))

    def save(self, path: str | Path) -> Path:
        """One safetensors file: tensors `{site}` and metadata (layers, tokens, model)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"layers": json.dumps(self.layers), "sites": json.dumps(list(self.tensors)),
                "token_texts": json.dumps(self.token_texts),
                "model_name": self.model_name, "generation_start": str(self.generation_start)}
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Activations:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if "layers" not in meta:
                raise ValueError(f"{path} is not a saved Activations file (no 'layers' metadata)")
            order = json.loads(meta.get("sites", "[]")) or list(f.keys())
            tensors = {k: f.get_tensor(k) for k in order}
        return cls(tensors, json.loads(meta["layers"]), json.loads(meta["token_texts"]), meta.get("model_name", ""),
                   int(meta.get("generation_start", 0)))


def capture(lab, text_or_trace, sites=SITES, layers=None, chunk_size: int | None = None) -> Activations:
    """Activations at `sites` for `layers` (None: all) over a text or a Trace.

    chunk_size: run the input in chunks of this many tokens with a KV cache (same values, less
    peak memory for long traces); None runs it in one pass.
    """
    sites = check_sites(sites)
    layers = check_layers(lab, layers)
    encoded: Encoded = encode(lab, text_or_trace)
    parts: dict[str, list[list[torch.Tensor]]] = {site: [[] for _ in layers] for site in sites}
    for _, chunk in iter_chunks(lab, encoded.ids, sites, layers, chunk_size):
        for (site, layer), value in chunk.items():
            parts[site][layers.index(layer)].append(value)
    tensors = {site: torch.stack([torch.cat(chunks) for chunks in per_layer]) for site, per_layer in parts.items()}
    return Activations(tensors, layers, encoded.token_texts, lab.name, encoded.generation_start)
