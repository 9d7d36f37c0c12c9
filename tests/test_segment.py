"""Segmentation: spans join back exactly, markers, rule labels, a replaceable labeller."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimo_lab.segment import LABELS, RuleLabeller, segment, split_sentences, split_steps

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
