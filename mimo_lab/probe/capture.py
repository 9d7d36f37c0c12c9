"""Capture activations (resid / attn_out / mlp_out per layer) with nnsight, in chunks when long."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import DynamicCache

from mimo_lab.checks import check_int, check_path
from mimo_lab.probe.inputs import (
    Encoded,
    SequencePositions,
    as_batch,
    check_layers,
    encode,
    need_model,
    quiet_cache_warning,
    trace_kwargs,
)
from mimo_lab.viz.style import base_layout

SITES = ("resid", "attn_out", "mlp_out")


def check_sites(sites) -> tuple[str, ...]:
    """A site name or a list of them, each once (TypeError for a non-string, ValueError for an unknown name)."""
    chosen = (sites,) if isinstance(sites, str) else sites
    if not isinstance(chosen, list | tuple):
        raise TypeError(f"sites={sites!r} ({type(sites).__name__}) is not accepted: a site name or a list of them "
                        f"({', '.join(SITES)}) is")
    if not chosen:
        raise ValueError(f"sites={sites!r} is empty: give at least one of {', '.join(SITES)}")
    for site in chosen:
        if not isinstance(site, str):
            raise TypeError(f"sites={sites!r}: {site!r} ({type(site).__name__}) is not a site name: use any of "
                            f"{', '.join(SITES)}")
        if site not in SITES:
            close = difflib.get_close_matches(site, SITES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"sites={sites!r}: unknown site {site!r}{hint}: use any of {', '.join(SITES)}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"sites={sites!r} names a site twice: give each site once")
    return tuple(chosen)


def check_chunk_size(chunk_size) -> int | None:
    return check_int("chunk_size", chunk_size, minimum=1, none_ok=True)


def iter_chunks(lab, ids: torch.Tensor, sites: tuple[str, ...], layers: list[int],
                chunk_size: int | None) -> Iterator[tuple[int, dict[tuple[str, int], torch.Tensor]]]:
    """Run the model over ids [1, n] (in chunks with a KV cache: the same activations as one pass)
    and yield (start, {(site, layer): [chunk, hidden] on the CPU}) per chunk; `layers` in any order."""
    n = ids.shape[1]
    size = n if chunk_size is None else chunk_size
    if lab.remote and size < n:
        raise ValueError("chunk_size needs a local model (the KV cache stays on this machine): use chunk_size=None "
                         "with remote execution")
    cache = DynamicCache(config=lab.model.config) if size < n else None
    model = lab.nn.model
    in_model_order = sorted(set(layers))
    for start in range(0, n, size):
        piece = ids[:, start : start + size]
        saved = {}
        with torch.no_grad(), quiet_cache_warning(), \
                lab.nn.trace(piece, **trace_kwargs(cache), **lab.trace_options) as tracer:
            # nnsight needs values in the order the model computes them: layers in model order, and
            # per layer attention, then MLP, then the layer's output (callers reorder afterwards).
            for layer in in_model_order:
                block = model.layers[layer]
                if "attn_out" in sites:
                    saved[("attn_out", layer)] = block.self_attn.output[0].save()
                if "mlp_out" in sites:
                    saved[("mlp_out", layer)] = block.mlp.output.save()
                if "resid" in sites:
                    saved[("resid", layer)] = block.output.save()
            tracer.stop()  # nothing after the last layer asked for is needed
        yield start, {key: value[0].detach().float().cpu() for key, value in saved.items()}


def check_window(start, end, stop: int, first: int = 0) -> tuple[int, int]:
    """A plot window [start, end) of positions inside [first, stop) (start None: first; end None: stop).

    Out-of-range or empty windows are refused (never clamped, so axis labels are always positions)."""
    covers = f"this result covers positions {first} to {stop - 1}"
    start = first if start is None else check_int("start", start)
    end = check_int("end", end, none_ok=True)
    if not first <= start < stop:
        raise ValueError(f"start={start} is out of range: {covers}")
    end = stop if end is None else end
    if end <= start:
        raise ValueError(f"end={end} is not accepted: the window [start, end) must hold at least one position "
                         f"(end > start={start})")
    if end > stop:
        raise ValueError(f"end={end} is out of range: {covers} (end at most {stop})")
    return start, end


# ----------------------------------------------------------------------------- saving and loading


def read_saved(path: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, str], Path]:
    """Tensors and metadata of a result saved by `.save`; names the file when it is missing or unreadable."""
    path = check_path("path", path)
    if not path.exists():
        raise FileNotFoundError(f"{kind}.load: {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"{kind}.load: {str(path)!r} is a folder: give the file written by {kind}.save")
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    except Exception as err:  # noqa: BLE001 - any parse failure becomes one clear message
        raise ValueError(f"{kind}.load: {str(path)!r} is not a readable safetensors file ({type(err).__name__}: "
                         f"{err})") from err
    if meta.get("kind", kind) != kind:
        raise ValueError(f"{kind}.load: {str(path)!r} holds a saved {meta['kind']}, not a {kind}")
    return tensors, meta, path


def meta_field(meta: dict[str, str], name: str, path: Path, kind: str, parse=json.loads, default=...):
    """One metadata field, parsed; a missing or corrupt field names the file and the field."""
    if name not in meta:
        if default is not ...:
            return default
        raise ValueError(f"{kind}.load: {str(path)!r} has no field {name!r}: it is not a saved {kind}, or it is "
                         "damaged")
    try:
        return parse(meta[name])
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{kind}.load: field {name!r} of {str(path)!r} is corrupt ({type(err).__name__}: {err})"
                         ) from err


def tensor_field(tensors: dict[str, torch.Tensor], name: str, path: Path, kind: str, shape=None) -> torch.Tensor:
    """One saved tensor; a missing one, or one of the wrong leading shape, names the file and the field."""
    if name not in tensors:
        raise ValueError(f"{kind}.load: {str(path)!r} has no tensor {name!r}: it is not a saved {kind}, or it is "
                         "damaged")
    value = tensors[name]
    if shape is not None and tuple(value.shape[: len(shape)]) != tuple(shape):
        raise ValueError(f"{kind}.load: tensor {name!r} of {str(path)!r} has shape {tuple(value.shape)}, its "
                         f"metadata says {tuple(shape)}: the file is corrupt")
    return value


# ----------------------------------------------------------------------------- the result


class Activations(SequencePositions):
    """Captured activations: `acts["resid"]` is [layers, positions, hidden] (float32, CPU), layers
    in the order of `acts.layers` (the order asked), row p = position p (`acts.positions`: a
    Trace's prompt tokens first, then its generated tokens); `acts.get(site, layer)` is
    [positions, hidden]; `acts.prompt_length` is the position of the first generated token."""

    def __init__(self, tensors: dict[str, torch.Tensor], layers: list[int], token_texts: list[str],
                 model_name: str = "", generation_start: int = 0):
        self.tensors, self.layers, self.token_texts = tensors, list(layers), token_texts
        self.model_name, self.generation_start = model_name, generation_start

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self.tensors)

    def __getitem__(self, site: str) -> torch.Tensor:
        if site not in self.tensors:
            known = f"sites are {', '.join(SITES)}; " if site not in SITES else ""
            raise ValueError(f"site {site!r} was not captured: {known}captured here: {', '.join(self.tensors)}")
        return self.tensors[site]

    def get(self, site: str, layer: int) -> torch.Tensor:
        tensor = self[site]
        layer = check_int("layer", layer)
        if layer not in self.layers:
            raise ValueError(f"layer={layer} was not captured: captured layers {self.layers} (counted from 0)")
        return tensor[self.layers.index(layer)]

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in self.tensors.items())
        return (f"Activations({len(self.token_texts)} positions (generation from {self.generation_start}), "
                f"layers {self.layers}, {shapes}, model {self.model_name!r})")

    def to_frame(self) -> pd.DataFrame:
        """L2 norm per (site, layer, position)."""
        rows = []
        for site, tensor in self.tensors.items():
            norms = tensor.norm(dim=-1)
            for li, layer in enumerate(self.layers):
                for pos, value in enumerate(norms[li].tolist()):
                    rows.append((site, layer, pos, self.token_texts[pos], pos >= self.generation_start, value))
        return pd.DataFrame(rows, columns=["site", "layer", "position", "token", "generated", "norm"])

    def plot(self, site: str = "resid", start: int | None = None, end: int | None = None) -> go.Figure:
        """Norm of a site's activation by layer x position, for positions [start, end)."""
        norms = self[site].norm(dim=-1)
        start, end = check_window(start, end, len(self.token_texts))
        cols = list(range(start, end))
        fig = go.Figure(go.Heatmap(z=norms[:, start:end].tolist(), x=cols, y=[f"L{layer}" for layer in self.layers],
                                   customdata=[self.token_texts[start:end]] * len(self.layers), colorscale="Viridis",
                                   hovertemplate="%{y} pos %{x} %{customdata!r}<br>norm %{z:.2f}<extra></extra>"))
        fig.update_xaxes(title_text="position")
        return base_layout(fig, f"{site} norm by layer and position", height=120 + 30 * len(self.layers))

    def save(self, path: str | Path) -> Path:
        """One safetensors file: a tensor per site and JSON metadata (layers, tokens, model)."""
        path = check_path("path", path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"kind": "Activations", "layers": json.dumps(self.layers), "sites": json.dumps(list(self.tensors)),
                "token_texts": json.dumps(self.token_texts),
                "model_name": self.model_name, "generation_start": str(self.generation_start)}
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Activations:
        tensors, meta, path = read_saved(path, "Activations")
        layers = meta_field(meta, "layers", path, "Activations")
        texts = meta_field(meta, "token_texts", path, "Activations")
        order = meta_field(meta, "sites", path, "Activations")
        start = meta_field(meta, "generation_start", path, "Activations", parse=int, default=0)
        shape = (len(layers), len(texts))
        kept = {site: tensor_field(tensors, site, path, "Activations", shape) for site in order}
        return cls(kept, layers, texts, meta.get("model_name", ""), start)


# ----------------------------------------------------------------------------- the probe


def capture(lab, text_or_trace, sites=SITES, layers=None, chunk_size: int | None = None
            ) -> Activations | list[Activations]:
    """Activations at `sites` for `layers` (None: all; any order, each once) over a text or a Trace;
    a list of them gives a list of Activations.

    chunk_size: run the input in chunks of this many tokens with a KV cache (same values, less
    peak memory for long traces); None runs it in one pass.
    """
    sites = check_sites(sites)
    layers = check_layers(lab, layers)
    chunk_size = check_chunk_size(chunk_size)
    inputs, single = as_batch(text_or_trace)
    need_model(lab, "capture")
    encoded = [encode(lab, item) for item in inputs]  # every input checked before any forward pass
    results = [_capture_one(lab, enc, sites, layers, chunk_size) for enc in encoded]
    return results[0] if single else results


def _capture_one(lab, encoded: Encoded, sites, layers, chunk_size) -> Activations:
    parts: dict[tuple[str, int], list[torch.Tensor]] = {(site, layer): [] for site in sites for layer in layers}
    for _, chunk in iter_chunks(lab, encoded.ids, sites, layers, chunk_size):
        for key, value in chunk.items():
            parts[key].append(value)
    tensors = {site: torch.stack([torch.cat(parts[(site, layer)]) for layer in layers]) for site in sites}
    return Activations(tensors, layers, encoded.token_texts, lab.name, encoded.generation_start)
