"""Train the shipped Thought Anchors labeller and measure it honestly: cross-validation over problems.

    python benchmarks/ta_labeller.py            # CV figures -> results/ta_labeller.json; retrains the shipped weights

The 20 shipped Thought Anchors traces cover five MATH problems (two models x correct / incorrect each). Each
fold trains on the traces of four problems and labels the fifth problem's four traces, which it never saw;
the figures pool the five folds' predictions (2,338 chunks). Compared with `segment.RuleLabeller` and the
majority label. Then the labeller is trained on all 20 traces and written to mimo_lab/data/.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import torch

from mimo_lab import thought_anchors as ta
from mimo_lab.labellers import VOCABULARY, WEIGHTS, LabellerWeights, LearnedLabeller, cohen_kappa, fit
from mimo_lab.segment import LABELS, RuleLabeller

ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "thought_anchors"
OUT = Path(__file__).parent / "results" / "ta_labeller.json"


def load():
    traces = []
    for trace in ta.read_all(ROOT):
        frame = ta.chunks(trace)
        problem = trace.meta["thought_anchors"]["problem"]["problem"]
        group = trace.meta["thought_anchors"]["folder"].rsplit("problem_", 1)[1]
        traces.append((list(frame["chunk"]), list(frame["tag"]), problem, group))
    return traces


def scores(truth, predicted):
    recall = {}
    for label in LABELS:
        idx = [i for i, t in enumerate(truth) if t == label]
        recall[label] = round(sum(predicted[i] == label for i in idx) / len(idx), 3) if idx else None
    return {"accuracy": round(sum(a == b for a, b in zip(truth, predicted, strict=True)) / len(truth), 4),
            "kappa": round(cohen_kappa(truth, predicted), 4), "recall": recall}


def main() -> None:
    torch.set_num_threads(1)
    began = time.time()
    traces = load()
    problems = sorted({g for *_, g in traces})
    truth, whole, single, rule, folds = [], [], [], [], {}
    rules = RuleLabeller()
    for held in problems:
        train = [t for t in traces if t[3] != held]
        test = [t for t in traces if t[3] == held]
        model = fit([t[:3] for t in train], groups=[t[3] for t in train])
        labeller = LearnedLabeller(model)
        fold_truth, fold_whole = [], []
        for chunks, tags, problem, _ in test:
            truth += tags
            fold_truth += tags
            labels = labeller.label_chunks(chunks, problem)
            whole += labels
            fold_whole += labels
            single += [labeller(c, i, len(chunks)) for i, c in enumerate(chunks)]
            rule += [rules(c, i, len(chunks)) for i, c in enumerate(chunks)]
        folds[held] = {"chunks": len(fold_truth), **scores(fold_truth, fold_whole)}
        print(held, folds[held]["chunks"], "kappa", folds[held]["kappa"], flush=True)
    majority = Counter(tag for t in traces for tag in t[1]).most_common(1)[0][0]
    result = {
        "chunks": len(truth), "problems": problems,
        "learned_whole_trace": scores(truth, whole), "learned_one_chunk": scores(truth, single),
        "rule_labeller": scores(truth, rule), "majority": {**scores(truth, [majority] * len(truth)), "label": majority},
        "folds_whole_trace": folds,
    }
    final = fit([t[:3] for t in traces], groups=[t[3] for t in traces])
    final.settings["cross_validation"] = {  # what the shipped labeller's card says of itself
        name: {k: result[name][k] for k in ("accuracy", "kappa")}
        for name in ("learned_whole_trace", "learned_one_chunk", "rule_labeller", "majority")}
    final.save(WEIGHTS, VOCABULARY)
    shipped = LabellerWeights.load()
    result["shipped"] = {"features": len(shipped.vocabulary), "weights_bytes": WEIGHTS.stat().st_size,
                         "vocabulary_bytes": VOCABULARY.stat().st_size, "settings": shipped.settings}
    result["seconds"] = round(time.time() - began, 1)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))
    for name in ("learned_whole_trace", "learned_one_chunk", "rule_labeller", "majority"):
        print(f"{name:22s} accuracy {result[name]['accuracy']:.3f} kappa {result[name]['kappa']:.3f}")
    print(json.dumps(result["learned_whole_trace"]["recall"]))


if __name__ == "__main__":
    main()
