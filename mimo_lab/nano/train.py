"""Train MiMo-nano from its seed: `mimo-lab nano train --out DIR`.

Read top to bottom: the settings, the tokenizer, the data stream, the model, the loop. The loss
is next-token cross-entropy on the completion (thinking + answer + `<|im_end|>`) plus, weighted
by `mtp_weight`, the MTP head's cross-entropy on token t+2, trained jointly as in MiMo.

A run checkpoints every `save_every` steps (safetensors) and, started again with the same
`--out`, resumes where it stopped, drawing exactly the batches it would have drawn.
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from mimo_lab.models.mimo import MiMoConfig, MiMoForCausalLM
from mimo_lab.nano import tasks
from mimo_lab.nano.tokenizer import IM_END, build_tokenizer


@dataclass
class TrainSettings:
    """Everything that decides the shipped weights. Change one and you get a different model."""

    seed: int = 0
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.01
    mtp_weight: float = 0.3
    grad_clip: float = 1.0
    pool_batches: int = 8  # batches drawn together and grouped by length (less padding)
    tokenizer_corpus: int = 6000
    save_every: int = 200
    threads: int = 2
    # Matmuls and attention in bfloat16 under autocast (weights, optimizer state and the loss stay
    # float32): on a CPU with AVX512-BF16 a whole run's steps are 1.17x faster (benchmarks/RESULTS.md),
    # so more steps fit in the 40 minutes.
    bf16: bool = True
    # The trace style of the training data (`tasks.TRACE_STYLES`): "v1" is the shipped model's (one
    # strategy per family); "v2" has several strategies, slips noticed or not, false alarms and traces
    # cut short, so that the model samples like a reasoning model (issue 16).
    traces: str = "v1"
    # The MTP layer's slot-0 convention in training (MiMoConfig.mtp_zero_first_embedding, written to
    # config.json): False = unmasked (the shipped model); True = slot 0's token embedding zeroed, as
    # vLLM and SGLang serve MiMo. v2 runs set True.
    mtp_zero_first_embedding: bool = False
    # model shape (~2.3M parameters)
    hidden_size: int = 192
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 6
    num_key_value_heads: int = 2
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768

    def __post_init__(self) -> None:
        """Bad settings fail here, before a tokenizer is trained or a folder written."""
        least = {"seed": None, "warmup": 0, "steps": 1, "batch_size": 1, "pool_batches": 1, "tokenizer_corpus": 1,
                 "save_every": 1, "threads": 1, "hidden_size": 1, "intermediate_size": 1, "num_hidden_layers": 1,
                 "num_attention_heads": 1, "num_key_value_heads": 1, "max_position_embeddings": 1}
        for name, low in least.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
                accepted = "a whole number" + ("" if low is None else f" of at least {low}")
                raise ValueError(f"TrainSettings.{name}={value!r}: {accepted} is accepted")
        for name in ("bf16", "mtp_zero_first_embedding"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TrainSettings.{name}={getattr(self, name)!r}: True or False is accepted")
        if self.traces not in tasks.TRACE_STYLES:
            raise ValueError(f"TrainSettings.traces={self.traces!r}: one of {', '.join(map(repr, tasks.TRACE_STYLES))} "
                             "is accepted")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"TrainSettings.lr={self.lr!r}, min_lr={self.min_lr!r}: 0 <= min_lr <= lr is accepted")
        if self.num_attention_heads % self.num_key_value_heads or self.hidden_size % self.num_attention_heads:
            raise ValueError(f"TrainSettings: hidden_size={self.hidden_size}, num_attention_heads="
                             f"{self.num_attention_heads}, num_key_value_heads={self.num_key_value_heads}: hidden_size "
                             "a multiple of the heads, and the heads a multiple of the KV heads, is accepted")


_ADDED_SETTINGS = {"traces": "v1", "mtp_zero_first_embedding": False}  # settings added after the shipped run


def model_config(settings: TrainSettings, tokenizer) -> MiMoConfig:
    """MiMo-7B's config fields, scaled down."""
    return MiMoConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_hidden_layers,
        num_attention_heads=settings.num_attention_heads,
        num_key_value_heads=settings.num_key_value_heads,
        max_position_embeddings=settings.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": settings.rope_theta},
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        num_nextn_predict_layers=1,
        # the MTP layer's slot-0 convention: `losses` trains it (its MTP call takes the config's), config.json
        # and the card record it
        mtp_zero_first_embedding=settings.mtp_zero_first_embedding,
        hidden_act="silu",
        attention_dropout=0.0,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )


