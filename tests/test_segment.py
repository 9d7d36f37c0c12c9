"""Segmentation: spans join back exactly, markers, rule labels, a replaceable labeller."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimo_lab.segment import LABELS, RuleLabeller, segment, split_sentences, split_steps, thought_anchors_spans

NANO_THINKING = (
    "I add 17 and 28 column by column, from the right.\n"
    "Ones: 7 + 8 = 14. Wait, 7 + 8 = 15, not 14. So write 5, carry 1.\n"
    "Tens: 1 + 2 + 1 = 4, write 4.\n"
    "So 17 + 28 = 45.\n"
    "Check: 45 - 28 = 17. Correct."
)

R1_STYLE = ("Okay, so I need to find x. Let me recall the formula for a line. Hmm, maybe I should first "
            "subtract 7 from both sides: 3x = 18. Actually, that is right. Let me verify: 3 * 6 + 7 = 25. "
            "Therefore x = 6. The final answer is \\boxed{6}.")


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab .!?\n\t3,=+Wait")), max_size=200))
def test_sentences_and_steps_join_back_exactly(text):
    for pieces in (split_sentences(text), split_steps(text)):
        assert "".join(p.text for p in pieces) == text
        assert all(text[p.start:p.end] == p.text for p in pieces)
        assert all(a.end == b.start for a, b in zip(pieces, pieces[1:], strict=False))


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=300))
def test_join_back_for_any_unicode(text):
    assert "".join(p.text for p in split_sentences(text)) == text


def test_nano_trace_sentences_labels_and_markers():
    sentences = segment(NANO_THINKING)
    assert [s.stripped for s in sentences][:4] == [
        "I add 17 and 28 column by column, from the right.", "Ones: 7 + 8 = 14.", "Wait, 7 + 8 = 15, not 14.",
        "So write 5, carry 1."]
    assert sentences.labels == ["plan_generation", "active_computation", "uncertainty_management",
                                "result_consolidation", "active_computation", "result_consolidation",
                                "self_checking", "self_checking"]
    assert sentences[2].markers == ("backtracking",)
    assert "verification" in sentences[6].markers
    assert "conclusion" in sentences[5].markers
    steps = segment(NANO_THINKING, kind="step")
    assert len(steps) == 5 and steps[1].label == "uncertainty_management"


def test_r1_style_labels():
    labels = segment(R1_STYLE).labels
    assert labels == ["problem_setup", "fact_retrieval", "uncertainty_management", "uncertainty_management",
                      "self_checking", "result_consolidation", "final_answer_emission"]


def test_decimal_points_do_not_end_sentences():
    assert [s.stripped for s in split_sentences("The mean is 3.5 here. Next one.")] == [
        "The mean is 3.5 here.", "Next one."]


def test_offsets_into_a_larger_text():
    full = "<think>\n" + NANO_THINKING + "\n</think>"
    segments = segment(NANO_THINKING, offset=8, full_text=full)
    assert all(full[s.start:s.end] == s.text for s in segments)
    assert segments.at(8) == 0 and segments.at(0) == -1


def test_custom_labeller_and_explain():
    def mine(text, index, count):
        return "self_checking" if "Check" in text else "active_computation"

    segments = segment(NANO_THINKING, labeller=mine)
    assert set(segments.labels) == {"self_checking", "active_computation"}
    label, why = RuleLabeller().explain("Wait, 7 + 8 = 15.")
    assert label == "uncertainty_management" and "backtracking" in why
    rules = RuleLabeller().to_frame()
    assert set(rules["label"]) == set(LABELS)
    with pytest.raises(ValueError, match="kind='paragraph'"):
        segment("x", kind="paragraph")


# ----------------------------------------------------------------------------- Thought Anchors' chunks

THOUGHT_ANCHORS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "thought_anchors"


@pytest.mark.skipif(not THOUGHT_ANCHORS.is_dir(), reason="../shared/data not here")
def test_thought_anchors_style_reproduces_their_chunks_on_every_shipped_trace():
    folders = sorted(THOUGHT_ANCHORS.iterdir())
    assert len(folders) == 20
    total = 0
    for folder in folders:
        solution = json.loads((folder / "base_solution.json").read_text())["solution"]
        theirs = [c["chunk"] for c in json.loads((folder / "chunks_labeled.json").read_text())]
        spans = thought_anchors_spans(solution)
        assert [chunk for _, _, chunk in spans] == theirs, folder.name  # their texts, exactly
        ours = split_sentences(solution, style="thought_anchors")
        assert len(ours) == len(theirs)
        for seg, chunk in zip(ours, theirs, strict=True):  # each mapped to its span of the text
            assert seg.text == solution[seg.start:seg.end]
            assert " ".join(seg.text.split()) == " ".join(chunk.split()), (folder.name, seg.index)
        total += len(theirs)
    assert total == 2338  # the 20 shipped traces' chunks


def test_thought_anchors_style_by_hand():
    text = ("<think>\nFirst, 3.5 + 1 = 4.5 and\na single newline goes on. Ok.\n\nNew paragraph here\n\n"
            "So yes! Done\n</think>\n\nThe answer is 4.5.")
    spans = thought_anchors_spans(text)
    chunks = [c for _, _, c in spans]
    assert chunks[0] == "First, 3.5 + 1 = 4.5 and\na single newline goes on."  # no end at "3.5" or "\n"
    assert chunks[1] == "Ok. New paragraph here"  # "Ok." is under 10 characters: joined to the next, one space
    assert chunks[2] == "So yes! Done"  # "Done" is the last and short: joined to the one before
    assert len(chunks) == 3
    a, b, _ = spans[1]
    assert text[a:b] == "Ok.\n\nNew paragraph here"  # the span covers what lay between the pieces
    assert "answer" not in " ".join(chunks)  # only the thinking
    with pytest.raises(ValueError, match="style='sentences' is not accepted"):
        split_sentences(text, style="sentences")
    assert [(s.start, s.end) for s in segment(text, kind="thought_anchors")] == [(a, b) for a, b, _ in spans]
