"""Shared by the benchmark scripts: long reasoning-like inputs, and timing by the median of repeats."""

from __future__ import annotations

import statistics
import time

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


def median_time(fn, repeats: int) -> float:
    """Median wall time of `fn` over `repeats` runs, after one warm-up run."""
    return paired_times({"fn": fn}, repeats)["fn"]


def paired_times(fns: dict, repeats: int) -> dict[str, float]:
    """Median time of each function, run in turn within every repeat (so drift hits all alike)."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in samples.items()}