def prompt_text(tokenizer, prompt: str) -> str:
    """The chat-formatted prompt, as `Lab.generate` builds it (empty system message, as MiMo)."""
    messages = [{"role": "system", "content": ""}, {"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def make_tokenizer(settings: TrainSettings):
    examples = tasks.sample_examples(settings.tokenizer_corpus, seed=settings.seed + 10_000, style=settings.traces)
    texts = [prompt_text_raw(e.problem.prompt) + e.completion + IM_END for e in examples]
    return build_tokenizer(texts)


def prompt_text_raw(prompt: str) -> str:
    # The chat markup without a tokenizer (the tokenizer is being built from it).
    return f"<|im_start|>system\n<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def encode(tokenizer, example: tasks.Example) -> tuple[list[int], int]:
    """(token ids of prompt + completion + <|im_end|>, number of prompt tokens)."""
    prompt_ids = tokenizer(prompt_text(tokenizer, example.problem.prompt), add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(example.completion + IM_END, add_special_tokens=False)["input_ids"]
    return prompt_ids + completion_ids, len(prompt_ids)


@functools.lru_cache(maxsize=1)  # a pool serves `pool_batches` consecutive steps
def _encoded_pool(seed: int, size: int, tokenizer, traces: str = "v1") -> list[tuple[list[int], int]]:
    """The pool's examples encoded and sorted by length (callers only slice it)."""
    examples = tasks.sample_examples(size, seed=seed, style=traces)
    return sorted((encode(tokenizer, e) for e in examples), key=lambda pair: len(pair[0]))


def batch_for_step(step: int, settings: TrainSettings, tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, loss_mask) for a step: a pure function of (seed, step)."""
    pool_index, slot = divmod(step, settings.pool_batches)
    seed = settings.seed * 1_000_003 + pool_index
    encoded = _encoded_pool(seed, settings.batch_size * settings.pool_batches, tokenizer, settings.traces)
    order = list(range(settings.pool_batches))
    random.Random(seed).shuffle(order)
    chunk = encoded[order[slot] * settings.batch_size:(order[slot] + 1) * settings.batch_size]
    width = max(len(ids) for ids, _ in chunk)
    input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(chunk), width), dtype=torch.long)
    loss_mask = torch.zeros((len(chunk), width), dtype=torch.bool)
    for row, (ids, n_prompt) in enumerate(chunk):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        loss_mask[row, n_prompt: len(ids)] = True  # targets: completion tokens
    return input_ids, attention, loss_mask


def losses(model: MiMoForCausalLM, input_ids, attention, loss_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(next-token loss, MTP t+2 loss), both on completion tokens only."""
    # zero_first_embedding=None: the config's convention (TrainSettings.mtp_zero_first_embedding)
    logits, mtp_logits = model.forward_with_mtp(input_ids, attention, zero_first_embedding=None)
    vocab = logits.shape[-1]
    main = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), input_ids[:, 1:].reshape(-1), reduction="none")
    main = (main * loss_mask[:, 1:].reshape(-1)).sum() / loss_mask[:, 1:].sum()
    # mtp row t predicts token t+2
    mtp = F.cross_entropy(mtp_logits[:, :-1].reshape(-1, vocab), input_ids[:, 2:].reshape(-1), reduction="none")
    mtp = (mtp * loss_mask[:, 2:].reshape(-1)).sum() / loss_mask[:, 2:].sum()
    return main, mtp


def learning_rate(step: int, settings: TrainSettings) -> float:
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.min_lr + 0.5 * (settings.lr - settings.min_lr) * (1 + math.cos(math.pi * progress))


def _save_resume_state(path: Path, model, optimizer, step: int, seconds: float) -> None:
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"adam.{names[id(p)]}.{key}"] = value.reshape(1) if value.dim() == 0 else value
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"step": str(step), "seconds": f"{seconds:.1f}"})
    tmp.replace(path)  # atomic: a kill leaves the previous state whole


