"""Comparing two samples of one prompt: the first differing token and the aligned steps."""

from __future__ import annotations

import pytest

from mimo_lab.compare import divergence

A = ("<think>\nI add 17 and 28 column by column, from the right.\nOnes: 7 + 8 = 15, write 5, carry 1.\n"
     "Tens: 1 + 2 + 1 = 4, write 4.\nSo 17 + 28 = 45.\n</think>\n\n\\boxed{45}")
B = ("<think>\nI add 17 and 28 column by column, from the right.\nOnes: 7 + 8 = 14. Wait, 7 + 8 = 15, not 14. "
     "So write 5, carry 1.\nTens: 1 + 2 + 1 = 4, write 4.\nSo 17 + 28 = 45.\n</think>\n\n\\boxed{45}")


def test_first_difference_and_entropy_there(make_trace, mimo_checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(mimo_checkpoint)
    a, b = make_trace(tok, A), make_trace(tok, B)
    fork = divergence(a, b)
    ids_a, ids_b = a.token_ids.tolist(), b.token_ids.tolist()
    expected = next(i for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=False)) if x != y)
    assert fork.position == expected
    assert fork.prefix == A[: A.index("15, write")] or A.startswith(fork.prefix)
    assert B.startswith(fork.prefix) and not fork.identical
    table = fork.fork
    assert table.loc["a", "entropy"] == pytest.approx(float(a.entropies[expected]))
    steps = fork.steps()
    assert steps["same"].tolist() == [True, False, True, True]
    assert "Wait" in steps["b"].iloc[1] and "Wait" not in steps["a"].iloc[1]
    fig = fork.plot()
    assert fig.data[0].type == "table" and len(fig.data[0].cells.values[0]) == 4
    assert "Fork at position" in fork._repr_html_()


def test_identical_and_different_prompts(make_trace, mimo_checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(mimo_checkpoint)
    a = make_trace(tok, A)
    assert divergence(a, make_trace(tok, A)).identical
    other = make_trace(tok, A, prompt="What is 1 + 1?")
    with pytest.raises(ValueError, match="different prompts"):
        divergence(a, other)


def test_divergence_saves_and_loads(nano, tmp_path):
    """Issue 15 C14: a Divergence holds two Traces, so it saves (it raised nnsight's 'outside a trace')."""
    from mimo_lab.compare import Divergence

    a = nano.generate("What is 17 + 28?", seed=1, max_new_tokens=20, mtp=False, temperature=1.0)
    b = nano.generate("What is 17 + 28?", seed=2, max_new_tokens=20, mtp=False, temperature=1.0)
    fork = a.divergence(b)
    again = Divergence.load(fork.save(tmp_path / "fork"))
    assert again.position == fork.position and again.prefix == fork.prefix
    assert again.a.token_ids.tolist() == a.token_ids.tolist() and again.b.token_ids.tolist() == b.token_ids.tolist()
    with pytest.raises(FileNotFoundError, match="not a saved Divergence"):
        Divergence.load(tmp_path / "nothing")
