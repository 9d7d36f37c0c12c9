"""CPU threads for a small model: MiMo-nano's `Lab.generate` with 1 torch thread against torch's default
(one per core), on an idle machine and under CPU contention (busy processes, one per core), as ratios
of medians within one run. This is what `load()`'s thread choice rests on (1 thread below 50M
parameters on the CPU).

    python benchmarks/threads.py [--tokens 64] [--repeats 5] [--busy N]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import torch

import mimo_lab

sys.path.insert(0, str(Path(__file__).parent))
from common import paired_times  # noqa: E402


def _spin(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


def measure(lab, tokens: int, repeats: int, many: int) -> dict[str, float]:
    def run(threads: int):
        def fn():
            torch.set_num_threads(threads)
            lab.generate("What is 4821 + 3967?", greedy=True, max_new_tokens=tokens, seed=0, mtp=False)
        return fn

    return paired_times({"1 thread": run(1), f"{many} threads": run(many)}, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--busy", type=int, default=os.cpu_count(), help="busy processes for the contended case")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "threads.json"))
    args = parser.parse_args()
    many = max(2, os.cpu_count() or 2)  # torch's default: one thread per core
    lab = mimo_lab.load(threads=1)
    rows = {"idle": measure(lab, args.tokens, args.repeats, many)}
    stop = multiprocessing.Event()
    workers = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.busy)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)
    try:
        rows[f"contended ({args.busy} busy processes)"] = measure(lab, args.tokens, args.repeats, many)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    result = {"model": lab.name, "tokens": args.tokens, "repeats": args.repeats, "cores": os.cpu_count(),
              "seconds": rows,
              "ratio_many_over_one": {case: times[f"{many} threads"] / times["1 thread"]
                                      for case, times in rows.items()}}
    Path(args.out).write_text(json.dumps(result, indent=1))
    for case, ratio in result["ratio_many_over_one"].items():
        print(f"{case}: {many} threads take {ratio:.2f}x the time of 1 thread")


if __name__ == "__main__":
    main()
