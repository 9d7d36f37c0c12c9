"""The resampling engine against the naive loop, as ratios within one run (issue 19).

1. Speed: `lab.sentence_importance`'s rollouts (batched, one shared prefix KV cache per sentence) against one
   `lab.resample` call per rollout, the same rollouts (same seeds, checked token for token), the same
   analytics (per-token log-prob / entropy / top-k in both; MTP pass off in both), at `--rollouts` (32) per
   sentence on MiMo-nano at the card's sampling.
2. Prefill saved by sharing prefixes: a 2k-token prefix, `--rollouts` rollouts of 32 tokens: prompt tokens the
   engine ran through the model against those a per-rollout loop runs, and the time of both.
3. Peak memory against rollouts in flight (`batch_size`), each in its own process: VmHWM after the rollouts
   minus VmHWM after loading.
4. The projected cost of Thought Anchors' default settings for a 7B model on one GPU: arithmetic, stated as
   such (no GPU here), from the memory-bandwidth roofline of decoding.

    python benchmarks/resampling.py [--rollouts 32] [--sentences 3] [--out results/resampling.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

import mimo_lab
from mimo_lab import resampling as R

HERE = Path(__file__).parent


def vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def speed(lab, rollouts: int, sentences: int) -> dict:
    trace = lab.generate("What is 4738 + 2965?", seed=0)
    prefixes, _ = R.prefixes(trace)
    chosen = list(range(min(sentences, len(prefixes))))
    settings = lab._sampling({}, base="recommended")
    budget = trace.sampling["max_new_tokens"]
    started = time.perf_counter()
    engine = R.RolloutEngine(lab, settings, batch_size=rollouts, prompt_text=trace.prompt_text, prompt=trace.prompt)
    ours = {}
    for i in chosen:
        p = prefixes[i]
        seeds = [R.rollout_seed(0, p.position, "resample", k) for k in range(rollouts)]
        ours[i] = engine.run(trace.prompt_ids.tolist() + trace.token_ids[: p.keep].tolist(), seeds, budget - p.keep)
    engine_s = time.perf_counter() - started
    started = time.perf_counter()
    same = 0
    for i in chosen:
        p = prefixes[i]
        for k in range(rollouts):
            seed = R.rollout_seed(0, p.position, "resample", k)
            plain = lab.resample(trace, p.position, seed=seed, mtp=False, max_new_tokens=budget - p.keep)
            same += plain.token_ids[p.keep :].tolist() == ours[i][k]["ids"]
    naive_s = time.perf_counter() - started
    return {"trace_tokens": len(trace), "sentences": len(chosen), "rollouts_per_sentence": rollouts,
            "generated_tokens": engine.stats["generated_tokens"], "engine_s": round(engine_s, 2),
            "naive_s": round(naive_s, 2), "speedup": round(naive_s / engine_s, 2),
            "identical_rollouts": f"{same}/{len(chosen) * rollouts}"}


def prefill(lab, rollouts: int, prefix_tokens: int = 2048, new_tokens: int = 32) -> dict:
    sys.path.insert(0, str(HERE))
    from common import long_text

    text, _ = long_text(lab.tokenizer, prefix_tokens + 64)
    trace = lab.score("Think about these sums.", "<think>\n" + text)
    keep = prefix_tokens - trace.prompt_length
    base = trace.prompt_ids.tolist() + trace.token_ids[:keep].tolist()
    settings = lab._sampling({}, base="recommended")
    seeds = list(range(rollouts))
    engine = R.RolloutEngine(lab, settings, batch_size=rollouts, prompt_text=trace.prompt_text, prompt=trace.prompt)
    started = time.perf_counter()
    engine.run(base, seeds, new_tokens)
    engine_s = time.perf_counter() - started
    started = time.perf_counter()
    for s in seeds:
        lab.resample(trace, trace.prompt_length + keep, seed=s, mtp=False, max_new_tokens=new_tokens)
    naive_s = time.perf_counter() - started
    stats = engine.stats
    return {"prefix_tokens": len(base), "rollouts": rollouts, "new_tokens": new_tokens,
            "engine_prefill_tokens": stats["prefill_tokens"], "naive_prefill_tokens": stats["naive_prefill_tokens"],
            "prefill_saved": round(1 - stats["prefill_tokens"] / stats["naive_prefill_tokens"], 4),
            "engine_s": round(engine_s, 2), "naive_s": round(naive_s, 2), "speedup": round(naive_s / engine_s, 2)}


def memory_child(batch: int, rollouts: int) -> None:
    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    from common import long_text

    lab = mimo_lab.load()
    text, _ = long_text(lab.tokenizer, 2048 + 64)
    trace = lab.score("Think about these sums.", "<think>\n" + text)
    base = trace.prompt_ids.tolist() + trace.token_ids[: 2048 - trace.prompt_length].tolist()
    engine = R.RolloutEngine(lab, lab._sampling({}, base="recommended"), batch_size=batch,
                             prompt_text=trace.prompt_text, prompt=trace.prompt)
    engine.run(base, list(range(1)), 1)  # the prefix cache, and torch's first-call allocations
    loaded = vm_hwm_mib()
    engine.run(base, list(range(rollouts)), 32)
    print(json.dumps({"batch_size": batch, "loaded_mib": round(loaded, 1), "peak_mib": round(vm_hwm_mib(), 1),
                      "added_mib": round(vm_hwm_mib() - loaded, 1)}))


def memory(rollouts: int) -> list[dict]:
    out = []
    for batch in (1, 4, 16, 32):
        done = subprocess.run([sys.executable, __file__, "--memory-child", str(batch), "--rollouts", str(rollouts)],
                              capture_output=True, text=True, check=True)
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


def projection(rollouts: int = 100, chunks: int = 275, trace_tokens: int = 16384, bandwidth_tb_s: float = 3.35,
               batch: int = 64) -> dict:
    """Arithmetic, not a measurement: Thought Anchors' defaults (100 rollouts a chunk, 275 chunks, 16k-token
    traces) for MiMo-7B in bf16 on one GPU with `bandwidth_tb_s` of memory bandwidth (an H100 SXM's 3.35),
    decoding `batch` rollouts at a time, memory-bound: a step reads the weights once and every row's KV cache."""
    weights = 7.8e9 * 2  # MiMo-7B's parameters (with the MTP layer and both embeddings), bf16 bytes
    kv_per_token = 36 * 2 * 8 * 128 * 2  # layers x (k, v) x KV heads x head_dim x bf16 bytes = 147 KB
    # a rollout from chunk i regenerates the rest: on average half the trace, read against an average
    # context of three quarters of it
    generated = rollouts * chunks * trace_tokens / 2
    context = 0.75 * trace_tokens
    step_s = (weights + batch * context * kv_per_token) / (bandwidth_tb_s * 1e12)
    tokens_per_s = batch / step_s
    return {"assumptions": {"rollouts_per_chunk": rollouts, "chunks": chunks, "trace_tokens": trace_tokens,
                            "bandwidth_tb_s": bandwidth_tb_s, "batch": batch, "weights_gb": weights / 1e9,
                            "kv_bytes_per_token": kv_per_token},
            "generated_tokens": generated, "decode_tokens_per_s": round(tokens_per_s),
            "hours_per_trace": round(generated / tokens_per_s / 3600, 1),
            "hours_per_trace_forced_answers_too": round((generated + rollouts * chunks * 16) / tokens_per_s / 3600, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=32)
    parser.add_argument("--sentences", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results" / "resampling.json"))
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child, args.rollouts)
        return
    torch.set_num_threads(1)
    lab = mimo_lab.load()
    result = {"speed": speed(lab, args.rollouts, args.sentences), "prefill": prefill(lab, args.rollouts),
              "memory": memory(args.rollouts), "projection_7b": projection(), "torch_threads": 1}
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
