"""`mimo-lab`: the demo on MiMo-nano, MiMo-nano training, benchmark runs."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    import mimo_lab
    from mimo_lab.nano import tasks

    started = time.time()
    lab = mimo_lab.load(args.model, device=args.device)
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
    out = train(args.out, settings)
    print(f"MiMo-nano written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mimo-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="generate and show reasoning traces (default: MiMo-nano)")
    demo.add_argument("--model", default=None, help="hub id or folder (default: MiMo-nano)")
    demo.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    demo.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    demo.add_argument("--per-level", type=int, default=5, help="held-out problems per task and level")
    demo.set_defaults(func=_demo)

    nano = sub.add_parser("nano", help="MiMo-nano")
    nano_sub = nano.add_subparsers(dest="nano_command", required=True)
    train = nano_sub.add_parser("train", help="train MiMo-nano from its seed (resumes in the same --out)")
    train.add_argument("--out", required=True, help="output folder (checkpoint, loss_log.jsonl)")
    train.add_argument("--steps", type=int, default=None, help="training steps (default: the shipped run's)")
    train.add_argument("--seed", type=int, default=None, help="seed (default: the shipped run's)")
    train.set_defaults(func=_nano_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"mimo-lab: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
