"""Benchmark suites: MiMo-nano's own, MATH-500, AIME 2024/2025, GSM8K, and local files in their schemas.

A suite is a list of `BenchProblem`s (id, question, reference answer, metadata, answer type).
Hub suites load through `datasets` when it can reach the hub or its cache; the same schemas load
from local JSONL / JSON / CSV / parquet files (`load_suite(path)`), which is how tests and
offline machines run them.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from mimo_lab.checks import check_choice, check_int, check_seed, check_str
from mimo_lab.nano import tasks

ANSWER_TYPES = ("math", "ordered_list", "exact")
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

    def __post_init__(self):
        check_str("id", self.id)
        check_str("question", self.question)
        check_str("answer", self.answer)
        if not self.answer.strip():
            raise ValueError(f"answer={self.answer!r} of problem {self.id!r} is blank: a reference answer is needed")
        if not isinstance(self.meta, dict):
            raise TypeError(f"meta={self.meta!r} ({type(self.meta).__name__}) is not accepted: a dict is")
        check_choice("answer_type", self.answer_type, ANSWER_TYPES)


@dataclass
class Suite:
    """A named list of problems and how to turn one into a prompt."""

    name: str
    problems: list[BenchProblem]
    instruction: str | None = None  # appended to every question on a new line

    def __post_init__(self):
        check_str("name", self.name)
        if not isinstance(self.problems, list) or not all(isinstance(p, BenchProblem) for p in self.problems):
            raise TypeError(f"problems of suite {self.name!r} must be a list of BenchProblem")
        check_str("instruction", self.instruction, none_ok=True, empty_ok=True)

    def prompt(self, problem: BenchProblem) -> str:
        return problem.question if not self.instruction else f"{problem.question}\n{self.instruction}"

    def __len__(self) -> int:
        return len(self.problems)

    def limit(self, count: int | None, select: str = "stratified", seed: int = 0) -> Suite:
        """At most `count` problems (None: all of them).

        select="stratified": round-robin over the (family, level) strata (`meta` family or subject,
        and level), taking the strata in an order that varies family first and level second, each
        stratum's problems in a seeded shuffle; so `limit(8)` of the nano suite is one problem of
        every family, at different levels. A suite without such metadata is one stratum (a seeded
        sample). select="head": the first `count` in file order.
        """
        count = check_int("limit", count, minimum=1, none_ok=True)
        check_choice("select", select, SELECTIONS)
        seed = check_seed("seed", seed, none_ok=False)
        if count is None or count >= len(self.problems):
            return self
        if select == "head":
            return Suite(self.name, self.problems[:count], self.instruction)
        return Suite(self.name, stratified(self.problems, count, seed), self.instruction)


SELECTIONS = ("stratified", "head")


def stratum(problem: BenchProblem) -> tuple[str, str]:
    """(family, level) of a problem from its metadata ("" where it has none)."""
    meta = problem.meta or {}
    family = meta.get("family", meta.get("subject"))
    return ("" if family is None else str(family), "" if meta.get("level") is None else str(meta.get("level")))


def stratified(problems: list[BenchProblem], count: int, seed: int = 0) -> list[BenchProblem]:
    """`count` problems, round-robin over the (family, level) strata, seeded shuffle within each."""
    strata: dict[tuple[str, str], list[BenchProblem]] = {}
    for p in problems:
        strata.setdefault(stratum(p), []).append(p)
    rng = random.Random(seed)
    for key in strata:
        rng.shuffle(strata[key])
    families: dict[str, list[str]] = {}
    for family, level in strata:
        families.setdefault(family, []).append(level)
    # round r takes, from family i, its ((i + r) mod L)-th level: a short selection spreads over families and levels
    order = []
    for r in range(max(len(levels) for levels in families.values())):
        for i, (family, levels) in enumerate(families.items()):
            if r < len(levels):
                order.append((family, sorted(levels, key=_level_key)[(i + r) % len(levels)]))
    chosen: list[BenchProblem] = []
    depth = 0
    while len(chosen) < count:
        for key in order:
            if depth < len(strata[key]) and len(chosen) < count:
                chosen.append(strata[key][depth])
        depth += 1
    return chosen


def _level_key(level: str):
    digits = "".join(ch for ch in level if ch.isdigit())
    return (int(digits) if digits else math.inf, level)


# ----------------------------------------------------------------------------- schemas


def _gsm8k_answer(text: str) -> str:
    return text.rsplit("####", 1)[1].strip().replace(",", "") if "####" in text else text.strip()


def _missing(value) -> bool:
    """None, NaN (an empty CSV cell read by pandas) or a blank string."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def from_records(name: str, records: list[dict], where: list[str] | None = None) -> Suite:
    """Build a suite from rows in any of the supported schemas (detected from the field names).

    where: a label per row for error messages (e.g. "file.jsonl line 7"); default "suite NAME row i".
    A row without a question or reference answer (missing, null, NaN, blank) and two rows with the
    same problem id are refused, naming the rows.
    """
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise TypeError(f"records of suite {name!r} must be a list of dicts (one per problem)")
    if not records:
        raise ValueError(f"suite {name!r} has no rows")
    where = where or [f"suite {name!r} row {i + 1}" for i in range(len(records))]
    keys = set().union(*records)

    def need(i: int, row: dict, key: str):
        if _missing(row.get(key)):
            state = "has no" if key not in row else f"has an empty {key!r} ({row.get(key)!r}) -"
            raise ValueError(f"{where[i]} {state} {key!r} field: every problem needs a question and a reference "
                             "answer")
        return row[key]

    problems: list[BenchProblem] = []
    instruction: str | None = MATH_INSTRUCTION
    if {"problem", "answer", "unique_id"} <= keys:  # MATH-500
        for i, r in enumerate(records):
            problems.append(BenchProblem(str(need(i, r, "unique_id")), str(need(i, r, "problem")),
                                         str(need(i, r, "answer")), {"subject": r.get("subject"),
                                                                     "level": r.get("level")}))
    elif {"question", "answer"} <= keys and any("####" in str(r.get("answer")) for r in records):  # GSM8K
        for i, r in enumerate(records):
            answer = str(need(i, r, "answer"))
            if "####" not in answer or _missing(_gsm8k_answer(answer)):
                raise ValueError(f"{where[i]}: the GSM8K answer does not end in '#### <number>': {answer[-80:]!r}")
            problems.append(BenchProblem(str(r.get("id", i)), str(need(i, r, "question")), _gsm8k_answer(answer),
                                         {"solution": answer}))
    elif {"prompt", "answer", "family"} <= keys:  # the nano suite written to a file
        instruction = None
        for i, r in enumerate(records):
            problems.append(BenchProblem(str(need(i, r, "id")), str(need(i, r, "prompt")), str(need(i, r, "answer")),
                                         {k: r[k] for k in ("family", "level", "in_training") if k in r},
                                         r.get("answer_type", "math")))
    elif {"problem", "answer"} <= keys or {"question", "answer"} <= keys:  # AIME 2024 / 2025
        text_key = "problem" if "problem" in keys else "question"
        for i, r in enumerate(records):
            meta = {k: r[k] for k in ("year", "url", "solution") if k in r}
            problems.append(BenchProblem(str(r.get("id", i)), str(need(i, r, text_key)),
                                         str(need(i, r, "answer")).strip(), meta))
    else:
        raise ValueError(f"suite {name!r}: unrecognised columns {sorted(keys)}; expected MATH-500 (problem, answer, "
                         "subject, level, unique_id), AIME (id, problem|question, answer), GSM8K (question, answer "
                         "ending '#### n') or the nano schema (id, prompt, answer, family, level)")
    seen: dict[str, int] = {}
    for i, p in enumerate(problems):
        if p.id in seen:
            raise ValueError(f"duplicate problem id {p.id!r}: {where[seen[p.id]]} and {where[i]}; every problem "
                             "needs its own id (its samples and saved traces are keyed by it)")
        seen[p.id] = i
    return Suite(name, problems, instruction)


