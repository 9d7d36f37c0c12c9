"""MiMo-nano's quality on held-out problems (never drawn in training), greedy decoding or sampled.

Greedy (the default): exact-answer accuracy by task family x difficulty level (1-3 = training
difficulty, 4-5 beyond it), the MTP head's top-1 accuracy on token t+2 over the generated traces,
and the share of traces that backtrack ("Wait"). Writes benchmarks/results/nano_quality.json.

--sampled: issue 16's point 2, at the card's recommended sampling (T 0.6, top-p 0.95), with
`--samples` (16) samples of every problem at levels 1-4: distinct traces per problem, strategy
shares per family (read off the strategy sentence), the entropy at the designed choice points
(`tasks.choice_points`) and whether `forking_tokens()` ranks them in its top 20%, the "Wait"
share and how many of those end correct, sampled pass@1 and maj@k, and the share of edge
problems (levels 3 and 4 pooled) whose sampled accuracy is in [20%, 80%]. Writes
benchmarks/results/nano_quality_sampled.json.

    python benchmarks/nano_quality.py [--model PATH] [--per-cell 40]
    python benchmarks/nano_quality.py --sampled [--per-cell 20] [--samples 16]

Both print Markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import mimo_lab
from mimo_lab.bench.metrics import bootstrap_interval, per_problem
from mimo_lab.nano import tasks

SAMPLED_LEVELS = (1, 2, 3, 4)  # the training levels and the first beyond them (the edge: 3 and 4)
EDGE_LEVELS = (3, 4)
BAND = (0.2, 0.8)  # per-problem sampled accuracy where resampling is informative (Thought Anchors)


def evaluate(lab, per_cell: int, seed: int = 1234, batch_size: int = 48) -> dict:
    problems = tasks.eval_problems(per_cell, seed=seed)
    started = time.time()
    traces = lab.generate([p.prompt for p in problems], greedy=True, seed=0, batch_size=batch_size)
    cells: dict[str, dict[str, float]] = {}
    hits = known = 0
    for family in tasks.FAMILIES:
        cells[family] = {}
        for level in tasks.ALL_LEVELS:
            pairs = [(p, t) for p, t in zip(problems, traces, strict=True) if p.family == family and p.level == level]
            cells[family][str(level)] = sum(t.final_answer == p.answer for p, t in pairs) / len(pairs)
    for trace in traces:
        if trace.mtp is not None:
            mask = trace.mtp["hit"] >= 0
            hits += int(trace.mtp["hit"][mask].sum())
            known += int(mask.sum())
    train_traces = [t for p, t in zip(problems, traces, strict=True) if p.level in tasks.TRAIN_LEVELS]
    return {
        "per_cell": per_cell,
        "accuracy": cells,
        "mtp_top1_t_plus_2": hits / known if known else None,
        "wait_share_all": sum("Wait," in t.thinking for t in traces) / len(traces),
        "wait_share_training_levels": sum("Wait," in t.thinking for t in train_traces) / len(train_traces),
        "truncated_share": sum(t.finish_reason == "length" for t in traces) / len(traces),
        "seconds": round(time.time() - started, 1),
        "examples_wrong": [{"prompt": p.prompt, "expected": p.answer, "got": t.final_answer}
                           for p, t in zip(problems, traces, strict=True) if t.final_answer != p.answer][:30],
    }


def markdown(result: dict) -> str:
    levels = [str(level) for level in tasks.ALL_LEVELS]
    lines = ["| task | " + " | ".join(f"level {lv}{' (train)' if int(lv) <= 3 else ''}" for lv in levels) + " |",
             "|---|" + "---|" * len(levels)]
    for family, row in result["accuracy"].items():
        lines.append(f"| {family} | " + " | ".join(f"{row[lv]:.0%}" for lv in levels) + " |")
    lines.append("")
    lines.append(f"MTP top-1 accuracy on token t+2 over the generated traces: {result['mtp_top1_t_plus_2']:.1%}; "
                 f"traces with a 'Wait' backtrack: {result['wait_share_all']:.1%} "
                 f"({result['wait_share_training_levels']:.1%} at training levels); "
                 f"{result['per_cell']} held-out problems per cell, greedy.")
    return "\n".join(lines)


def _interval(values) -> list[float]:
    return [round(v, 4) for v in bootstrap_interval(np.asarray(values, dtype=float))]


def choice_point_entropies(trace) -> list[dict]:
    """For each designed choice point found in a sampled trace's text (`tasks.choice_points`): its
    kind, position, the sampling entropy there (nats), whether `forking_tokens()` (top 20%) has it,
    and whether its entropy is above that of at least 80% of the trace's tokens ("top20": unlike
    `forking_tokens()`, which keeps ties with its threshold, a near-deterministic trace's zeros are not in it)."""
    forks = set(trace.forking_tokens().index)
    entropies = trace.entropies.float()
    rows = []
    for kind, offset in tasks.choice_points(trace.text):
        if offset >= len(trace.text):
            continue
        position = trace.token_at(offset)
        entropy = float(entropies[trace.index_of(position)])
        rows.append({"kind": kind, "position": position, "entropy": entropy, "forking": position in forks,
                     "top20": float((entropies < entropy).float().mean()) >= 0.8})
    return rows


