"""Thought Anchors' format (Bogdan et al. 2025, arXiv 2506.19143), read and written.

A Thought Anchors problem folder holds `problem.json` (the MATH problem), `base_solution.json` (the
prompt, the generated `solution` through `</think>` and the answer, `is_correct`) and `chunks_labeled.json`
(one record per chunk of the solution as their splitter cuts it: `chunk`, `chunk_idx`, `function_tags`, the
resampling / counterfactual / forced importances, ...).

- `read(folder, lab=None)` gives a `Trace` of the solution, scored by `lab` when one is given (a teacher-forced
  pass, `Lab.score`), text-only otherwise; the chunk records ride along in `trace.meta["thought_anchors"]`
  and line up one to one with `trace.segments("thought_anchors")` (checked on reading).
- `chunks(trace)` is that table as a DataFrame, each chunk with its span of `trace.text`; `tags(trace)` a
  labeller that gives each chunk its Thought Anchors tag (`trace.segments("thought_anchors", labeller=...)`).
- `write(trace, folder, ...)` writes a trace with mimo_lab's own sentence analyses (a labeller's tags,
  per-chunk values such as suppression effects) as a problem folder in the same schema, so their website
  and scripts read it; `chunk_records` gives the records without writing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch

from mimo_lab.checks import check_path, show
from mimo_lab.segment import DEFAULT_LABELLER, thought_anchors_spans
from mimo_lab.trace import Trace

FILES = ("problem.json", "base_solution.json", "chunks_labeled.json")
# chunks_labeled.json's per-chunk fields after chunk, chunk_idx and function_tags, in their order
IMPORTANCE_FIELDS = ("accuracy", "resampling_importance_accuracy", "resampling_importance_kl",
                     "counterfactual_importance_accuracy", "counterfactual_importance_kl",
                     "forced_importance_accuracy", "forced_importance_kl", "different_trajectories_fraction",
                     "overdeterminedness")
_KEY = "thought_anchors"
__all__ = ["FILES", "IMPORTANCE_FIELDS", "ChunkTags", "chunk_records", "chunks", "read", "read_all", "tags",
           "thought_anchors_spans", "write"]


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}): a Thought Anchors {what} is expected") from None


def read(folder: str | Path, lab=None, *, chunk_size: int = 1024) -> Trace:
    """A Thought Anchors problem folder as a Trace of its solution, chunks, tags and importances attached.

    lab: score the solution with this model (`Lab.score`: per-token log-probs, entropies, ... of a text the
        model did not write); None gives a text-only Trace (no tokens; segments, chunks and tags still work).
    The prompt is the folder's user turn; the solution starts inside the thinking (their template opened
    `<think>`), so when scoring, the lab's opening think tag goes at the end of the prompt it reads.
    """
    from mimo_lab.generation import check_lab

    if lab is not None:
        check_lab(lab)
    folder = check_path("folder", folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder={str(folder)!r} is not a folder: a Thought Anchors problem folder "
                                f"({', '.join(FILES)}) is expected")
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a Thought Anchors problem folder: {', '.join(missing)} missing")
    problem = _read_json(folder / "problem.json", "problem.json")
    base = _read_json(folder / "base_solution.json", "base_solution.json")
    records = _read_json(folder / "chunks_labeled.json", "chunks_labeled.json")
    for key in ("prompt", "solution"):
        if not isinstance(base.get(key), str) or not base[key]:
            raise ValueError(f"{folder / 'base_solution.json'}: {key!r} is missing or empty")
    if not isinstance(records, list) or not all(isinstance(r, dict) and "chunk" in r for r in records):
        raise ValueError(f"{folder / 'chunks_labeled.json'}: a list of chunk records (each with 'chunk') is expected")
    solution = base["solution"]
    _check_alignment(solution, records, folder)
    info = {"folder": folder.name, "problem": problem,
            "base_solution": {k: v for k, v in base.items() if k != "solution"},
            "chunks": records}
    if lab is not None:
        opened = lab.card.think_start + "\n" if lab.card.think_start and lab.card.think_start not in solution else ""
        trace = lab.score(base["prompt"], solution, chunk_size=chunk_size, prompt_suffix=opened)
        if trace.text != solution:
            raise ValueError(f"{lab.name!r}'s tokenizer does not give back the solution of {folder} exactly: its "
                             "chunks cannot be placed on the scored text")
    else:
        trace = _text_only(base["prompt"], solution)
    trace.meta[_KEY] = info
    trace.meta["source"] = f"Thought Anchors: {folder.name}"
    return trace


def read_all(root: str | Path, lab=None, *, chunk_size: int = 1024) -> list[Trace]:
    """Every problem folder under `root` (sorted by name), read by `read`."""
    root = check_path("root", root)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / "chunks_labeled.json").is_file()) \
        if root.is_dir() else []
    if not folders:
        raise FileNotFoundError(f"root={str(root)!r} holds no Thought Anchors problem folder")
    return [read(f, lab, chunk_size=chunk_size) for f in folders]


def _text_only(prompt: str, text: str) -> Trace:
    return Trace(prompt=prompt, text=text, token_ids=torch.zeros(0, dtype=torch.long), token_texts=[],
                 spans=torch.zeros(0, 2, dtype=torch.long), logprobs=torch.zeros(0), entropies=torch.zeros(0),
                 model_entropies=torch.zeros(0), top_ids=torch.zeros(0, 1, dtype=torch.long),
                 top_logprobs=torch.zeros(0, 1), top_texts=[], finish_reason="stop", model_name="",
                 meta={"analytics": "none (text only)"})


def _check_alignment(text: str, records: list[dict], where) -> None:
    ours = thought_anchors_spans(text)
    if len(ours) != len(records):
        raise ValueError(f"{where}: chunks_labeled.json has {len(records)} chunks, the solution splits into "
                         f"{len(ours)} by Thought Anchors' rule: the chunks do not belong to this solution")
    for i, ((_, _, chunk), record) in enumerate(zip(ours, records, strict=True)):
        if _collapse(chunk) != _collapse(record["chunk"]):
            raise ValueError(f"{where}: chunk {i} is {show(record['chunk'])} in chunks_labeled.json but "
                             f"{show(chunk)} in the solution: the chunks do not belong to this solution")


def _info(trace: Trace) -> dict:
    if not isinstance(trace, Trace):
        raise TypeError(f"trace={show(trace)} ({type(trace).__name__}) is not accepted: a Trace is")
    info = trace.meta.get(_KEY)
    if not info:
        raise ValueError("the trace holds no Thought Anchors chunks: read it with thought_anchors.read(folder)")
    return info


def chunks(trace: Trace) -> pd.DataFrame:
    """The trace's Thought Anchors chunks: chunk_idx, start and end (the span in `trace.text`), chunk,
    tag (the first function tag), function_tags, depends_on, the importances, summary."""
    info = _info(trace)
    spans = thought_anchors_spans(trace.text)
    rows = []
    for (start, end, _), record in zip(spans, info["chunks"], strict=True):
        row = {"chunk_idx": record.get("chunk_idx"), "start": start, "end": end, "chunk": record["chunk"],
               "tag": (record.get("function_tags") or [None])[0], "function_tags": record.get("function_tags", []),
               "depends_on": record.get("depends_on", [])}
        row.update({name: record.get(name, math.nan) for name in IMPORTANCE_FIELDS})
        row["summary"] = record.get("summary", "")
        rows.append(row)
    return pd.DataFrame(rows)


class ChunkTags:
    """A labeller (the `(text, index, count) -> label` protocol) giving chunk `index` its Thought Anchors
    tag: `trace.segments("thought_anchors", labeller=thought_anchors.tags(trace))`."""

    def __init__(self, records: Sequence[dict]):
        self.tags = [(r.get("function_tags") or ["unknown"])[0] for r in records]

    def __call__(self, text: str, index: int, count: int) -> str:
        if count != len(self.tags):
            raise ValueError(f"these tags are for {len(self.tags)} chunks, the text has {count}: label the "
                             "trace the tags came from, cut by kind='thought_anchors'")
        return self.tags[index]

    def __repr__(self) -> str:
        return f"ChunkTags({len(self.tags)} chunks)"


def tags(trace: Trace) -> ChunkTags:
    """The labeller holding the trace's Thought Anchors tags."""
    return ChunkTags(_info(trace)["chunks"])


