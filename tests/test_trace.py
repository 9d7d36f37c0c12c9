"""Trace: think/answer split, final answer, token table, forks, save/load, regeneration."""

from __future__ import annotations

import json

import pytest
import torch

import mimo_lab
from mimo_lab.trace import Trace

TEXT = ("<think>\nI add 17 and 28 column by column, from the right.\nOnes: 7 + 8 = 14. Wait, 7 + 8 = 15, not 14. "
        "So write 5, carry 1.\nTens: 1 + 2 + 1 = 4, write 4.\nSo 17 + 28 = 45.\nCheck: 45 - 28 = 17. Correct.\n"
        "</think>\n\n17 + 28 = \\boxed{45}.")


@pytest.fixture(scope="module")
def lab(mimo_checkpoint):
    return mimo_lab.load(mimo_checkpoint)


def test_think_answer_split_and_final_answer(lab, make_trace):
    trace = make_trace(lab.tokenizer, TEXT)
    assert trace.thinking.startswith("I add 17 and 28") and trace.thinking.endswith("Correct.")
    assert trace.answer == "17 + 28 = \\boxed{45}."
    assert trace.final_answer == "45"
    assert trace.closed_thinking


def test_truncated_inside_thinking(lab, make_trace):
    trace = make_trace(lab.tokenizer, "<think>\nI add 17 and 28. Ones: 7 + 8")
    assert trace.thinking == "I add 17 and 28. Ones: 7 + 8"
    assert trace.answer == "" and trace.final_answer is None and not trace.closed_thinking


def test_template_opened_think_and_no_think(lab, make_trace):
    opened = make_trace(lab.tokenizer, "reasoning here\n</think>\nThe answer is 7.")
    assert opened.thinking == "reasoning here" and opened.final_answer == "7"
    plain = make_trace(lab.tokenizer, "The answer is 12.")
    assert plain.thinking == "" and plain.answer == "The answer is 12." and plain.final_answer == "12"


def test_tokens_table_and_token_at(lab, make_trace):
    trace = make_trace(lab.tokenizer, TEXT)
    table = trace.tokens
    assert "".join(table["text"]) == trace.text
    assert table["in_thinking"].any() and not table["in_thinking"].iloc[-1]
    offset = trace.text.index("Wait")
    i = trace.token_at(offset)
    assert table["start"].loc[i] <= offset < table["end"].loc[i]
    with pytest.raises(ValueError, match="out of range"):
        trace.token_at(10**6)


def test_sentences_of_the_thinking_only(lab, make_trace):
    trace = make_trace(lab.tokenizer, TEXT)
    sentences = trace.sentences
    assert sentences[0].text.startswith("I add")
    assert all("boxed" not in s.text for s in sentences)
    assert "".join(s.text for s in sentences).strip() == trace.thinking
    assert sentences[2].label == "uncertainty_management"


def test_forking_tokens_are_the_top_fifth_by_entropy(lab, make_trace):
    n = len(lab.tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    entropies = [float(i % 10) / 10 for i in range(n)]
    trace = make_trace(lab.tokenizer, TEXT, entropies=entropies)
    forks = trace.forking_tokens()
    threshold = float(torch.quantile(torch.tensor(entropies), 0.8))
    assert set(forks.index) == {i for i, e in enumerate(entropies) if e >= threshold}
    assert forks["entropy"].is_monotonic_decreasing
    with pytest.raises(ValueError, match="quantile=1.5"):
        trace.forking_tokens(1.5)


def test_save_load_round_trip(lab, tmp_path):
    trace = lab.generate("What is 17 + 28?", seed=4, max_new_tokens=30)
    assert trace.mtp is not None
    trace.save(tmp_path / "t")
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["tensors.safetensors", "trace.json"]
    record = json.loads((tmp_path / "t" / "trace.json").read_text())
    assert record["model_name"] == lab.name and record["seed"] == 4
    assert record["sampling"]["temperature"] == 0.6 and record["sampling"]["top_p"] == 0.95
    again = Trace.load(tmp_path / "t")
    assert again.text == trace.text and again.final_answer == trace.final_answer
    for name in Trace._TENSORS:
        assert torch.equal(getattr(again, name), getattr(trace, name)), name
    assert again.mtp.keys() == trace.mtp.keys()
    assert again.tokens.equals(trace.tokens)
    regenerated = lab.regenerate(again)
    assert torch.equal(regenerated.token_ids, trace.token_ids)


def test_load_refuses_what_is_not_a_trace(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved Trace"):
        Trace.load(tmp_path)


def test_regenerate_needs_the_same_model(lab, make_trace):
    trace = make_trace(lab.tokenizer, TEXT)
    with pytest.raises(ValueError, match="came from 'test'"):
        lab.regenerate(trace)
