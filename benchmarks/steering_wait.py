"""Does a backtracking vector move how often MiMo-nano says "Wait", in the direction of its sign?

Vectors from 384 sampled traces of 96 held-out level-2 problems (`lab.behaviour_vector`, where=
"backtracking", span="lead": the token before each Wait sentence, against every other generated
position or against the tokens before the other sentences), at layers 1-3; then 192 held-out level-2
prompts sampled (T 0.6, top-p 0.95, the same seeds) with the vector added at scale s (in multiples of
the layer's mean residual norm), and the share of traces whose thinking says "Wait,".

    python benchmarks/steering_wait.py --model DIR [--out F]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import mimo_lab
from mimo_lab.nano import tasks

SCALES = (-0.5, -0.3, 0.3, 0.5)


def problems(level: int, per_family: int, seed: int) -> list[tasks.Problem]:
    rng = random.Random(seed)
    return [tasks.make_problem(f, level, rng, split="eval") for f in tasks.FAMILIES for _ in range(per_family)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "steering.json"))
    args = parser.parse_args()
    lab = mimo_lab.load(args.model)
    traces = lab.generate([p.prompt for p in problems(2, 16, seed=11) for _ in range(4)], seed=5,
                          preset="recommended", mtp=False)
    prompts = [p.prompt for p in problems(2, 32, seed=12)]

    def share(vector=None, scale=0.0) -> float:
        if vector is None:
            out = lab.generate(prompts, seed=5, preset="recommended", mtp=False)
        else:
            with lab.steer(vector, scale):
                out = lab.generate(prompts, seed=5, preset="recommended", mtp=False)
        return round(sum("Wait," in t.thinking for t in out) / len(out), 3)

    result = {"base": share(), "prompts": len(prompts), "vector_traces": len(traces)}
    print(result, flush=True)
    for layer in range(1, lab.num_layers):
        for span, against in (("lead", "rest"), ("lead", "other_sentences")):
            vector = lab.behaviour_vector(traces, layer, "backtracking", span=span, against=against)
            row = {str(s): share(vector, s) for s in SCALES}
            result[f"layer {layer}, span={span}, against={against}, counts {vector.counts}"] = row
            print(layer, span, against, vector.counts, row, flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
