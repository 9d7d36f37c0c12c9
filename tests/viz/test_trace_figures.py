"""Trace figures: values in the figure are the trace's values; nothing is shown."""

from __future__ import annotations

import re
from html import unescape

import plotly.graph_objects as go
import pytest

from mimo_lab.viz import TokenView, entropy_figure, label_strip, token_figure, token_html

TEXT = ("<think>\nI add 17 and 28 column by column, from the right.\nOnes: 7 + 8 = 14. Wait, 7 + 8 = 15, not 14. "
        "So write 5, carry 1.\nTens: 1 + 2 + 1 = 4, write 4.\nSo 17 + 28 = 45.\nCheck: 45 - 28 = 17. Correct.\n"
        "</think>\n\n\\boxed{45}")


@pytest.fixture(scope="module")
def trace(mimo_checkpoint, make_trace):
    from transformers import AutoTokenizer

    return make_trace(AutoTokenizer.from_pretrained(mimo_checkpoint), TEXT)


def test_entropy_figure(trace):
    fig = entropy_figure(trace)
    assert isinstance(fig, go.Figure)
    by_name = {d.name: d for d in fig.data}
    assert list(by_name["entropy"].y) == pytest.approx(trace.entropies.tolist())
    assert list(by_name["log-prob"].y) == pytest.approx(trace.logprobs.tolist())
    assert "backtracking" in by_name and "verification" in by_name
    wait_token = trace.token_at(trace.text.index("Wait"))
    assert wait_token in list(by_name["backtracking"].x)
    boundaries = [x for x in by_name["sentence boundaries"].x if x is not None]
    assert len(set(boundaries)) == len(trace.sentences) - 1
    assert trace.plot().to_dict() == fig.to_dict()


def test_token_views(trace):
    html = token_html(trace)
    assert html.count('class="mimo-token"') == len(trace)
    assert "alternatives" in html
    body = re.findall(r'<span class="mimo-token"[^>]*>(.*?)</span>', html, flags=re.S)
    assert "".join(unescape(b) for b in body).replace("↵<br>", "\n") == trace.text
    assert trace._repr_html_() == html
    fig = token_figure(trace, color_by="logprob")
    shown = [t for row in fig.data[0].text for t in row if t]
    assert "".join(shown).replace("↵", "\n") == trace.text
    with pytest.raises(ValueError, match="color_by 'colour'"):
        TokenView(trace, "colour")
    with pytest.raises(ValueError, match="needs a trace with MTP"):
        TokenView(trace, "mtp_target_prob")


def test_label_strip(trace):
    fig = label_strip(trace.sentences)
    names = {d.name for d in fig.data}
    assert {"uncertainty_management", "self_checking", "active_computation"} <= names
    total = sum(sum(d.x) for d in fig.data)
    assert total == sum(s.end - s.start for s in trace.sentences)


def test_figures_and_views_use_positions(mimo_checkpoint):
    import mimo_lab

    lab = mimo_lab.load(mimo_checkpoint)
    trace = lab.generate("What is 17 + 28?", seed=2, max_new_tokens=20, mtp=False)
    assert trace.prompt_length > 0
    by_name = {d.name: d for d in entropy_figure(trace).data}
    assert list(by_name["entropy"].x) == list(trace.tokens.index)  # x axis: positions, prompt counted
    forks = [d for name, d in by_name.items() if name.startswith("forks")][0]
    assert sorted(forks.x) == sorted(trace.forking_tokens().index)
    shown = [int(p) for p in re.findall(r'data-position="(\d+)"', token_html(trace))]
    assert shown == list(trace.positions)