def chunk_records(trace: Trace, *, labeller: Callable[[str, int, int], str] | None = None,
                  values: Mapping[str, Sequence[float]] | None = None) -> list[dict]:
    """chunks_labeled.json records for `trace`, cut by Thought Anchors' rule.

    labeller: gives each chunk's `function_tags` (default: the trace's own Thought Anchors tags when it
        has them, else `segment.RuleLabeller`).
    values: per-chunk numbers to write, by field name (e.g. {"counterfactual_importance_kl": [...]} or any
        name of your own); one value per chunk. A trace read from Thought Anchors keeps its own fields
        (importances, depends_on, summary) where `values` does not replace them.
    """
    if not isinstance(trace, Trace):
        raise TypeError(f"trace={show(trace)} ({type(trace).__name__}) is not accepted: a Trace is")
    if labeller is not None and not callable(labeller):
        raise TypeError(f"labeller={show(labeller)} is not accepted: a callable (text, index, count) -> label is")
    spans = thought_anchors_spans(trace.text)
    values = dict(values or {})
    for name, column in values.items():
        if not isinstance(name, str):
            raise TypeError(f"values: key {show(name)} is not a field name (a string)")
        if len(column) != len(spans):
            raise ValueError(f"values[{name!r}] has {len(column)} entries: the trace has {len(spans)} chunks, one "
                             "value per chunk is accepted")
    own = trace.meta.get(_KEY, {}).get("chunks")
    if own is not None and len(own) != len(spans):
        own = None
    if labeller is None:
        labeller = ChunkTags(own) if own is not None else DEFAULT_LABELLER
    records = []
    for i, (_, _, chunk) in enumerate(spans):
        record = dict(own[i]) if own is not None else {"chunk": chunk, "chunk_idx": i, "function_tags": [],
                                                       "depends_on": []}
        record["function_tags"] = [labeller(chunk, i, len(spans))]
        for name, column in values.items():
            value = column[i]
            record[name] = float(value) if isinstance(value, int | float | torch.Tensor) else value
        records.append(record)
    return records


