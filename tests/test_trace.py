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


# ---------------------------------------------------------------------------- positions (issue 15, C12)


def _full_ids(trace):
    return torch.cat([trace.prompt_ids, trace.token_ids])


def test_a_fork_position_goes_unchanged_into_tokens_capture_and_resample(lab):
    trace = lab.generate("What is 17 + 28?", seed=3, max_new_tokens=24, mtp=False)
    first = trace.prompt_length
    assert first > 0 and list(trace.tokens.index) == list(range(first, first + len(trace)))
    forks = trace.forking_tokens()
    assert len(forks) and all(first <= p < first + len(trace) for p in forks.index)
    position = int(forks.index[0])
    token_id = int(trace.tokens.loc[position, "id"])
    assert token_id == int(_full_ids(trace)[position])  # the model read this token at this position
    assert forks.loc[position, "entropy"] == pytest.approx(float(trace.entropies[position - first]))

    # capture's row `position` is that token: its text, and the hidden state a plain forward hook sees there
    acts = lab.capture(trace, sites="resid", layers=[0])
    assert acts.token_texts[position] == trace.tokens.loc[position, "text"]
    seen = {}
    handle = lab.model.model.layers[0].register_forward_hook(lambda _m, _a, out: seen.setdefault("h", out))
    with torch.no_grad():
        lab.model(_full_ids(trace)[None])
    handle.remove()
    hidden = seen["h"][0] if isinstance(seen["h"], tuple) else seen["h"]
    torch.testing.assert_close(acts.get("resid", 0)[position], hidden[0, position].float(), atol=1e-5, rtol=1e-5)

    # resample from that position: every token before it kept, the token at it sampled again
    again = lab.resample(trace, position, seed=11, max_new_tokens=8)
    assert again.prompt_length == first and again.meta["resampled_from"]["position"] == position
    assert torch.equal(_full_ids(again)[:position], _full_ids(trace)[:position])
    assert int(again.tokens.index[0]) == first and position in again.tokens.index
    kept = position - first
    assert again.token_ids[:kept].tolist() == trace.token_ids[:kept].tolist()
    # the token at `position` is drawn again from the same context: the same model distribution there
    assert torch.equal(again.top_ids[kept], trace.top_ids[kept])
    assert float(again.model_entropies[kept]) == pytest.approx(float(trace.model_entropies[kept]), abs=1e-4)
    assert len(again) == kept + 8 or again.finish_reason == "stop"


def test_resample_refuses_a_position_in_the_prompt_or_past_the_end(lab):
    trace = lab.generate("What is 17 + 28?", seed=3, max_new_tokens=6, mtp=False)
    first, end = trace.prompt_length, trace.prompt_length + len(trace)
    with pytest.raises(ValueError, match=f"position={first - 1} is inside the prompt"):
        lab.resample(trace, first - 1)
    with pytest.raises(ValueError, match=f"position={end + 1} is past the end"):
        lab.resample(trace, end + 1)
    assert len(lab.resample(trace, end, seed=0, max_new_tokens=3)) >= len(trace)  # the end: continue it


def test_token_at_and_divergence_report_positions(lab):
    a = lab.generate("What is 17 + 28?", seed=1, max_new_tokens=20, mtp=False)
    b = lab.generate("What is 17 + 28?", seed=2, max_new_tokens=20, mtp=False)
    first = a.prompt_length
    offset = len(a.token_texts[0]) + len(a.token_texts[1])  # the start of the third token
    assert a.token_at(offset) == first + 2
    assert a.tokens.loc[a.token_at(offset), "start"] == offset
    fork = a.divergence(b)  # the method; mimo_lab.compare.divergence is the function behind it
    assert fork.position == first + fork.index and fork.position >= first
    assert a.tokens.loc[fork.position, "id"] != b.tokens.loc[fork.position, "id"]
    assert _full_ids(a)[: fork.position].tolist() == _full_ids(b)[: fork.position].tolist()
    again = lab.resample(a, fork.position, seed=5, max_new_tokens=4)  # straight into resample
    assert again.token_ids[: fork.index].tolist() == a.token_ids[: fork.index].tolist()
    assert f"position {fork.position}" in repr(fork)


# ---------------------------------------------------------------------------- Trace.load (issue 15, C14 / D19)


def _saved(lab, tmp_path, name="t"):
    trace = lab.generate("What is 17 + 28?", seed=4, max_new_tokens=8, mtp=False)
    return trace, trace.save(tmp_path / name)


def _edit(folder, change):
    record = json.loads((folder / "trace.json").read_text())
    change(record)
    (folder / "trace.json").write_text(json.dumps(record))


def test_load_refuses_a_newer_format_naming_file_and_versions(lab, tmp_path):
    from mimo_lab.trace import FORMAT_VERSION

    _, folder = _saved(lab, tmp_path)
    _edit(folder, lambda r: r.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match=f"trace.json has trace format {FORMAT_VERSION + 1}, newer than the "
                                         f"{FORMAT_VERSION}") as err:
        Trace.load(folder)
    assert str(folder) in str(err.value)


def test_load_ignores_unknown_fields_of_the_same_version(lab, tmp_path):
    trace, folder = _saved(lab, tmp_path)
    _edit(folder, lambda r: r.update(added_by_a_later_version={"x": 1}))
    assert Trace.load(folder).text == trace.text


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("text"), "field 'text' is missing"),
    (lambda r: r.update(text=5), "field 'text' is corrupt"),
    (lambda r: r.update(seed="four"), "field 'seed' is corrupt"),
    (lambda r: r.update(token_texts=["x"]), "field 'token_texts' is corrupt: 1 entries"),
    (lambda r: r.pop("format_version"), "field 'format_version' is missing or corrupt"),
])
def test_load_names_the_file_and_the_missing_or_corrupt_field(lab, tmp_path, change, message):
    _, folder = _saved(lab, tmp_path)
    _edit(folder, change)
    with pytest.raises(ValueError, match=message) as err:
        Trace.load(folder)
    assert str(folder / "trace.json") in str(err.value)


def test_load_names_a_corrupt_file(lab, tmp_path):
    _, folder = _saved(lab, tmp_path, "json")
    (folder / "trace.json").write_text("{not json")
    with pytest.raises(ValueError, match="trace.json is corrupt: it is not JSON"):
        Trace.load(folder)
    _, folder = _saved(lab, tmp_path, "tensors")
    (folder / "tensors.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(ValueError, match="tensors.safetensors is corrupt"):
        Trace.load(folder)
