"""The learned Thought Anchors labeller (held-out check on one problem), Cohen's kappa, the LLM judge's prompt
and parsing (on MiMo-nano)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mimo_lab import thought_anchors as ta
from mimo_lab.labellers import (
    DEFINITIONS,
    VOCABULARY,
    WEIGHTS,
    LearnedLabeller,
    LLMJudgeLabeller,
    cohen_kappa,
    fit,
    judge_prompt,
    parse_tag,
)
from mimo_lab.segment import LABELS, RuleLabeller

ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "thought_anchors"
needs_data = pytest.mark.skipif(not ROOT.is_dir(), reason=f"the shipped Thought Anchors data is not at {ROOT}")


def _traces():
    out = []
    for trace in ta.read_all(ROOT):
        frame = ta.chunks(trace)
        info = trace.meta["thought_anchors"]
        out.append((list(frame["chunk"]), list(frame["tag"]), info["problem"]["problem"],
                    info["folder"].rsplit("problem_", 1)[1]))
    return out


def test_cohen_kappa_by_hand():
    # 10 items: agreement 7/10; shares a: x 5, y 5; b: x 6, y 4 -> p_e = (5*6 + 5*4) / 100 = 0.5 -> kappa 0.4
    a = list("xxxxxyyyyy")
    b = list("xxxxyxxyyy")
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == 1.0
    with pytest.raises(ValueError, match="two equal"):
        cohen_kappa(a, b[:3])


@needs_data
def test_on_a_problem_it_never_saw_it_beats_the_rules():
    traces = _traces()
    held = "2189"
    train = [t for t in traces if t[3] != held]
    test = [t for t in traces if t[3] == held]
    labeller = LearnedLabeller(fit([t[:3] for t in train], groups=[t[3] for t in train]))
    assert not any(c in labeller.model.vocabulary for c in ("w:plates", "w:green"))  # that problem's words unseen
    truth, learned, rules = [], [], []
    for chunks, tags, problem, _ in test:
        truth += tags
        learned += labeller.label_chunks(chunks, problem)
        rules += [RuleLabeller()(c, i, len(chunks)) for i, c in enumerate(chunks)]
    k_learned, k_rules = cohen_kappa(truth, learned), cohen_kappa(truth, rules)
    assert len(truth) == 402 and k_learned > k_rules + 0.1 and k_learned > 0.4, (k_learned, k_rules)


@needs_data
def test_the_shipped_labeller_loads_offline_and_labels_whole_traces():
    assert WEIGHTS.suffix == ".safetensors" and VOCABULARY.suffix == ".json"
    assert WEIGHTS.stat().st_size + VOCABULARY.stat().st_size < 500_000
    labeller = LearnedLabeller()
    meta = json.loads(VOCABULARY.read_text())
    assert meta["settings"]["chunks"] == 2338 and len(meta["vocabulary"]) == len(labeller.model.vocabulary)
    trace = ta.read(ROOT / "deepseek-r1-distill-qwen-14b__correct_base_solution__problem_330")
    labels = labeller.label_trace(trace)
    assert len(labels) == len(ta.chunks(trace)) and set(labels) <= set(LABELS)
    # on the data it was trained on it agrees well (a check that these weights are the trained ones)
    assert cohen_kappa(list(ta.chunks(trace)["tag"]), labels) > 0.6
    # in the labeller protocol (one chunk, no context), and as a labeller for trace.segments
    one = trace.segments("thought_anchors", labeller=labeller).labels
    whole = trace.segments("thought_anchors", labeller=labeller.for_trace(trace)).labels
    assert whole == labels and len(one) == len(labels) and set(one) <= set(LABELS)


def test_fit_refuses_bad_labels():
    with pytest.raises(ValueError, match="not Thought Anchors tags"):
        fit([(["Okay."], ["thinking"], "")])
    with pytest.raises(ValueError, match="one label per chunk"):
        fit([(["Okay.", "So."], ["problem_setup"], "")])


def test_parse_tag():
    assert parse_tag("active_computation") == "active_computation"
    assert parse_tag("<think>maybe self checking</think>\nThe tag is Self-Checking.") == "self_checking"
    assert parse_tag("It is Final Answer Emission, not plan generation") == "final_answer_emission"
    assert parse_tag("no idea") is None


def test_judge_prompt_and_nano_as_a_judge(nano):
    chunks = ["Okay, so I need to add 17 and 28.", "First, 7 + 8 = 15.", "Wait, let me check that again."]
    messages = judge_prompt(chunks[2], 2, chunks, problem="What is 17 + 28?", context=1)
    assert messages[0]["role"] == "system" and all(text in messages[0]["content"] for text in DEFINITIONS.values())
    user = messages[1]["content"]
    assert "Problem: What is 17 + 28?" in user and "[1] First, 7 + 8 = 15." in user and "[0]" not in user
    assert user.endswith("Sentence [2] to label:\nWait, let me check that again.\n\nWhich tag?")
    judge = LLMJudgeLabeller(nano, max_new_tokens=24)
    labels = judge.label_chunks(chunks, "What is 17 + 28?")
    assert len(labels) == 3 and set(labels) <= set(LABELS) and len(judge.replies) == 3
    for reply, label, chunk in zip(judge.replies, labels, chunks, strict=True):
        # nano answers arithmetic, not tags: a reply naming no tag falls back to the rule labeller
        assert reply["parsed"] == (parse_tag(reply["reply"]) is not None)
        if not reply["parsed"]:
            assert label == RuleLabeller()(chunk, reply["index"], 3)
