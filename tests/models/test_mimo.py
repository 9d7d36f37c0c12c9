"""Native MiMo: hub-layout loading without remote code, Qwen2 equivalence, the MTP formula."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from mimo_lab.models.mimo import MiMoConfig, MiMoForCausalLM, MiMoModel


def _weights(folder) -> dict[str, torch.Tensor]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    state = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(load_file(str(folder / shard)))
    return {k: v.float() for k, v in state.items()}


def _ids(vocab: int, batch: int = 2, seq: int = 12) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))


def test_hub_layout_loads_with_no_missing_or_unexpected_keys(mimo_checkpoint, remote_code_marker):
    model, info = MiMoForCausalLM.from_pretrained(mimo_checkpoint, output_loading_info=True, dtype=torch.float32)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    assert model.config.num_nextn_predict_layers == 1
    assert len(model.model.mtp_layers) == 1
    assert model.config.rope_parameters["rope_theta"] == 640000
    weights = _weights(mimo_checkpoint)
    assert torch.equal(model.model.mtp_layers[0].input_proj.weight, weights["model.mtp_layers.0.input_proj.weight"])
    assert not remote_code_marker.exists()


@pytest.mark.parametrize("trust_remote_code", [True, False, None])
def test_auto_classes_use_native_mimo_never_the_folder_code(mimo_checkpoint, remote_code_marker, trust_remote_code):
    config = AutoConfig.from_pretrained(mimo_checkpoint, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(mimo_checkpoint, trust_remote_code=trust_remote_code)
    base = AutoModel.from_pretrained(mimo_checkpoint, trust_remote_code=trust_remote_code)
    assert type(config) is MiMoConfig
    assert type(model) is MiMoForCausalLM
    assert type(base) is MiMoModel
    assert not remote_code_marker.exists(), "code from the checkpoint folder ran"


def test_main_logits_equal_plain_qwen2(mimo_checkpoint):
    mimo = MiMoForCausalLM.from_pretrained(mimo_checkpoint, dtype=torch.float32).eval()
    raw = json.loads((mimo_checkpoint / "config.json").read_text())
    qwen_config = Qwen2Config(
        vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"], intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"], num_attention_heads=raw["num_attention_heads"],
        num_key_value_heads=raw["num_key_value_heads"], rms_norm_eps=raw["rms_norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": float(raw["rope_theta"])}, tie_word_embeddings=False)
    qwen = Qwen2ForCausalLM(qwen_config).eval()
    weights = {k: v for k, v in _weights(mimo_checkpoint).items() if ".mtp_layers." not in k}
    missing, unexpected = qwen.load_state_dict(weights, strict=True)
    assert not missing and not unexpected
    ids = _ids(raw["vocab_size"])
    with torch.no_grad():
        expected = qwen(ids).logits
        got = mimo(ids).logits
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# --- an independent MTP reference: plain tensor maths from the checkpoint's weights ---------


def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, positions, theta):
    # x: [batch, heads, seq, dim]; rotate-half convention (Qwen2 / MiMo)
    dim = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    angles = positions[:, None].double() * inv[None]
    cos = torch.cat([angles.cos(), angles.cos()], -1).float()
    sin = torch.cat([angles.sin(), angles.sin()], -1).float()
    half = dim // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


def _reference_mtp_logits(w, cfg, hidden_prenorm, ids, zero_first_embedding=False):
    """FACTS.md's MTP formula in plain tensor maths; zero_first_embedding: vLLM's
    `inputs_embeds[positions == 0] = 0` (slot t sits at position t, so slot 0's embedding is zero)."""
    p, eps = "model.mtp_layers.0.", cfg["rms_norm_eps"]
    heads, kv_heads, size = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    head_dim = size // heads
    h = hidden_prenorm[:, :-1]  # h_t
    e = w["model.embed_tokens.weight"][ids[:, 1:]].clone()  # embed(x_{t+1})
    if zero_first_embedding:
        e[:, 0] = 0.0
    x = torch.cat([_rms(h, w[p + "hidden_layernorm.weight"], eps), _rms(e, w[p + "token_layernorm.weight"], eps)], -1)
    x = x @ w[p + "input_proj.weight"].T
    batch, slots, _ = x.shape
    a = _rms(x, w[p + "input_layernorm.weight"], eps)
    q = (a @ w[p + "self_attn.q_proj.weight"].T + w[p + "self_attn.q_proj.bias"]).view(batch, slots, heads, head_dim)
    k = (a @ w[p + "self_attn.k_proj.weight"].T + w[p + "self_attn.k_proj.bias"]).view(batch, slots, kv_heads, head_dim)
    v = (a @ w[p + "self_attn.v_proj.weight"].T + w[p + "self_attn.v_proj.bias"]).view(batch, slots, kv_heads, head_dim)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    positions = torch.arange(slots)
    q, k = _rope(q, positions, cfg["rope_theta"]), _rope(k, positions, cfg["rope_theta"])
    group = heads // kv_heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) / head_dim**0.5
    scores = scores.masked_fill(torch.ones(slots, slots, dtype=torch.bool).triu(1), float("-inf"))
    attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, slots, size)
    x = x + attn @ w[p + "self_attn.o_proj.weight"].T
    m = _rms(x, w[p + "post_attention_layernorm.weight"], eps)
    gate, up = m @ w[p + "mlp.gate_proj.weight"].T, m @ w[p + "mlp.up_proj.weight"].T
    m = (F.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    x = _rms(x + m, w[p + "final_layernorm.weight"], eps)
    return x @ w["lm_head.weight"].T


def _last_hidden(model, ids):
    captured = {}
    handle = model.model.layers[-1].register_forward_hook(lambda _m, _a, out: captured.setdefault("h", out))
    with torch.no_grad():
        model.model(ids)
    handle.remove()
    return captured["h"]


@pytest.mark.parametrize("zero_first", [False, True])
def test_mtp_logits_match_the_formula(mimo_checkpoint, zero_first):
    model = MiMoForCausalLM.from_pretrained(mimo_checkpoint, dtype=torch.float32).eval()
    cfg = json.loads((mimo_checkpoint / "config.json").read_text())
    ids = _ids(cfg["vocab_size"], batch=2, seq=10)
    hidden = _last_hidden(model, ids)
    # the hook's output is the last decoder layer's output before the final norm
    assert not torch.allclose(hidden, model.model.norm(hidden))
    expected = _reference_mtp_logits(_weights(mimo_checkpoint), cfg, hidden, ids, zero_first_embedding=zero_first)
    with torch.no_grad():
        got = model.mtp_logits(ids, zero_first_embedding=zero_first)
    assert got.shape == (2, 9, cfg["vocab_size"])
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_the_two_slot0_conventions_differ_at_every_slot(mimo_checkpoint):
    model = MiMoForCausalLM.from_pretrained(mimo_checkpoint, dtype=torch.float32).eval()
    ids = _ids(model.config.vocab_size, batch=1, seq=10)
    with torch.no_grad():
        zeroed = model.mtp_logits(ids, zero_first_embedding=True)
        unmasked = model.mtp_logits(ids, zero_first_embedding=False)
    gap = (zeroed - unmasked).abs().amax(-1)[0]  # per slot
    assert bool((gap > 1e-4).all()), gap  # every slot attends to slot 0


def test_zeroed_convention_is_vllms_rule(mimo_checkpoint):
    """vLLM zeroes slot 0's token embedding: slot 0 then depends on h_0 alone, so changing token 1
    leaves slot 0's MTP logits unchanged; unmasked, they change."""
    model = MiMoForCausalLM.from_pretrained(mimo_checkpoint, dtype=torch.float32).eval()
    ids = _ids(model.config.vocab_size, batch=1, seq=8)
    other = ids.clone()
    other[0, 1] = (ids[0, 1] + 1) % model.config.vocab_size
    with torch.no_grad():
        a, b = model.mtp_logits(ids, zero_first_embedding=True), model.mtp_logits(other, zero_first_embedding=True)
        c, d = model.mtp_logits(ids, zero_first_embedding=False), model.mtp_logits(other, zero_first_embedding=False)
    torch.testing.assert_close(a[:, 0], b[:, 0], atol=1e-6, rtol=0)
    assert (c[:, 0] - d[:, 0]).abs().max() > 1e-3


def test_the_default_convention_comes_from_the_config(mimo_checkpoint):
    # MiMo-7B's config.json has no mtp_zero_first_embedding: the serving engines' convention (zeroed)
    model = MiMoForCausalLM.from_pretrained(mimo_checkpoint, dtype=torch.float32).eval()
    assert "mtp_zero_first_embedding" not in json.loads((mimo_checkpoint / "config.json").read_text())
    assert model.config.mtp_zero_first_embedding is True
    ids = _ids(model.config.vocab_size, batch=1, seq=9)
    with torch.no_grad():
        torch.testing.assert_close(model.mtp_logits(ids), model.mtp_logits(ids, zero_first_embedding=True),
                                   atol=0, rtol=0)
        model.config.mtp_zero_first_embedding = False
        torch.testing.assert_close(model.mtp_logits(ids), model.mtp_logits(ids, zero_first_embedding=False),
                                   atol=0, rtol=0)
    from mimo_lab.nano import CHECKPOINT

    nano = MiMoForCausalLM.from_pretrained(CHECKPOINT, dtype=torch.float32)
    assert nano.config.mtp_zero_first_embedding is False  # MiMo-nano was trained unmasked
    from mimo_lab.nano.train import TrainSettings, model_config

    assert model_config(TrainSettings(), nano_tokenizer()).mtp_zero_first_embedding is False  # retrains too
    assert "unmasked" in (CHECKPOINT / "README.md").read_text().split("MTP convention", 1)[1].splitlines()[0]


def nano_tokenizer():
    from transformers import AutoTokenizer

    from mimo_lab.nano import CHECKPOINT

    return AutoTokenizer.from_pretrained(CHECKPOINT)


@pytest.mark.parametrize("zero_first", [False, True])
def test_mtp_logits_ignore_left_padding(mimo_checkpoint, zero_first):
    model = MiMoForCausalLM.from_pretrained(mimo_checkpoint, dtype=torch.float32).eval()
    ids = _ids(model.config.vocab_size, batch=1, seq=8)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)], dim=1)
    with torch.no_grad():
        alone = model.mtp_logits(ids, zero_first_embedding=zero_first)
        with_pad = model.mtp_logits(padded, attention_mask=mask, zero_first_embedding=zero_first)[:, 3:]
    torch.testing.assert_close(with_pad, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("zero_first", [False, True])
def test_mtp_predictions_agree_with_mtp_logits(mimo_checkpoint, zero_first):
    model = MiMoForCausalLM.from_pretrained(mimo_checkpoint, dtype=torch.float32).eval()
    ids = _ids(model.config.vocab_size, batch=1, seq=9)
    with torch.no_grad():
        logprobs = model.mtp_logits(ids, zero_first_embedding=zero_first).log_softmax(-1)
    pred = model.mtp_predictions(ids, chunk_size=3, zero_first_embedding=zero_first)  # chunks < the sequence
    assert torch.equal(pred["top_id"], logprobs.argmax(-1))
    torch.testing.assert_close(pred["top_prob"], logprobs.max(-1).values.exp())
    target = logprobs[0, :-1].gather(-1, ids[0, 2:, None])[:, 0].exp()
    torch.testing.assert_close(pred["target_prob"][0, :-1], target)
    assert torch.isnan(pred["target_prob"][0, -1])


def test_save_load_round_trip(mimo_checkpoint, tmp_path):
    model = MiMoForCausalLM.from_pretrained(mimo_checkpoint, dtype=torch.float32).eval()
    model.save_pretrained(tmp_path / "copy")
    saved = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert saved["model_type"] == "mimo" and saved["num_nextn_predict_layers"] == 1
    assert saved["rope_parameters"]["rope_theta"] == 640000
    again = MiMoForCausalLM.from_pretrained(tmp_path / "copy", dtype=torch.float32).eval()
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, atol=0, rtol=0)
        torch.testing.assert_close(again.mtp_logits(ids), model.mtp_logits(ids), atol=0, rtol=0)


def test_mtp_logits_rejects_bad_shapes(mimo_checkpoint):
    model = MiMoForCausalLM.from_pretrained(mimo_checkpoint, dtype=torch.float32)
    with pytest.raises(ValueError, match="seq >= 2"):
        model.mtp_logits(torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="MTP layer 3 out of range"):
        model.mtp_logits(torch.zeros(1, 4, dtype=torch.long), layer=3)
    with pytest.raises(TypeError, match="zero_first_embedding"):
        model.mtp_logits(torch.zeros(1, 4, dtype=torch.long), zero_first_embedding="yes")
    with pytest.raises(TypeError, match="zero_first_embedding"):
        model.mtp_predictions(torch.zeros(1, 4, dtype=torch.long), zero_first_embedding=1)
