"""`mimo-lab`: the demo on MiMo-nano, MiMo-nano training, benchmark runs."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    import mimo_lab
    from mimo_lab.nano import tasks

    started = time.time()
    if args.per_level < 1:
        raise ValueError(f"--per-level {args.per_level} is not accepted: an integer of at least 1 is")
    lab = mimo_lab.load(args.model, device=args.device, threads=args.threads)
    print(f"{lab}  (loaded in {time.time() - started:.1f}s)\n")
    prompts = args.prompt or ["What is 128 + 367?", "What is 905 - 47?", "What is 23 * 41?",
                              "Solve for x: 3x + 7 = 25",
                              "How many times does the letter 'r' appear in 'strawberry'?",
                              "Sort these numbers: 5, 12, 3"]
    traces = lab.generate(prompts, greedy=True, seed=0)
    for trace in traces:
        mtp = trace.mtp_accuracy()
        print(f"Q: {trace.prompt}")
        print(trace.thinking)
        print(f"A: {trace.answer}   [final answer: {trace.final_answer}; {len(trace)} tokens; "
              f"mean entropy {float(trace.entropies.mean()):.3f} nats"
              + (f"; MTP t+2 accuracy {mtp:.0%}" if mtp is not None else "") + "]\n")
    if args.model is None or str(args.model).lower() in ("nano", "mimo-nano"):
        problems = tasks.eval_problems(per_cell=args.per_level, seed=7, levels=(2, 4))
        results = lab.generate([p.prompt for p in problems], greedy=True, seed=0, mtp=False)
        print("Held-out problems (greedy), accuracy by task at level 2 (trained) and 4 (beyond training):")
        for family in tasks.FAMILIES:
            cells = []
            for level in (2, 4):
                pairs = [(p, t) for p, t in zip(problems, results, strict=True)
                         if p.family == family and p.level == level]
                correct = sum(t.final_answer == p.answer for p, t in pairs)
                cells.append(f"level {level}: {correct}/{len(pairs)}")
            print(f"  {family:16s} " + "   ".join(cells))
    print(f"\ndone in {time.time() - started:.1f}s")
    return 0


def _nano_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from mimo_lab.nano.train import TrainSettings, train

    settings = TrainSettings()
    if args.steps is not None:
        settings = replace(settings, steps=args.steps)
    if args.seed is not None:
        settings = replace(settings, seed=args.seed)
    if args.traces is not None:
        settings = replace(settings, traces=args.traces)
    zero_first = args.mtp_zero_first_embedding
    if zero_first is None and args.traces == "v2":
        zero_first = True  # v2 runs train the MTP layer with the serving engines' slot-0 convention
    if zero_first is not None:
        settings = replace(settings, mtp_zero_first_embedding=zero_first)
    out = train(args.out, settings)
    print(f"MiMo-nano written to {out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import json

    import mimo_lab
    from mimo_lab.bench import load_suite, run

    # the suite first: a bad file is reported in one line before the model is loaded
    suite = load_suite(args.suite, limit=args.limit, select=args.select)
    sampling = {k: v for k, v in {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
                                  "max_new_tokens": args.max_new_tokens}.items() if v is not None}
    if args.greedy:
        sampling["greedy"] = True
    lab = mimo_lab.load(args.model, device=args.device, weights=args.backend != "vllm")
    result = run(lab, suite, samples=args.samples, out=args.out, seed=args.seed, batch_size=args.batch_size,
                 limit=args.limit, select=args.select, backend=args.backend, mtp_draft=args.mtp_draft, **sampling)
    summary = {k: v for k, v in result.summary.items() if k != "settings"}
    print(json.dumps(summary, indent=1))
    print(f"samples: {result.folder / 'samples.jsonl'}\nsummary: {result.folder / 'summary.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mimo-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="generate and show reasoning traces (default: MiMo-nano)")
    demo.add_argument("--model", default=None, help="hub id or folder (default: MiMo-nano)")
    demo.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    demo.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    demo.add_argument("--per-level", type=int, default=5, help="held-out problems per task and level")
    demo.add_argument("--threads", type=int, default=None,
                      help="torch CPU threads (default: $MIMO_LAB_THREADS, else 1 for a small model on the CPU)")
    demo.set_defaults(func=_demo)

    bench = sub.add_parser("bench", help="run a benchmark suite (resumable: run again with the same --out)")
    bench.add_argument("--model", default=None, help="hub id or folder (default: MiMo-nano, also 'nano')")
    bench.add_argument("--suite", default="nano", help="nano, math500, aime24, aime25, gsm8k, or a .jsonl/.csv/"
                                                       ".parquet file in one of their schemas (default: nano)")
    bench.add_argument("--limit", type=int, default=None,
                       help="N problems only, chosen by --select (default: all)")
    bench.add_argument("--select", default="stratified", choices=["stratified", "head"],
                       help="with --limit: 'stratified' (default) takes problems round-robin over family x level, "
                            "seeded; 'head' the first N in file order")
    bench.add_argument("--samples", type=int, default=1,
                       help="samples per problem (default 1: the model card's default decoding; more than 1: its "
                            "recommended sampling, unless --greedy or settings are given)")
    bench.add_argument("--out", required=True, help="run folder: samples.jsonl, summary.json, traces/")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--batch-size", type=int, default=16)
    bench.add_argument("--temperature", type=float, default=None)
    bench.add_argument("--top-p", type=float, default=None)
    bench.add_argument("--top-k", type=int, default=None)
    bench.add_argument("--max-new-tokens", type=int, default=None)
    bench.add_argument("--greedy", action="store_true")
    bench.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    bench.add_argument("--mtp-draft", action=argparse.BooleanOptionalAction, default=None,
                       help="vllm backend: MiMo's MTP layer drafts one token ahead (speculative decoding; "
                            "default: on for MiMo checkpoints)")
    bench.add_argument("--device", default=None)
    bench.set_defaults(func=_bench)

    nano = sub.add_parser("nano", help="MiMo-nano")
    nano_sub = nano.add_subparsers(dest="nano_command", required=True)
    train = nano_sub.add_parser("train", help="train MiMo-nano from its seed (resumes in the same --out)")
    train.add_argument("--out", required=True, help="output folder (checkpoint, loss_log.jsonl)")
    train.add_argument("--steps", type=int, default=None, help="training steps (default: the shipped run's)")
    train.add_argument("--seed", type=int, default=None, help="seed (default: the shipped run's)")
    train.add_argument("--traces", default=None, choices=["v1", "v2"],
                       help="trace style of the training data (default: v1, the shipped run's; v2: several "
                            "strategies, slips, false alarms, traces cut short)")
    train.add_argument("--mtp-zero-first-embedding", default=None, action=argparse.BooleanOptionalAction,
                       help="train the MTP layer with slot 0's token embedding zeroed, as vLLM and SGLang serve "
                            "MiMo (default: on with --traces v2, off otherwise)")
    train.set_defaults(func=_nano_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, ImportError, FileNotFoundError) as err:
        print(f"mimo-lab: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
