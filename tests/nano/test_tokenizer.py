"""MiMo-nano's tokenizer: round trips, one digit per token, ChatML and think tokens, MiMo's chat format."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from mimo_lab.nano import tasks
from mimo_lab.nano.tokenizer import CHAT_TEMPLATE, build_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    examples = tasks.sample_examples(500, seed=1)
    tok = build_tokenizer([e.problem.prompt + e.completion for e in examples])
    folder = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)  # what load() sees: the standard files


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=80))
def test_round_trip_any_text(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == unicodedata.normalize("NFC", text)  # the normalizer is NFC, as Qwen2's


def test_round_trip_traces(tokenizer):
    for example in tasks.sample_examples(50, seed=3):
        ids = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == example.completion


def test_digits_are_single_tokens(tokenizer):
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("12345 + 9087", add_special_tokens=False)["input_ids"])
    digits = [p for p in pieces if any(ch.isdigit() for ch in p)]
    assert digits == list("123459087")


def test_special_and_think_tokens_are_single(tokenizer):
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"):
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids) == [token]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert len(tokenizer) == 512


def test_chat_template_formats_like_mimo(tokenizer):
    assert tokenizer.chat_template == CHAT_TEMPLATE
    messages = [{"role": "system", "content": ""}, {"role": "user", "content": "What is 2 + 2?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\n<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    history = messages + [{"role": "assistant", "content": "<think>\nEasy.\n</think>\n\n4"}]
    full = tokenizer.apply_chat_template(history, tokenize=False)
    assert full.endswith("<|im_start|>assistant\n<think>\nEasy.\n</think>\n\n4<|im_end|>\n")
    no_system = tokenizer.apply_chat_template([messages[1]], tokenize=False, add_generation_prompt=True)
    assert no_system.startswith("<|im_start|>user\n")


def test_a_spelled_letter_and_the_letter_looked_for_are_the_same_token(tokenizer):
    for letter in "abcdefghijklmnopqrstuvwxyz":
        assert tokenizer.convert_ids_to_tokens(tokenizer(f" {letter}", add_special_tokens=False)["input_ids"]) \
            == [f"Ġ{letter}"]
    text = "I spell 'quiz' and look for the letter z.\nLetters: q, u, i, z (1), end."
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert pieces.count("Ġz") == 2 and {"Ġq", "Ġu", "Ġi"} <= set(pieces)
