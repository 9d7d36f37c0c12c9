"""Build a tiny MiMo checkpoint in the exact hub layout of XiaomiMiMo/MiMo-7B-RL.

config.json carries MiMo's real field set (sizes scaled down, `auto_map` included); the weights
are split over two safetensors shards with `model.safetensors.index.json`; the folder has a
generation_config.json, a Qwen2-style tokenizer with ChatML tokens and a chat template, and a
`configuration_mimo.py` / `modeling_mimo.py` that record and fail loudly if anything imports them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# MiMo-7B-RL's config.json field set, with small sizes.
MIMO_CONFIG = {
    "architectures": ["MiMoForCausalLM"],
    "attention_bias": True,
    "attention_dropout": 0.0,
    "auto_map": {
        "AutoConfig": "configuration_mimo.MiMoConfig",
        "AutoModel": "modeling_mimo.MiMoModel",
        "AutoModelForCausalLM": "modeling_mimo.MiMoForCausalLM",
    },
    "bos_token_id": None,
    "eos_token_id": None,  # filled with the tokenizer's <|im_end|>
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 128,
    "max_position_embeddings": 32768,
    "max_window_layers": 3,
    "model_type": "mimo",
    "num_attention_heads": 4,
    "num_hidden_layers": 3,
    "num_key_value_heads": 2,
    "num_nextn_predict_layers": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 640000,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": None,  # filled with the tokenizer's size
}

REMOTE_CODE = '''"""Stands in for the hub's remote code: importing it is a bug in mimo_lab."""
import os
marker = os.environ.get("MIMO_LAB_REMOTE_CODE_MARKER")
if marker:
    with open(marker, "a") as f:
        f.write(__name__ + "\\n")
raise RuntimeError("remote code from the checkpoint folder was executed: mimo_lab must never import " + __name__)
'''

CORPUS = [
    "What is 128 + 367? <think> I add the numbers. </think> The answer is \\boxed{495}.",
    "Hello world, this is a tiny tokenizer for tests. Solve for x: 3x + 7 = 25",
    "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
] * 20


def build(folder: Path, seed: int = 0) -> Path:
    """Write the fixture checkpoint into `folder` (created) and return it."""
    from mimo_lab.models.mimo import MiMoConfig, MiMoForCausalLM
    from mimo_lab.nano.tokenizer import build_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(CORPUS, vocab_size=300)
    tokenizer.save_pretrained(folder)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config_json = dict(MIMO_CONFIG, vocab_size=len(tokenizer), eos_token_id=eos)
    (folder / "config.json").write_text(json.dumps(config_json, indent=2))

    torch.manual_seed(seed)
    config = MiMoConfig(**{k: v for k, v in config_json.items()
                           if k not in ("auto_map", "architectures", "rope_theta", "rope_scaling", "torch_dtype",
                                        "transformers_version", "attention_bias")},
                        rope_parameters={"rope_type": "default", "rope_theta": 640000.0})
    model = MiMoForCausalLM(config)
    with torch.no_grad():  # give norms and biases non-trivial values so the test can tell them apart
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                param.normal_(0, 0.1)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    names = sorted(state)
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map, total = {}, 0
    for i, part in enumerate(halves, start=1):
        shard = f"model-{i:05d}-of-{len(halves):05d}.safetensors"
        save_file({k: state[k] for k in part}, str(folder / shard), metadata={"format": "pt"})
        for k in part:
            weight_map[k] = shard
            total += state[k].numel() * state[k].element_size()
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({
        "bos_token_id": None, "eos_token_id": config_json["eos_token_id"], "transformers_version": "4.40.1"}))
    (folder / "configuration_mimo.py").write_text(REMOTE_CODE)
    (folder / "modeling_mimo.py").write_text(REMOTE_CODE)
    return folder