SUITE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def read_rows(path: Path) -> tuple[list[dict], list[str]]:
    """(rows, a label per row such as "path line 7") of a local .jsonl / .json / .csv / .parquet file."""
    suffix = path.suffix.lower()
    if suffix not in SUITE_SUFFIXES:
        raise ValueError(f"unsupported suite file {str(path)!r}: use .jsonl, .json, .csv or .parquet")
    if not path.is_file():
        raise FileNotFoundError(f"suite file {str(path)!r} does not exist")
    if suffix == ".jsonl":
        rows, where = [], []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {number} is not valid JSON ({err.msg} at column {err.colno})") from err
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {number} is a {type(row).__name__}, not a JSON object (one problem)")
            rows.append(row)
            where.append(f"{path} line {number}")
        return rows, where
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from err
        rows = data if isinstance(data, list) else data.get("rows", data.get("data", [])) if isinstance(data, dict) \
            else []
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{path}: expected a list of JSON objects (one per problem)")
        return rows, [f"{path} row {i + 1}" for i in range(len(rows))]
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str) if suffix == ".csv" else pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - pandas / pyarrow parse errors: one clear message naming the file
        raise ValueError(f"{path} could not be read as {suffix[1:]} ({type(err).__name__}: {err})") from err
    first = 2 if suffix == ".csv" else 1  # a CSV's line 1 is its header
    label = "line" if suffix == ".csv" else "row"
    return frame.to_dict("records"), [f"{path} {label} {i + first}" for i in range(len(frame))]


