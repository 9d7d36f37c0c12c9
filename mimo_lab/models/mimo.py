"""Native MiMo: Qwen2 decoder plus multi-token-prediction (MTP) layers, no remote code.

MiMo-7B checkpoints ship `modeling_mimo.py` for `trust_remote_code`; mimo_lab never runs it.
The classes here read the same weights (`model.mtp_layers.{i}.*`) and, unlike the hub code,
can run the MTP head:

    slot t:  h_t  = last decoder layer output at t (before the final norm)    [batch, seq, hidden]
             e    = embed(x_{t+1})
             z    = input_proj(cat[hidden_layernorm(h_t), token_layernorm(e)])
             z    = Qwen2 decoder block(z)  (causal over slots, RoPE)
             logits_{t+2} = lm_head(final_layernorm(z))

Slot 0 (the first position) is where conventions differ: vLLM and SGLang set its token embedding
to zero (`inputs_embeds[positions == 0] = 0`, DeepSeek-MTP's rule); a model trained without that
rule sees embed(x_1) there. Every slot attends to slot 0, so the choice changes every slot's
logits. `zero_first_embedding` picks one per call; None uses `config.mtp_zero_first_embedding`.
"""

from __future__ import annotations

import inspect

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, Qwen2Config
from transformers.masking_utils import create_causal_mask
from transformers.models.qwen2.modeling_qwen2 import (
    Qwen2Attention,
    Qwen2ForCausalLM,
    Qwen2MLP,
    Qwen2Model,
    Qwen2PreTrainedModel,
    Qwen2RMSNorm,
)

from mimo_lab.checks import check_bool

# transformers renamed create_causal_mask's cache argument (past_key_values up to 5.19, cache from 5.20)
_MASK_CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


@strict
class MiMoConfig(Qwen2Config):
    """Qwen2Config plus MiMo's extra fields.

    num_nextn_predict_layers (int, default 1): number of MTP layers stored under
        `model.mtp_layers`; layer i predicts token t+2+i. MiMo-7B ships exactly one.
    mtp_zero_first_embedding (bool, default True): the MTP layer's convention at slot 0, the
        default of every MTP call. True: its token embedding is zeroed, as vLLM and SGLang run
        MiMo (Xiaomi's ~90% acceptance was measured that way); MiMo-7B's config.json has no such
        field, so it gets True. False: unmasked, as MiMo-nano was trained (its config says so).
    """

    model_type = "mimo"
    num_nextn_predict_layers: int = 1
    mtp_zero_first_embedding: bool = True


