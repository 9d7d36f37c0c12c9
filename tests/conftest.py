"""Shared fixtures: the tiny hub-layout MiMo checkpoint, MiMo-nano, a guard on remote code."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import checkpoint_fixture  # noqa: E402


@pytest.fixture(scope="session")
def remote_code_marker(tmp_path_factory) -> Path:
    marker = tmp_path_factory.mktemp("marker") / "remote_code_ran"
    os.environ["MIMO_LAB_REMOTE_CODE_MARKER"] = str(marker)
    return marker


@pytest.fixture(scope="session")
def mimo_checkpoint(tmp_path_factory, remote_code_marker) -> Path:
    """A tiny MiMo in MiMo-7B-RL's exact hub layout (two shards, index, auto_map, remote-code files)."""
    return checkpoint_fixture.build(tmp_path_factory.mktemp("ckpt") / "MiMo-tiny")


@pytest.fixture(scope="session")
def nano():
    """MiMo-nano as shipped, loaded once for the session."""
    import mimo_lab

    return mimo_lab.load()


def trace_from_text(tokenizer, text: str, prompt: str = "What is 17 + 28?", entropies=None):
    """A Trace for a given text (analytics filled with simple, known values), for unit tests."""
    import torch

    from mimo_lab.generation import TokenDecoder
    from mimo_lab.trace import Trace

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    decoded, spans = TokenDecoder(tokenizer).decode_with_spans(ids)
    n = len(ids)
    entropies = torch.tensor(entropies if entropies is not None else [0.01 * (i % 7) for i in range(n)],
                             dtype=torch.float32)
    return Trace(prompt=prompt, text=decoded, token_ids=torch.tensor(ids), token_texts=[decoded[s:e] for s, e in spans],
                 spans=torch.tensor(spans).reshape(-1, 2), logprobs=-entropies, entropies=entropies,
                 model_entropies=entropies, top_ids=torch.tensor([[i, 0] for i in ids]).reshape(-1, 2),
                 top_logprobs=torch.stack([-entropies, -entropies - 3], dim=1),
                 top_texts=[[decoded[s:e], "x"] for s, e in spans], finish_reason="stop", prompt_text=prompt,
                 model_name="test", sampling={"temperature": 0.6}, seed=0)


@pytest.fixture(scope="session")
def make_trace():
    return trace_from_text
