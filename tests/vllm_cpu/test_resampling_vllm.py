"""The resampling engine on vLLM (the registry's `vllm-cpu` here): the same call, the same result format,
rollouts reproduced from their seeds, prompt tokens served from vLLM's prefix cache.

Skipped where vLLM is not installed (`scripts/vllm_cpu_tests.sh` runs it)."""

from __future__ import annotations

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here: scripts/vllm_cpu_tests.sh runs these tests "
                                          "in an environment with vllm-cpu")

import mimo_lab  # noqa: E402
from mimo_lab import resampling as R  # noqa: E402
from mimo_lab.bench.vllm_backend import counter_delta, counters, engine, release_engines  # noqa: E402


@pytest.fixture(scope="module")
def lab():
    yield mimo_lab.load()
    release_engines()


def test_sentence_importance_on_vllm(lab, tmp_path):
    trace = lab.generate("What is 47 + 85?", seed=1)
    options = dict(samples=4, reference="132", sentences=[0, 1, 2], max_new_tokens=96, forced_tokens=24,
                   progress=False, temperature=1.3, top_p=0.95)
    llm = engine(lab, mtp_draft=False, prefix_caching=True, greedy=False)
    before = counters(llm)
    ours = lab.sentence_importance(trace, backend="vllm", out=tmp_path / "a", **options)
    used = counter_delta(before, counters(llm))
    again = lab.sentence_importance(trace, backend="vllm", **options)
    local = lab.sentence_importance(trace, **options)
    # the same format as the transformers backend
    assert list(ours.to_frame(intervals=0).columns) == list(local.to_frame(intervals=0).columns)
    assert set(ours.rollouts().columns) == set(local.rollouts().columns)
    assert ours.settings["backend"] == "vllm"
    # seeded per rollout: a second run gives the same rollouts
    for i in (0, 1, 2, 3):
        assert [r["text"] for r in again.resampled[i]] == [r["text"] for r in ours.resampled[i]]
        assert [r["text"] for r in again.forced[i]] == [r["text"] for r in ours.forced[i]]
    # every rollout graded; the rollouts of one prefix share its cached blocks
    assert all(isinstance(r["correct"], bool) for rows in ours.resampled.values() for r in rows)
    assert used["prefix_hits"] > 0.5 * used["prefix_queries"]
    loaded = R.SentenceImportance.load(tmp_path / "a")
    assert loaded.to_frame(intervals=0).equals(ours.to_frame(intervals=0))
