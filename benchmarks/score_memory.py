"""Peak memory of `lab.score` against the text's length: chunked (KV cache, 1024 tokens a chunk) vs one pass.

    python benchmarks/score_memory.py     # -> results/score_memory.json

Each measurement runs in a fresh process (VmHWM, the peak resident set, only grows): MiMo-nano loaded, the
text tokenized, then VmHWM read before and after one `lab.score` call; the figure is the growth. A text of N
tokens is one nano trace repeated. Ratios within one run are what to read (the machine is shared).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
import mimo_lab

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
n, chunk = int(sys.argv[1]), int(sys.argv[2])
lab = mimo_lab.load(threads=1)
piece = lab.generate("What is 4587 + 2698?", greedy=True).text + "\n"
ids = lab.tokenizer(piece, add_special_tokens=False)["input_ids"]
text = lab.tokenizer.decode((ids * (n // len(ids) + 1))[:n])
before = hwm()
began = time.time()
trace = lab.score("What is 4587 + 2698?", text, chunk_size=chunk, mtp=False)
print(json.dumps({"tokens": len(trace), "chunk_size": chunk, "growth_mib": round(hwm() - before, 1),
                  "seconds": round(time.time() - began, 2)}))
"""


def main() -> None:
    rows = []
    for n, chunk in ((2048, 1024), (8192, 1024), (16384, 1024), (30000, 1024), (2048, 2048), (8192, 8192)):
        out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(chunk)], capture_output=True, text=True,
                             check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    path = Path(__file__).parent / "results" / "score_memory.json"
    path.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
