"""The shipped MiMo-nano: loads offline and fast, is small, reasons, and answers the required forms."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from mimo_lab.nano import CHECKPOINT

REQUIRED = [
    ("What is 128 + 367?", "495"),
    ("What is 905 - 47?", "858"),
    ("What is 23 * 41?", "943"),
    ("Solve for x: 3x + 7 = 25", "6"),
    ("How many times does the letter 'r' appear in 'strawberry'?", "3"),
    ("Sort these numbers: 5, 12, 3", "3, 5, 12"),
]


def test_shipped_files_are_small_and_standard():
    names = {p.name for p in CHECKPOINT.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "README.md", "loss_log.jsonl", "train_settings.json"} <= names
    assert sum(p.stat().st_size for p in CHECKPOINT.iterdir()) <= 20 * 2**20


def test_nano_is_a_small_mimo_with_a_trained_mtp_layer(nano):
    params = sum(p.numel() for p in nano.model.parameters())
    assert params <= 5_000_000
    assert type(nano.model).__name__ == "MiMoForCausalLM" and len(nano.model.model.mtp_layers) == 1
    assert nano.model.config.max_position_embeddings == 32768
    assert nano.name == "MiMo-nano" and nano.card.has_mtp


@pytest.mark.parametrize("prompt, answer", REQUIRED)
def test_answers_the_required_forms(nano, prompt, answer):
    trace = nano.generate(prompt, greedy=True)
    assert trace.final_answer == answer, trace.text
    assert trace.thinking and "Check" in trace.thinking and trace.finish_reason == "stop"


def test_batched_greedy_equals_one_by_one_on_real_traces(nano):
    prompts = [p for p, _ in REQUIRED]
    batch = nano.generate(prompts, greedy=True, mtp=False)
    for prompt, trace in zip(prompts, batch, strict=True):
        assert trace.text == nano.generate(prompt, greedy=True, mtp=False).text


def test_mtp_head_predicts_two_ahead(nano):
    traces = nano.generate([p for p, _ in REQUIRED], greedy=True)
    accuracy = sum(t.mtp_accuracy() for t in traces) / len(traces)
    assert accuracy >= 0.7


def test_loads_offline_quickly():
    code = ("import time, mimo_lab; t = time.perf_counter(); lab = mimo_lab.load(); "
            "print(time.perf_counter() - t); print(lab.generate('What is 128 + 367?').final_answer)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    load_seconds, answer = out.stdout.split()[-2:]
    assert float(load_seconds) <= 2.0
    assert answer == "495"
    assert time.perf_counter() - started < 120