def _load_resume_state(path: Path, model, optimizer) -> tuple[int, float]:
    """Restore model and optimizer; returns the step to go on from and the training seconds spent so far."""
    from safetensors import safe_open

    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for name, p in model.named_parameters():
        state = {key: tensors[f"adam.{name}.{key}"] for key in ("step", "exp_avg", "exp_avg_sq")
                 if f"adam.{name}.{key}" in tensors}
        if state:
            state["step"] = state["step"].reshape(())
            optimizer.state[p] = state
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return int(meta["step"]), float(meta.get("seconds", 0.0))


def train(out: str | Path, settings: TrainSettings | None = None, *, progress: bool = True) -> Path:
    """Train (or resume) into `out`; writes the checkpoint there and returns its path."""
    settings = settings or TrainSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings_file = out / "train_settings.json"
    # a folder written before a setting existed ran with its default
    if settings_file.exists() and {**_ADDED_SETTINGS, **json.loads(settings_file.read_text())} != asdict(settings):
        raise ValueError(f"{out} holds a run with other settings ({settings_file}); use a new --out")
    settings_file.write_text(json.dumps(asdict(settings), indent=1))
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)

    tokenizer = make_tokenizer(settings)
    config = model_config(settings, tokenizer)
    config._attn_implementation = "sdpa"
    model = MiMoForCausalLM(config)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr, betas=(0.9, 0.98))
    resume = out / "resume.safetensors"
    start, spent = _load_resume_state(resume, model, optimizer) if resume.exists() else (0, 0.0)
    log_path = out / "loss_log.jsonl"
    if log_path.exists():
        # the killed run may have logged steps past its last saved state: they are redone, so drop them
        kept = [line for line in log_path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] < start]
        log_path.write_text("".join(line + "\n" for line in kept))

    model.train()
    began = time.time() - spent   # "seconds" in the log counts training time across resumes
    bar = tqdm(range(start, settings.steps), initial=start, total=settings.steps, desc="MiMo-nano",
               disable=not progress)
    with log_path.open("a") as log:
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, settings)
            input_ids, _, loss_mask = batch_for_step(step, settings, tokenizer)
            # Padding is on the right and causal attention never looks ahead, so pad tokens
            # cannot change the real tokens' outputs: no mask needed (sdpa's fast path).
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
                main, mtp = losses(model, input_ids, None, loss_mask)
            (main + settings.mtp_weight * mtp).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step % 10 == 0 or step == settings.steps - 1:
                record = {"step": step, "loss": round(main.item(), 5), "mtp_loss": round(mtp.item(), 5),
                          "lr": group["lr"], "seconds": round(time.time() - began, 1)}
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{main.item():.4f}", mtp=f"{mtp.item():.4f}")
            if (step + 1) % settings.save_every == 0 and step + 1 < settings.steps:
                _save_resume_state(resume, model, optimizer, step + 1, time.time() - began)

    model.eval()
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.do_sample = True
    model.generation_config.temperature = 0.6
    model.generation_config.top_p = 0.95
    model.generation_config.max_new_tokens = 1024
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if resume.exists():
        resume.unlink()
    write_model_card(out)
    return out


