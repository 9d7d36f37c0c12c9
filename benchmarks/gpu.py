"""GPU figures on a randomly initialised model of MiMo-7B's exact shape (bf16; no weights needed).

Reports decode tokens/s at batch 1 and 32 (plain `generate`, mimo_lab's generate with per-token
analytics, vLLM when installed) against the GPU's memory-bandwidth limit, the cost of capturing
every layer's residual at 4k tokens, sentence-level attention on a 16k-token input (time,
peak GPU memory), and the MTP head's t+2 accuracy under both slot-0 conventions (token embedding
of slot 0 zeroed, as vLLM and SGLang run MiMo, or unmasked). That last figure means something only
with real weights: pass `--mtp-model XiaomiMiMo/MiMo-7B-RL` (or a local folder); without it, it runs
on the random model and only shows that the comparison works. Finishes in a few minutes; without a
GPU it says so and exits cleanly.

    python benchmarks/gpu.py [--out benchmarks/results/gpu.json] [--mtp-model M] [--only-mtp]
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


# Short problems for the MTP comparison (greedy traces; the head's t+2 guesses are scored on them).
MTP_PROMPTS = [
    "What is 4587 + 2698?", "Solve for x: 3x + 7 = 22.", "How many positive divisors does 360 have?",
    "What is the sum of the first 50 odd numbers?", "Find the remainder when 2^100 is divided by 7.",
    "A rectangle has perimeter 36 and area 80. What are its side lengths?",
    "How many ways can 5 books be arranged on a shelf?", "What is the least common multiple of 18 and 24?",
]


def mtp_slot0_accuracy(lab, prompts: list[str], max_new_tokens: int) -> dict:
    """t+2 accuracy of the MTP head over greedy traces, slot 0 zeroed (vLLM / SGLang) vs unmasked."""
    traces = lab.generate(prompts, greedy=True, max_new_tokens=max_new_tokens, mtp=False)
    out: dict = {"model": lab.name, "traces": len(traces), "card_default_zeroed": lab.card.mtp_zero_first_embedding}
    for zero, key in ((True, "zeroed"), (False, "unmasked")):
        hits = torch.cat([lens.hits for lens in lab.mtp_lens(traces, zero_first_embedding=zero)])
        known = hits >= 0
        out[f"t2_accuracy_{key}"] = float(hits[known].float().mean())
        out["scored_tokens"] = int(known.sum())
    out["zeroed_minus_unmasked"] = out["t2_accuracy_zeroed"] - out["t2_accuracy_unmasked"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu.json"))
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--mtp-model", default=None,
                        help="real MiMo weights (hub id or folder) for the MTP slot-0 comparison; default: the "
                             "random model (the figure is then meaningless)")
    parser.add_argument("--mtp-new-tokens", type=int, default=512, help="tokens per trace in the MTP comparison")
    parser.add_argument("--only-mtp", action="store_true", help="run only the MTP slot-0 comparison")
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
    if args.only_mtp:
        return _mtp_only(args, lab, results, started)
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

    return _mtp_only(args, lab, results, started)


def _mtp_only(args, random_lab, results: dict, started: float) -> int:
    """The MTP slot-0 comparison (real weights when --mtp-model is given), then write the results."""
    import mimo_lab

    if args.mtp_model:
        lab, weights = mimo_lab.load(args.mtp_model, device="cuda"), "real"
    else:
        lab, weights = random_lab, "random (pass --mtp-model for a meaningful figure)"
    results["mtp_slot0"] = {"weights": weights, **mtp_slot0_accuracy(lab, MTP_PROMPTS, args.mtp_new_tokens)}
    print(f"MTP t+2 accuracy, slot 0 zeroed vs unmasked: {results['mtp_slot0']}", flush=True)
    results["seconds_total"] = time.time() - started
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