def write(trace: Trace, folder: str | Path, *, labeller=None, values: Mapping[str, Sequence[float]] | None = None,
          problem: Mapping | None = None, overwrite: bool = False) -> Path:
    """Write `trace` as a Thought Anchors problem folder: problem.json, base_solution.json and
    chunks_labeled.json (`chunk_records(trace, labeller=..., values=...)`).

    problem: problem.json's fields (default: the trace's own, when read from Thought Anchors; else the
        prompt as `problem` and the trace's final answer as `gt_answer` unknown: "").
    Everything is checked and built before the folder is written; an existing folder is refused unless
    overwrite=True.
    """
    folder = check_path("folder", folder)
    records = chunk_records(trace, labeller=labeller, values=values)
    info = trace.meta.get(_KEY, {})
    if problem is not None and not isinstance(problem, Mapping):
        raise TypeError(f"problem={show(problem)} is not accepted: a mapping of problem.json's fields is")
    problem = dict(problem) if problem is not None else dict(info.get("problem") or {
        "problem": trace.prompt_display, "level": "", "type": "", "gt_solution": "", "gt_answer": "",
        "nickname": ""})
    base = dict(info.get("base_solution") or {"prompt": trace.prompt_display, "answer": trace.final_answer or "",
                                              "is_correct": trace.meta.get("correct", "")})
    base["solution"] = trace.text
    base.setdefault("full_cot", base.get("prompt", "") + trace.text)
    ordered = {k: base[k] for k in ("prompt", "solution", "full_cot", "answer", "is_correct") if k in base}
    ordered.update({k: v for k, v in base.items() if k not in ordered})
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"folder={str(folder)!r} exists and is not empty: pass overwrite=True to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in (("problem.json", problem), ("base_solution.json", ordered),
                          ("chunks_labeled.json", records)):
        tmp = folder / (name + ".tmp")
        tmp.write_text(json.dumps(content, indent=2, ensure_ascii=False))
        tmp.replace(folder / name)
    return folder
