"""GPU figures on a randomly initialised model of MiMo-7B's exact shape (bf16; no weights needed).

Reports decode tokens/s at batch 1 and 32 (plain `generate`, mimo_lab's generate with per-token
analytics, vLLM when installed) against the GPU's memory-bandwidth limit, the cost of capturing
every layer's residual at 4k tokens, and sentence-level attention on a 16k-token input (time,
peak GPU memory). Finishes in a few minutes; without a GPU it says so and exits cleanly.

    python benchmarks/gpu.py [--out benchmarks/results/gpu.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

# HBM bandwidth in GB/s by product name (public spec sheets), for the decode roofline.
BANDWIDTH_GBPS = {"H200": 4800, "H100 SXM": 3350, "H100 NVL": 3900, "H100 PCIe": 2000, "H100": 3350,
                  "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100": 1555, "L40S": 864, "L4": 300,
                  "A10G": 600, "RTX 4090": 1008, "B200": 8000, "GH200": 4000}

MIMO_7B = dict(vocab_size=151680, hidden_size=4096, intermediate_size=11008, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768, rms_norm_eps=1e-5,
               rope_parameters={"rope_type": "default", "rope_theta": 640000.0}, tie_word_embeddings=False,
               num_nextn_predict_layers=1, eos_token_id=2, pad_token_id=0)


def bandwidth_for(name: str) -> float | None:
    for key, value in BANDWIDTH_GBPS.items():
        if key.lower() in name.lower():
            return float(value)
    return None


def timed(fn, repeats: int = 3) -> float:
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu.json"))
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing to measure (run this on a GPU machine)")
        return 0

    sys.path.insert(0, str(Path(__file__).parent))
    from common import long_text

    import mimo_lab
    from mimo_lab import generation
    from mimo_lab.lab import Lab
    from mimo_lab.models.cards import CARDS
    from mimo_lab.models.mimo import MiMoConfig, MiMoForCausalLM

    started = time.time()
    device = torch.device("cuda")
    gpu = torch.cuda.get_device_name(0)
    results: dict = {"gpu": gpu, "gpus": torch.cuda.device_count(), "torch": torch.__version__}
    config = MiMoConfig(**MIMO_7B)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = MiMoForCausalLM(config).to(torch.bfloat16).eval()
    nano = mimo_lab.load()  # its tokenizer stands in for MiMo's (ids < 512 are valid in both)
    lab = Lab(model, nano.tokenizer, CARDS["XiaomiMiMo/MiMo-7B-RL"], "random MiMo-7B shape")
    params = sum(p.numel() for p in model.parameters())
    decode_params = params - sum(p.numel() for p in model.model.mtp_layers.parameters())
    results["parameters"] = params
    bandwidth = bandwidth_for(gpu)
    if bandwidth:
        results["bandwidth_GBps"] = bandwidth
        results["roofline_tokens_per_s_batch1"] = bandwidth * 1e9 / (2 * decode_params)

    tok = nano.tokenizer
    settings = generation.resolve_sampling(lab.card, max_new_tokens=args.new_tokens)
    eos = generation.eos_token_ids(model, tok)
    for batch in (1, 32):
        prompts = [lab.format_prompt(f"What is {1000 + i} + {2345 + i}?") for i in range(batch)]
        tok.padding_side = "left"
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        common = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=0,
                      eos_token_id=eos)

        def plain(enc=enc, common=common):
            with torch.no_grad():
                model.generate(**enc, do_sample=True, temperature=0.6, top_p=0.95, top_k=0, **common)

        def analytics(prompts=prompts):
            generation.generate_traces(model, tok, prompts, prompts, sampling=settings,
                                       seeds=list(range(len(prompts))), min_new_tokens=args.new_tokens)

        t_plain, t_lab = timed(plain, 2), timed(analytics, 2)
        results[f"batch{batch}"] = {"plain_tokens_per_s": batch * args.new_tokens / t_plain,
                                    "mimo_lab_tokens_per_s": batch * args.new_tokens / t_lab,
                                    "analytics_ratio": t_lab / t_plain}
        print(f"batch {batch}: plain {batch * args.new_tokens / t_plain:.1f} tok/s, mimo_lab "
              f"{batch * args.new_tokens / t_lab:.1f} tok/s ({t_lab / t_plain:.3f}x)", flush=True)

    text4k, ids4k = long_text(tok, 4096)
    ids4k = ids4k.to(device)

    def forward():
        with torch.no_grad():
            model(ids4k)

    t_forward = timed(forward)
    t_capture = timed(lambda: lab.capture(text4k, sites="resid"))
    results["capture_4k"] = {"forward_s": t_forward, "capture_resid_all_layers_s": t_capture,
                             "ratio": t_capture / t_forward}
    print(f"capture at 4k tokens: {t_capture / t_forward:.3f}x a plain forward", flush=True)

    text16k, _ = long_text(tok, 16384)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    sentences = lab.attention(text16k, layer=config.num_hidden_layers // 2).by_sentence()
    torch.cuda.synchronize()
    results["sentence_attention_16k"] = {
        "seconds": time.perf_counter() - t0, "sentences": len(sentences.groups),
        "peak_extra_GiB": (torch.cuda.max_memory_allocated() - base) / 2**30, "heads": config.num_attention_heads}
    print(f"sentence attention, 16k tokens, 32 heads: {results['sentence_attention_16k']}", flush=True)

    try:
        import vllm  # noqa: F401

        from mimo_lab.bench.vllm_backend import sampling_params

        folder = Path(tempfile.mkdtemp(prefix="mimo7b-random-"))
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        llm = vllm.LLM(model=str(folder), dtype="bfloat16", max_model_len=4096, gpu_memory_utilization=0.5)
        for batch in (1, 32):
            prompts = [lab.format_prompt(f"What is {1000 + i} + {2345 + i}?") for i in range(batch)]
            params = [sampling_params(vllm, settings, i) for i in range(batch)]
            for p in params:
                p.min_tokens = args.new_tokens
            t = timed(lambda prompts=prompts, params=params: llm.generate(prompts, params, use_tqdm=False), 2)
            results[f"batch{batch}"]["vllm_tokens_per_s"] = batch * args.new_tokens / t
    except ImportError:
        results["vllm"] = "not installed"
    except Exception as err:  # noqa: BLE001 - report, keep the other figures
        results["vllm"] = f"failed: {type(err).__name__}: {err}"

    results["seconds_total"] = time.time() - started
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
