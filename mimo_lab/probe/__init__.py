"""Probes over a Lab: capture, logit and MTP lenses, attention at trace scale, interventions.

Every probe takes a Lab as its first argument and a text or a Trace, and returns a small
result object with `.plot()` (plotly), `.to_frame()` (pandas) and, where it holds tensors,
`.save()` / `.load()` (safetensors).

Sites (the same names everywhere): `resid` = a decoder layer's output (the residual stream
after layer L), `attn_out` = its attention block's output (before the residual add),
`mlp_out` = its MLP's output (before the residual add). Layers count from 0.
"""

from mimo_lab.probe.capture import SITES, Activations, capture

__all__ = ["SITES", "Activations", "capture"]