def write_model_card(folder: str | Path, quality_markdown: str | None = None) -> Path:
    """README.md of a checkpoint: how it was made (command, seed, settings, loss) and, when
    given, its measured quality (benchmarks/nano_quality.py writes that part)."""
    folder = Path(folder)
    settings = json.loads((folder / "train_settings.json").read_text())
    log = [json.loads(line) for line in (folder / "loss_log.jsonl").read_text().splitlines() if line.strip()]
    config = json.loads((folder / "config.json").read_text())
    params = sum(t.numel() for t in load_file(str(folder / "model.safetensors")).values())
    last = log[-10:]
    final_loss = sum(r["loss"] for r in last) / len(last)
    final_mtp = sum(r["mtp_loss"] for r in last) / len(last)
    traces = settings.get("traces", "v1")
    zero_first = settings.get("mtp_zero_first_embedding", False)
    command_options = (f" --traces {traces}" if traces != "v1" else "") + (
        "" if zero_first == (traces == "v2") else
        " --mtp-zero-first-embedding" if zero_first else " --no-mtp-zero-first-embedding")
    card_path = folder / "README.md"
    previous_quality = None
    if quality_markdown is None and card_path.exists():
        text = card_path.read_text()
        if "## Quality" in text:
            previous_quality = text.split("## Quality", 1)[1].strip()
    quality = quality_markdown or previous_quality or "Not measured yet: run `python benchmarks/nano_quality.py`."
    lines = [
        "# MiMo-nano",
        "",
        "A tiny reasoning model of MiMo's exact architecture (Qwen2 decoder + one MTP layer), trained by mimo_lab",
        "so that every notebook and test runs on a CPU with nothing to download. It answers six kinds of problems",
        "(column addition, subtraction, multiplication, `ax + b = c`, letter counting, sorting) with a `<think>`",
        "trace, a check, and sometimes a slip followed by \"Wait, ...\"; it really fails beyond its training",
        "difficulty (levels 4-5).",
        "",
        "## How it was made",
        "",
        "```",
        f"mimo-lab nano train --out DIR{command_options}    # seed {settings['seed']}, {settings['steps']} steps",
        "```",
        "",
        f"- {params:,} parameters (MTP layer included): hidden {config['hidden_size']}, "
        f"{config['num_hidden_layers']} layers, {config['num_attention_heads']} heads / "
        f"{config['num_key_value_heads']} KV heads, intermediate {config['intermediate_size']}, vocabulary "
        f"{config['vocab_size']} (byte-level BPE, one token per digit), `max_position_embeddings` "
        f"{config['max_position_embeddings']}, RoPE theta {config['rope_parameters']['rope_theta']:g}.",
        f"- AdamW (lr {settings['lr']:g} → {settings['min_lr']:g}, cosine, {settings['warmup']} warm-up steps, "
        f"weight decay {settings['weight_decay']}), batch {settings['batch_size']}, loss on the completion only; "
        f"MTP t+2 loss weighted {settings['mtp_weight']} and trained jointly"
        + ("; matmuls and attention in bfloat16 under autocast (weights, optimizer state and loss in float32)."
           if settings.get("bf16") else "."),
        "- MTP convention at slot 0: " + ("token embedding zeroed, as vLLM and SGLang run MiMo"
                                          if config.get("mtp_zero_first_embedding", True) else
                                          "unmasked (slot 0 sees the embedding of token 1; vLLM and SGLang zero it)")
        + f" (`mtp_zero_first_embedding: {str(config.get('mtp_zero_first_embedding', True)).lower()}` in config.json,"
        " the default of every MTP call).",
        "- Data: fresh problems every step from `mimo_lab.nano.tasks` (levels 1-3), never the held-out tenth; "
        + (f"trace style {traces}: two strategies per family, an optional plan, three check phrasings, one slip "
           "site per trace (slips noticed with \"Wait, ...\" or not, false alarms) and traces cut short "
           "(`tasks.make_example_v2`)." if traces == "v2" else f"trace style {traces} (one strategy per family)."),
        f"- Final loss (mean of the last {len(last)} logged steps): next token {final_loss:.4f}, "
        f"MTP {final_mtp:.4f}; {log[-1]['seconds'] / 60:.1f} minutes of training "
        f"on {settings['threads']} CPU threads. Full log: `loss_log.jsonl`; settings: `train_settings.json`.",
        "",
        "## Quality",
        "",
        quality,
        "",
    ]
    card_path.write_text("\n".join(lines))
    return card_path