class MiMoMTPLayer(nn.Module):
    """One MTP layer: fuse (h_t, embed(x_{t+1})) and run a Qwen2 decoder block over the slots."""

    def __init__(self, config: MiMoConfig):
        super().__init__()
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.token_layernorm = Qwen2RMSNorm(hidden, eps=eps)
        self.hidden_layernorm = Qwen2RMSNorm(hidden, eps=eps)
        self.input_proj = nn.Linear(2 * hidden, hidden, bias=False)
        self.input_layernorm = Qwen2RMSNorm(hidden, eps=eps)
        # Qwen2Attention reads config.layer_types[layer_idx], which has no entry for the MTP
        # layer: build it as layer 0, then give it an index of its own (its KV-cache slot).
        self.self_attn = Qwen2Attention(config, layer_idx=0)
        self.self_attn.layer_idx = config.num_hidden_layers
        self.post_attention_layernorm = Qwen2RMSNorm(hidden, eps=eps)
        self.mlp = Qwen2MLP(config)
        self.final_layernorm = Qwen2RMSNorm(hidden, eps=eps)

    def forward(
        self,
        input_embeds: torch.Tensor,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_embeds: embed(x_{t+1}) [batch, slots, hidden]; hidden_states: h_t, same shape.

        Returns the final-normed hidden state [batch, slots, hidden] (feed it to `lm_head`).
        """
        fused = torch.cat([self.hidden_layernorm(hidden_states), self.token_layernorm(input_embeds)], dim=-1)
        x = self.input_proj(fused)
        attn_out, _ = self.self_attn(
            self.input_layernorm(x), position_embeddings=position_embeddings, attention_mask=attention_mask
        )
        x = x + attn_out
        x = x + self.mlp(self.post_attention_layernorm(x))
        return self.final_layernorm(x)


class MiMoModel(Qwen2Model):
    """Qwen2Model (its forward is unchanged and never runs the MTP layers) plus `mtp_layers`."""

    config_class = MiMoConfig
    config: MiMoConfig

    def __init__(self, config: MiMoConfig):
        super().__init__(config)
        self.mtp_layers = nn.ModuleList(MiMoMTPLayer(config) for _ in range(config.num_nextn_predict_layers))
        self.post_init()

    def mtp_hidden(
        self,
        hidden_states: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        layer: int = 0,
        zero_first_embedding: bool | None = None,
    ) -> torch.Tensor:
        """Run MTP layer `layer` over every slot of a sequence.

        hidden_states: pre-norm output of the last decoder layer [batch, seq, hidden];
        input_ids: [batch, seq]; attention_mask: [batch, seq] of 1/0 (left padding allowed).
        zero_first_embedding: zero the token embedding of slot 0 (vLLM / SGLang) or not; None:
            `config.mtp_zero_first_embedding`.
        Returns [batch, seq-1, hidden]: slot t fuses h_t with embed(x_{t+1}).
        """
        if not 0 <= layer < len(self.mtp_layers):
            raise ValueError(f"MTP layer {layer} out of range: the model has {len(self.mtp_layers)} MTP layer(s)")
        zero_first = self.resolve_zero_first_embedding(zero_first_embedding)
        embeds = self.embed_tokens(input_ids[:, 1:])
        hidden = hidden_states[:, :-1]
        if attention_mask is None:
            slot_mask = None
            positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        else:
            slot_mask = (attention_mask[:, :-1] * attention_mask[:, 1:]).to(attention_mask.dtype)
            # Positions follow the mask so left padding does not shift RoPE phases.
            positions = (attention_mask[:, :-1].long().cumsum(-1) - 1).clamp(min=0)
        if zero_first:
            # vLLM's `inputs_embeds[positions == 0] = 0`; padded slots (also at 0) are masked anyway
            embeds = embeds.masked_fill((positions == 0).unsqueeze(-1), 0.0)
        mask = create_causal_mask(config=self.config, inputs_embeds=hidden, attention_mask=slot_mask,
                                  position_ids=positions, **{_MASK_CACHE_ARGUMENT: None})
        position_embeddings = self.rotary_emb(hidden, positions)
        return self.mtp_layers[layer](embeds, hidden, position_embeddings, attention_mask=mask)

    def resolve_zero_first_embedding(self, value: bool | None = None) -> bool:
        """The slot-0 convention a call uses: `value`, or the config's when None."""
        value = check_bool("zero_first_embedding", value, none_ok=True)
        return bool(getattr(self.config, "mtp_zero_first_embedding", True)) if value is None else value


class MiMoForCausalLM(Qwen2ForCausalLM):
    """MiMo causal LM. `forward`/`generate` are Qwen2's; `mtp_logits` runs the MTP head."""

    config_class = MiMoConfig
    config: MiMoConfig

    def __init__(self, config: MiMoConfig):
        # Skip Qwen2ForCausalLM.__init__, which would first build a Qwen2Model to throw away.
        Qwen2PreTrainedModel.__init__(self, config)
        self.model = MiMoModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward_with_mtp(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, layer: int = 0,
        zero_first_embedding: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass giving (logits [batch, seq, vocab], mtp_logits [batch, seq-1, vocab]).

        mtp_logits row t is the MTP head's prediction of token t+2; zero_first_embedding: see
        `MiMoModel.mtp_hidden` (None: the config's convention).
        """
        zero_first_embedding = self.model.resolve_zero_first_embedding(zero_first_embedding)  # before the pass
        captured: dict[str, torch.Tensor] = {}

        def keep_output(_module, _args, output):
            captured["hidden"] = output[0] if isinstance(output, tuple) else output

        handle = self.model.layers[-1].register_forward_hook(keep_output)
        try:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        finally:
            handle.remove()
        logits = self.lm_head(out.last_hidden_state)
        mtp = self.model.mtp_hidden(captured["hidden"], input_ids, attention_mask, layer=layer,
                                    zero_first_embedding=zero_first_embedding)
        return logits, self.lm_head(mtp)

    def mtp_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, layer: int = 0,
        zero_first_embedding: bool | None = None,
    ) -> torch.Tensor:
        """MTP logits [batch, seq-1, vocab]; row t predicts token t+2 (from h_t and token t+1).

        zero_first_embedding: True zeroes slot 0's token embedding (vLLM / SGLang), False leaves it;
        None: `config.mtp_zero_first_embedding`.
        """
        if input_ids.dim() != 2 or input_ids.shape[1] < 2:
            raise ValueError(f"input_ids must be [batch, seq] with seq >= 2, got shape {tuple(input_ids.shape)}")
        return self.forward_with_mtp(input_ids, attention_mask, layer=layer,
                                     zero_first_embedding=zero_first_embedding)[1]

    @torch.no_grad()
    def mtp_predictions(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, chunk_size: int = 1024,
        layer: int = 0, zero_first_embedding: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """The MTP head's t+2 guesses over whole sequences, never holding [seq, vocab] logits.

        zero_first_embedding: the slot-0 convention (see `mtp_logits`; None: the config's).
        Returns tensors of shape [batch, seq-1] (slot t predicts token t+2; the last slot has
        no target): `top_id` and `top_prob` (its argmax and probability), `target_prob` (the
        probability of the token actually at t+2; NaN where there is none), `entropy` (nats).
        """
        zero_first_embedding = self.model.resolve_zero_first_embedding(zero_first_embedding)  # before the pass
        captured: dict[str, torch.Tensor] = {}
        handle = self.model.layers[-1].register_forward_hook(
            lambda _m, _a, out: captured.__setitem__("hidden", out[0] if isinstance(out, tuple) else out)
        )
        try:
            self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        finally:
            handle.remove()
        hidden = self.model.mtp_hidden(captured.pop("hidden"), input_ids, attention_mask, layer=layer,
                                       zero_first_embedding=zero_first_embedding)
        batch, slots = hidden.shape[:2]
        targets = torch.full((batch, slots), -1, dtype=torch.long, device=input_ids.device)
        targets[:, :-1] = input_ids[:, 2:]
        out = {name: torch.empty(batch, slots, device=hidden.device) for name in ("top_prob", "target_prob", "entropy")}
        out["top_id"] = torch.empty(batch, slots, dtype=torch.long, device=hidden.device)
        for start in range(0, slots, chunk_size):
            part = slice(start, start + chunk_size)
            logprobs = self.lm_head(hidden[:, part]).float().log_softmax(-1)
            top = logprobs.max(-1)
            out["top_id"][:, part], out["top_prob"][:, part] = top.indices, top.values.exp()
            out["entropy"][:, part] = -(logprobs.exp() * logprobs).sum(-1)
            target = targets[:, part]
            picked = logprobs.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1).exp()
            out["target_prob"][:, part] = torch.where(target >= 0, picked, torch.nan)
        return out


def register() -> None:
    """Make the Auto classes resolve `model_type: "mimo"` to these classes (idempotent)."""
    AutoConfig.register("mimo", MiMoConfig, exist_ok=True)
    AutoModel.register(MiMoConfig, MiMoModel, exist_ok=True)
    AutoModelForCausalLM.register(MiMoConfig, MiMoForCausalLM, exist_ok=True)


__all__ = ["MiMoConfig", "MiMoMTPLayer", "MiMoModel", "MiMoForCausalLM", "register"]
