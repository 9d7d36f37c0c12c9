"""Cost of per-token analytics: `Lab.generate` (analytics recorded while generating) against a
plain `model.generate` with the same settings, as a ratio of medians in one run; the MTP pass
over the finished traces is timed separately.

Both generate the same tokens (greedy; and sampling with EOS suppressed so lengths match), so
the ratio is the price of the analytics alone.

    python benchmarks/generation_overhead.py [--model PATH] [--tokens 256] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import mimo_lab
from mimo_lab import generation

sys.path.insert(0, str(Path(__file__).parent))
from common import median_time, paired_times  # noqa: E402

PROMPTS = ["What is 4821 + 3967?", "What is 905 - 47?", "What is 23 * 41?", "Solve for x: 3x + 7 = 25",
           "How many times does the letter 'r' appear in 'strawberry'?", "Sort these numbers: 5, 12, 3, 44, 17, 9",
           "What is 128 + 367?", "Multiply 57 by 86."]



def measure(lab, tokens: int, repeats: int, batch: int, greedy: bool) -> dict:
    texts = [lab.format_prompt(p) for p in (PROMPTS * 8)[:batch]]
    tok = lab.tokenizer
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    eos = generation.eos_token_ids(lab.model, tok)
    settings = generation.resolve_sampling(lab.card, greedy=greedy, max_new_tokens=tokens)
    # EOS suppressed in both, so every run makes exactly `tokens` tokens.
    common = dict(max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=tok.pad_token_id, eos_token_id=eos)

    def plain():
        torch.manual_seed(0)
        with torch.no_grad():
            if greedy:
                return lab.model.generate(**enc, do_sample=False, **common)
            return lab.model.generate(**enc, do_sample=True, temperature=settings.temperature, top_p=settings.top_p,
                                      top_k=0, **common)

    def analytics():
        with torch.no_grad():
            sampler = generation.AnalyticsSampler(settings, seeds=list(range(batch)))
            from transformers import LogitsProcessorList

            return lab.model.generate(**enc, do_sample=False, logits_processor=LogitsProcessorList([sampler]),
                                      **common)

    def full_lab_generate():
        # The whole public call: prompt formatting, generation with analytics, building Traces.
        return generation.generate_traces(lab.model, tok, texts, texts, sampling=settings, seeds=list(range(batch)),
                                          with_mtp=False, min_new_tokens=tokens)

    out = {"batch": batch, "tokens": tokens, "greedy": greedy}
    times = paired_times({"plain": plain, "analytics": analytics, "lab": full_lab_generate}, repeats)
    out["plain_s"], out["analytics_s"], out["lab_generate_s"] = times["plain"], times["analytics"], times["lab"]
    out["ratio_analytics"] = out["analytics_s"] / out["plain_s"]
    out["ratio_lab_generate"] = out["lab_generate_s"] / out["plain_s"]
    if lab.has_mtp:
        sequences = plain()
        width = enc["input_ids"].shape[1]
        rows = [(enc["input_ids"][i][enc["attention_mask"][i].bool()], sequences[i, width:]) for i in range(batch)]
        out["mtp_pass_s"] = median_time(lambda: [generation.mtp_analytics(lab.model, p, g) for p, g in rows], repeats)
        out["ratio_mtp_pass"] = out["mtp_pass_s"] / out["plain_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "generation_overhead.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    lab = mimo_lab.load(args.model)
    rows = [measure(lab, args.tokens, args.repeats, batch, greedy) for batch, greedy in
            [(1, True), (1, False), (8, True), (8, False)]]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": lab.name, "rows": rows}, indent=1))
    print(f"{'batch':>5} {'mode':>7} {'plain s':>8} {'analytics':>9} {'Lab.generate':>12} {'MTP pass':>9}")
    for r in rows:
        print(f"{r['batch']:>5} {'greedy' if r['greedy'] else 'sample':>7} {r['plain_s']:>8.3f} "
              f"{r['ratio_analytics']:>8.3f}x {r['ratio_lab_generate']:>11.3f}x {r.get('ratio_mtp_pass', 0):>8.3f}x")


if __name__ == "__main__":
    main()
