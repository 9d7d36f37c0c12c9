"""Benchmark suites: MiMo-nano's own, MATH-500, AIME 2024/2025, GSM8K, and local files in their schemas.

A suite is a list of `BenchProblem`s (id, question, reference answer, metadata, answer type).
Hub suites load through `datasets` when it can reach the hub or its cache; the same schemas load
from local JSONL / JSON / CSV / parquet files (`load_suite(path)`), which is how tests and
offline machines run them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mimo_lab.nano import tasks

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class BenchProblem:
    """One problem. answer_type: "math" (math-verify equivalence), "ordered_list" (same items, same
    order) or "exact" (same string after trimming)."""

    id: str
    question: str
    answer: str
    meta: dict = field(default_factory=dict)
    answer_type: str = "math"


@dataclass
class Suite:
    """A named list of problems and how to turn one into a prompt."""

    name: str
    problems: list[BenchProblem]
    instruction: str | None = None  # appended to every question on a new line

    def prompt(self, problem: BenchProblem) -> str:
        return problem.question if not self.instruction else f"{problem.question}\n{self.instruction}"

    def __len__(self) -> int:
        return len(self.problems)

    def limit(self, count: int | None) -> Suite:
        if count is None:
            return self
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"limit {count!r} is not allowed: use an integer >= 1 or None for all problems")
        return Suite(self.name, self.problems[:count], self.instruction)


# ----------------------------------------------------------------------------- schemas


def _gsm8k_answer(text: str) -> str:
    return text.rsplit("####", 1)[1].strip().replace(",", "") if "####" in text else text.strip()


def from_records(name: str, records: list[dict]) -> Suite:
    """Build a suite from rows in any of the supported schemas (detected from the field names)."""
    if not records:
        raise ValueError(f"suite {name!r} has no rows")
    keys = set(records[0])
    problems = []
    if {"problem", "answer", "unique_id"} <= keys:  # MATH-500
        for r in records:
            problems.append(BenchProblem(str(r["unique_id"]), r["problem"], str(r["answer"]),
                                         {"subject": r.get("subject"), "level": r.get("level")}))
        return Suite(name, problems, MATH_INSTRUCTION)
    if {"question", "answer"} <= keys and any("####" in str(r["answer"]) for r in records):  # GSM8K
        for i, r in enumerate(records):
            problems.append(BenchProblem(str(r.get("id", i)), r["question"], _gsm8k_answer(str(r["answer"])),
                                         {"solution": str(r["answer"])}))
        return Suite(name, problems, MATH_INSTRUCTION)
    if {"problem", "answer"} <= keys or {"question", "answer"} <= keys:  # AIME 2024 / 2025
        text_key = "problem" if "problem" in keys else "question"
        for i, r in enumerate(records):
            meta = {k: r[k] for k in ("year", "url", "solution") if k in r}
            problems.append(BenchProblem(str(r.get("id", i)), r[text_key], str(r["answer"]).strip(), meta))
        return Suite(name, problems, MATH_INSTRUCTION)
    if {"prompt", "answer", "family"} <= keys:  # the nano suite written to a file
        for r in records:
            problems.append(BenchProblem(str(r["id"]), r["prompt"], str(r["answer"]),
                                         {k: r[k] for k in ("family", "level", "in_training") if k in r},
                                         r.get("answer_type", "math")))
        return Suite(name, problems)
    raise ValueError(f"suite {name!r}: unrecognised columns {sorted(keys)}; expected MATH-500 (problem, answer, "
                     "subject, level, unique_id), AIME (id, problem|question, answer), GSM8K (question, answer "
                     "ending '#### n') or the nano schema (id, prompt, answer, family, level)")


def read_records(path: Path) -> list[dict]:
    """Rows of a local .jsonl / .json / .csv / .parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if suffix == ".json":
        data = json.loads(path.read_text())
        return data if isinstance(data, list) else data.get("rows", data.get("data", []))
    if suffix in (".csv", ".parquet"):
        import pandas as pd

        frame = pd.read_csv(path, dtype=str) if suffix == ".csv" else pd.read_parquet(path)
        return frame.to_dict("records")
    raise ValueError(f"unsupported suite file {str(path)!r}: use .jsonl, .json, .csv or .parquet")


# ----------------------------------------------------------------------------- named suites

HUB_SUITES = {
    "math500": ("HuggingFaceH4/MATH-500", None, "test"),
    "aime24": ("HuggingFaceH4/aime_2024", None, "train"),
    "aime25": ("yentinglin/aime_2025", None, "train"),
    "gsm8k": ("openai/gsm8k", "main", "test"),
}
ALIASES = {"math-500": "math500", "math_500": "math500", "aime2024": "aime24", "aime_2024": "aime24",
           "aime2025": "aime25", "aime_2025": "aime25", "mimo-nano": "nano"}


def nano_suite(per_cell: int = 10, levels=tasks.ALL_LEVELS, families=tasks.FAMILIES, seed: int = 2024) -> Suite:
    """MiMo-nano's held-out problems: every family x level (1-3 trained, 4-5 beyond), fixed seed."""
    problems = []
    for i, p in enumerate(tasks.eval_problems(per_cell, seed=seed, levels=levels, families=families)):
        meta = {"family": p.family, "level": p.level, "in_training": p.level in tasks.TRAIN_LEVELS}
        answer_type = "ordered_list" if p.family == "sorting" else "math"
        problems.append(BenchProblem(f"{p.family}-L{p.level}-{i:04d}", p.prompt, p.answer, meta, answer_type))
    return Suite("nano", problems)


def load_suite(name_or_path: str, *, limit: int | None = None, per_cell: int = 10) -> Suite:
    """"nano", "math500", "aime24", "aime25", "gsm8k" (through `datasets`), or a local file."""
    path = Path(str(name_or_path)).expanduser()
    if path.exists():
        return from_records(path.stem, read_records(path)).limit(limit)
    key = ALIASES.get(str(name_or_path).lower(), str(name_or_path).lower())
    if key == "nano":
        return nano_suite(per_cell).limit(limit)
    if key not in HUB_SUITES:
        raise ValueError(f"unknown suite {name_or_path!r}: use nano, {', '.join(HUB_SUITES)}, or a path to a "
                         ".jsonl/.json/.csv/.parquet file in one of their schemas")
    repo, config, split = HUB_SUITES[key]
    try:
        from datasets import load_dataset

        rows = list(load_dataset(repo, config, split=split))
    except Exception as err:  # noqa: BLE001 - offline, not cached, renamed: one clear message
        raise ValueError(f"could not load {repo} ({type(err).__name__}: {err}). Without the hub, download it "
                         f"elsewhere and pass the file: `mimo-lab bench --suite path/to/{key}.jsonl`") from err
    return from_records(key, rows).limit(limit)
