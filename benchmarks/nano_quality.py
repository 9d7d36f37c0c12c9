"""MiMo-nano's quality on held-out problems (never drawn in training), greedy decoding.

Reports exact-answer accuracy by task family x difficulty level (1-3 = training difficulty,
4-5 beyond it), the MTP head's top-1 accuracy on token t+2 over the generated traces, and the
share of traces that backtrack ("Wait"). Writes benchmarks/results/nano_quality.json and prints
a Markdown table.

    python benchmarks/nano_quality.py [--model PATH] [--per-cell 40]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import mimo_lab
from mimo_lab.nano import tasks


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the shipped MiMo-nano)")
    parser.add_argument("--per-cell", type=int, default=40)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "nano_quality.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    lab = mimo_lab.load(args.model)
    result = evaluate(lab, args.per_cell)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(markdown(result))


if __name__ == "__main__":
    main()
