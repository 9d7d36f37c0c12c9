"""Long reasoning-like inputs for the benchmarks: MiMo-nano target traces joined to n tokens."""

from __future__ import annotations

import torch

from mimo_lab.nano import tasks


def long_text(tokenizer, tokens: int, seed: int = 0) -> tuple[str, torch.Tensor]:
    """(text, ids [1, tokens]) made of task traces, cut to exactly `tokens` tokens."""
    pieces, ids = [], []
    batch = 0
    while len(ids) < tokens:
        for example in tasks.sample_examples(64, seed=seed + batch):
            piece = example.completion + "\n"
            pieces.append(piece)
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
        batch += 1
    ids = ids[:tokens]
    return tokenizer.decode(ids), torch.tensor(ids)[None]
