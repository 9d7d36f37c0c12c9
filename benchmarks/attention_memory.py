"""Peak resident memory of sentence-level attention (all heads of one layer) on MiMo-nano for
2k, 4k, 8k and 16k-token inputs. Each size runs in its own process; the figure is the growth of
VmHWM (peak RSS) over the process's peak after loading the model and building the input.

    python benchmarks/attention_memory.py [--sizes 2048 4096 8192 16384] [--layer 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(tokens: int, layer: int) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from common import long_text

    import mimo_lab

    torch.set_num_threads(2)
    lab = mimo_lab.load()
    text, _ = long_text(lab.tokenizer, tokens)
    from mimo_lab.probe.inputs import encode

    encode(lab, text)  # tokenise once so the baseline includes it
    _ = lab.nn  # build the nnsight wrapper before the baseline
    base = vm_hwm_mib()
    started = time.perf_counter()
    result = lab.attention(text, layer)
    matrix = result.by_sentence()
    seconds = time.perf_counter() - started
    print(json.dumps({"tokens": tokens, "sentences": len(matrix.groups), "baseline_mib": base,
                      "peak_mib": vm_hwm_mib(), "extra_mib": vm_hwm_mib() - base, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "attention_memory.json"))
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.layer)
        return
    rows = []
    for size in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(size), "--layer", str(args.layer)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{size:6d} tokens: {rows[-1]['sentences']:5d} sentences, +{rows[-1]['extra_mib']:7.1f} MiB peak, "
              f"{rows[-1]['seconds']:6.1f} s", flush=True)
    first = rows[0]["extra_mib"]
    for row in rows:
        row["ratio_to_first"] = row["extra_mib"] / first if first else None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print("growth relative to the smallest:", ", ".join(f"{r['tokens']}: {r['ratio_to_first']:.2f}x" for r in rows))


if __name__ == "__main__":
    main()