def read_records(path: Path) -> list[dict]:
    """Rows of a local .jsonl / .json / .csv / .parquet file."""
    return read_rows(Path(path))[0]


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
    per_cell = check_int("per_cell", per_cell, minimum=1)
    seed = check_seed("seed", seed, none_ok=False)
    levels, families = tuple(levels), tuple(families)
    if not levels or any(level not in tasks.ALL_LEVELS for level in levels):
        raise ValueError(f"levels={levels!r} is not accepted: a non-empty selection of {tasks.ALL_LEVELS} is")
    if not families or any(family not in tasks.FAMILIES for family in families):
        raise ValueError(f"families={families!r} is not accepted: a non-empty selection of {tasks.FAMILIES} is")
    problems = []
    for i, p in enumerate(tasks.eval_problems(per_cell, seed=seed, levels=levels, families=families)):
        meta = {"family": p.family, "level": p.level, "in_training": p.level in tasks.TRAIN_LEVELS}
        answer_type = "ordered_list" if p.family == "sorting" else "math"
        problems.append(BenchProblem(f"{p.family}-L{p.level}-{i:04d}", p.prompt, p.answer, meta, answer_type))
    return Suite("nano", problems)


def _looks_like_path(text: str) -> bool:
    return text.lower().endswith(SUITE_SUFFIXES) or "/" in text or "\\" in text or text.startswith((".", "~"))


def load_suite(name_or_path: str | Path, *, limit: int | None = None, per_cell: int = 10,
               select: str = "stratified") -> Suite:
    """"nano", "math500", "aime24", "aime25", "gsm8k" (through `datasets`), or a local file.

    limit: at most this many problems, chosen by `select` ("stratified" over family x level, seeded;
    or "head", the first in file order); see `Suite.limit`.
    """
    if not isinstance(name_or_path, str | Path):
        raise TypeError(f"name_or_path={name_or_path!r} ({type(name_or_path).__name__}) is not accepted: a suite "
                        "name or a path to a suite file is")
    check_int("limit", limit, minimum=1, none_ok=True)
    check_choice("select", select, SELECTIONS)
    per_cell = check_int("per_cell", per_cell, minimum=1)
    text = str(name_or_path).strip()
    if not text:
        raise ValueError("name_or_path='' is empty: a suite name (nano, math500, ...) or a file path is accepted")
    path = Path(text).expanduser()
    if isinstance(name_or_path, Path) or path.exists() or _looks_like_path(text):
        if path.is_dir():
            raise ValueError(f"suite path {str(path)!r} is a folder: give a .jsonl/.json/.csv/.parquet file")
        rows, where = read_rows(path)
        return from_records(path.stem, rows, where).limit(limit, select)
    key = ALIASES.get(text.lower(), text.lower())
    if key == "nano":
        return nano_suite(per_cell).limit(limit, select)
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
    return from_records(key, rows).limit(limit, select)