def evaluate_sampled(lab, per_cell: int, samples: int = 16, seed: int = 1234, batch_size: int = 48) -> dict:
    """Issue 16's point 2 at the card's recommended sampling: see the module docstring."""
    problems = tasks.eval_problems(per_cell, seed=seed, levels=SAMPLED_LEVELS)
    started = time.time()
    prompts = [p.prompt for p in problems for _ in range(samples)]
    traces = lab.generate(prompts, seed=seed, preset="recommended", mtp=False, batch_size=batch_size)
    records, points = [], []
    for index, trace in enumerate(traces):
        problem = problems[index // samples]
        correct = trace.final_answer == problem.answer
        records.append({"problem_id": f"{problem.uid}:{index // samples}", "family": problem.family,
                        "level": problem.level, "correct": correct, "extracted_answer": trace.final_answer,
                        "text": trace.text, "strategy": tasks.strategy_of(trace.text) or "other",
                        "wait": "Wait," in trace.thinking, "length": trace.finish_reason == "length"})
        if problem.level in tasks.TRAIN_LEVELS:
            points += [{**row, "family": problem.family} for row in choice_point_entropies(trace)]
    frame = pd.DataFrame(records)
    train = frame[frame["level"].isin(tasks.TRAIN_LEVELS)]
    distinct = train.groupby("problem_id", sort=False).agg(family=("family", "first"), distinct=("text", "nunique"))
    solved = per_problem(frame).join(frame.groupby("problem_id", sort=False)[["family", "level"]].first())
    solved_train = solved[solved["level"].isin(tasks.TRAIN_LEVELS)]
    edge = solved[solved["level"].isin(EDGE_LEVELS)]
    in_band = edge["accuracy"].between(*BAND)
    points_frame = pd.DataFrame(points, columns=["kind", "position", "entropy", "forking", "top20", "family"])
    families = {}
    for family in tasks.FAMILIES:
        rows, per = train[train["family"] == family], solved_train[solved_train["family"] == family]
        shares = Counter(rows["strategy"])
        families[family] = {
            "median_distinct_traces": float(statistics.median(distinct[distinct["family"] == family]["distinct"])),
            "strategy_shares": {k: round(v / len(rows), 4) for k, v in shares.most_common()},
            "pass@1": round(float(per["accuracy"].mean()), 4), "pass@1_ci95": _interval(per["accuracy"]),
            f"maj@{samples}": round(float(per["maj_at_n"].mean()), 4),
            "wait_share": round(float(rows["wait"].mean()), 4),
            "level_4_pass@1": round(float(solved[(solved["family"] == family) & (solved["level"] == 4)]
                                          ["accuracy"].mean()), 4),
        }
    waits = train[train["wait"]]
    return {
        "mode": "sampled", "per_cell": per_cell, "samples": samples, "levels": list(SAMPLED_LEVELS),
        "sampling": traces[0].sampling if traces else {},
        "median_distinct_traces": float(statistics.median(distinct["distinct"])),
        "families": families,
        "choice_points": {kind: {"count": len(group), "mean_entropy": round(float(group["entropy"].mean()), 4),
                                 "forking_share": round(float(group["forking"].mean()), 4),
                                 "top20_share": round(float(group["top20"].mean()), 4)}
                          for kind, group in points_frame.groupby("kind")},
        "mean_token_entropy": round(float(np.mean([float(t.entropies.mean()) for t in traces if len(t)])), 5),
        "wait_share_training_levels": round(float(train["wait"].mean()), 4),
        "wait_traces_correct": round(float(waits["correct"].mean()), 4) if len(waits) else None,
        "pass@1_training_levels": round(float(solved_train["accuracy"].mean()), 4),
        f"maj@{samples}_training_levels": round(float(solved_train["maj_at_n"].mean()), 4),
        f"maj@{samples}_ci95": _interval(solved_train["maj_at_n"]),
        "edge_problems": len(edge), "edge_in_band_share": round(float(in_band.mean()), 4),
        "edge_in_band_ci95": _interval(in_band),
        "truncated_share": round(float(frame["length"].mean()), 4),
        "seconds": round(time.time() - started, 1),
    }


def markdown_sampled(result: dict) -> str:
    k = result["samples"]
    lines = [f"| task | distinct traces of {k} (median) | strategies (share of samples) | pass@1 (95% CI) | "
             f"maj@{k} | 'Wait' share | level 4 pass@1 |", "|---|---|---|---|---|---|---|"]
    for family, row in result["families"].items():
        shares = ", ".join(f"{name} {share:.0%}" for name, share in row["strategy_shares"].items())
        low, high = row["pass@1_ci95"]
        lines.append(f"| {family} | {row['median_distinct_traces']:g} | {shares} | {row['pass@1']:.1%} "
                     f"({low:.1%}-{high:.1%}) | {row[f'maj@{k}']:.1%} | {row['wait_share']:.1%} | "
                     f"{row['level_4_pass@1']:.1%} |")
    lines += ["", "| choice point | count | mean entropy (nats) | in `forking_tokens()` | entropy above 80% of the "
              "trace's tokens |", "|---|---|---|---|---|"]
    for kind, row in result["choice_points"].items():
        lines.append(f"| {kind} | {row['count']} | {row['mean_entropy']:.4f} | {row['forking_share']:.0%} | "
                     f"{row['top20_share']:.0%} |")
    waits = result["wait_traces_correct"]
    lines += ["", f"Training levels: median {result['median_distinct_traces']:g} distinct traces of {k}; 'Wait' in "
              f"{result['wait_share_training_levels']:.1%} of samples"
              + (f" ({waits:.0%} of those correct)" if waits is not None else "")
              + f"; sampled pass@1 {result['pass@1_training_levels']:.1%}, maj@{k} "
              f"{result[f'maj@{k}_training_levels']:.1%}. Edge (levels 3 and 4 pooled, {result['edge_problems']} "
              f"problems): {result['edge_in_band_share']:.1%} with sampled accuracy in [20%, 80%]. Mean per-token "
              f"entropy {result['mean_token_entropy']:.4f} nats. {result['per_cell']} held-out problems per cell, "
              f"{k} samples each at {result['sampling'].get('temperature')} / top-p {result['sampling'].get('top_p')}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the shipped MiMo-nano)")
    parser.add_argument("--per-cell", type=int, default=None, help="held-out problems per cell (40; sampled: 20)")
    parser.add_argument("--sampled", action="store_true", help="issue 16's sampled measurements (T 0.6, top-p 0.95)")
    parser.add_argument("--samples", type=int, default=16, help="samples per problem with --sampled")
    parser.add_argument("--out", default=None,
                        help="JSON file (default: benchmarks/results/nano_quality[_sampled].json)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    lab = mimo_lab.load(args.model)
    name = "nano_quality_sampled.json" if args.sampled else "nano_quality.json"
    out = Path(args.out or Path(__file__).parent / "results" / name)
    if args.sampled:
        result = evaluate_sampled(lab, args.per_cell or 20, samples=args.samples)
    else:
        result = evaluate(lab, args.per_cell or 40)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(markdown_sampled(result) if args.sampled else markdown(result))


if __name__ == "__main__":
    main()
