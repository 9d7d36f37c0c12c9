"""Probes over a Lab: capture, logit and MTP lenses, attention at trace scale, interventions.

Every probe takes a text, a Trace or a list of them (a list gives a list of results) and returns
a small result object that shows itself, with `.plot()` (plotly), `.to_frame()` (pandas) and,
where it holds tensors, `.save()` / `.load()` (safetensors + JSON). Call them as Lab methods
(`lab.capture`, `lab.logit_lens`, `lab.mtp_lens`, ...); the module functions take the Lab first.

Positions: position p is the p-th token of the sequence the model reads, a Trace's prompt tokens
first, then its generated tokens (`trace.prompt_length` is the first generated one). Every result
reports the positions it covers (`.positions`), so a position from one result indexes any other.

A Trace made with another tokenizer is refused; one from another model with the same tokenizer is
accepted, and everything is computed by this lab (never read from the Trace's stored analytics).

Sites (the same names everywhere): `resid` = a decoder layer's output (the residual stream
after layer L), `attn_out` = its attention block's output (before the residual add),
`mlp_out` = its MLP's output (before the residual add). Layers count from 0; a list of layers
may come in any order (results follow it), each layer once.
"""

from mimo_lab.probe.capture import SITES, Activations, capture
from mimo_lab.probe.lens import LensResult, MTPLens, logit_lens, mtp_lens

__all__ = ["SITES", "Activations", "LensResult", "MTPLens", "capture", "logit_lens", "mtp_lens"]
