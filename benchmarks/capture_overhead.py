"""Cost of capturing every layer's residual stream (nnsight) at 2k tokens, as a ratio to a plain
no-grad forward pass of the same input, in one run (medians over repeats).

    python benchmarks/capture_overhead.py [--model PATH] [--tokens 2048] [--repeats 9]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import long_text, paired_times  # noqa: E402

import mimo_lab  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "capture_overhead.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    lab = mimo_lab.load(args.model)
    text, ids = long_text(lab.tokenizer, args.tokens)
    ids = ids.to(lab.device)

    def plain():
        with torch.no_grad():
            lab.model(ids)

    rows = paired_times({"plain forward": plain,
                         "capture resid, all layers": lambda: lab.capture(text, sites="resid"),
                         "capture resid+attn_out+mlp_out": lambda: lab.capture(text),
                         "capture resid, 512-token chunks": lambda: lab.capture(text, sites="resid", chunk_size=512)},
                        args.repeats)
    base = rows["plain forward"]
    result = {"model": lab.name, "tokens": args.tokens, "seconds": rows,
              "ratios": {k: v / base for k, v in rows.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for name, value in rows.items():
        print(f"{name:34s} {value * 1000:8.1f} ms  {value / base:5.2f}x")


if __name__ == "__main__":
    main()
