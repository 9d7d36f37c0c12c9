"""The resumable benchmark runner: every graded sample is appended to `DIR/samples.jsonl` and
flushed to disk as soon as it is done; a run started again with the same `DIR` skips what is
there (a line cut short by a kill is dropped and redone), and refuses different settings.

Files in DIR: `run.json` (settings), `samples.jsonl` (one graded sample per line),
`traces/<problem>__<k>/` (each sample's Trace), `summary.json` (metrics, rewritten at the end).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from mimo_lab.bench.failures import classify
from mimo_lab.bench.grade import grade
from mimo_lab.bench.metrics import per_problem, summarize
from mimo_lab.bench.suites import Suite, load_suite
from mimo_lab.trace import Trace

BACKENDS = ("transformers", "vllm")


def sample_seed(seed: int, problem_id: str, index: int) -> int:
    """The seed of sample `index` of a problem: fixed by (run seed, problem, index), not by batching."""
    digest = hashlib.sha256(f"{seed}:{problem_id}:{index}".encode()).hexdigest()
    return int(digest[:8], 16) % (2**31)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:120]


class Run:
    """A benchmark run on disk: `frame` (one row per graded sample), `summary`, `trace(...)`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not (self.folder / "run.json").is_file():
            raise FileNotFoundError(f"{self.folder} holds no benchmark run (no run.json)")
        self.settings = json.loads((self.folder / "run.json").read_text())

    def __repr__(self) -> str:
        s = self.summary
        return (f"Run({self.settings['model']!r} on {self.settings['suite']!r}: {s.get('samples', 0)} samples, "
                f"pass@1 {s.get('pass@1', float('nan')):.3f})")

    @property
    def records(self) -> list[dict]:
        return read_samples(self.folder / "samples.jsonl")

    @property
    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.records)
        if frame.empty:
            return frame
        meta = pd.json_normalize(frame["meta"]).add_prefix("meta.") if "meta" in frame else None
        return pd.concat([frame.drop(columns=["meta"]), meta], axis=1) if meta is not None else frame

    @property
    def summary(self) -> dict:
        path = self.folder / "summary.json"
        if path.is_file():
            return json.loads(path.read_text())
        return summarize(pd.DataFrame(self.records), self.settings["samples"]) if self.records else {}

    def per_problem(self) -> pd.DataFrame:
        return per_problem(pd.DataFrame(self.records))

    def trace(self, problem_id: str, sample_index: int = 0) -> Trace:
        """The Trace of one sample (saved by the run)."""
        folder = self.folder / "traces" / f"{_safe(problem_id)}__{sample_index}"
        if not folder.is_dir():
            raise KeyError(f"no saved trace for problem {problem_id!r} sample {sample_index} in {self.folder}")
        return Trace.load(folder)

    def explore(self):
        from mimo_lab.bench.explore import Explorer

        return Explorer(self)


def read_samples(path: Path) -> list[dict]:
    """The complete lines of samples.jsonl; a last line cut short by a kill is dropped (and the file
    truncated to the last complete line, so appending continues cleanly)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    records, good_end, start = [], 0, 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            break  # no newline: an interrupted write
        line = data[start:end].strip()
        if line:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
        good_end = start = end + 1
    if good_end < len(data):
        with path.open("r+b") as f:
            f.truncate(good_end)
    return records


def _settings(lab, suite: Suite, samples: int, seed: int, sampling: dict, backend: str) -> dict:
    ids = [p.id for p in suite.problems]
    return {"model": lab.name, "revision": lab.revision, "suite": suite.name, "problems": len(ids),
            "problem_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(), "samples": samples,
            "seed": seed, "sampling": sampling, "backend": backend}


def _check_resume(folder: Path, settings: dict) -> None:
    path = folder / "run.json"
    if not path.is_file():
        return
    before = json.loads(path.read_text())
    changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
    if changed:
        details = "; ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"{folder} holds a run with other settings ({details}). Resume with the same settings, "
                         "or give a new --out")


def run(lab, suite: Suite | str, *, samples: int = 1, out: str | Path | None = None, seed: int = 0,
        batch_size: int = 16, limit: int | None = None, save_traces: bool = True, progress: bool = True,
        backend: str = "transformers", **sampling) -> Run:
    """Generate `samples` samples per problem, grade and classify each, append each to DIR/samples.jsonl.

    sampling: temperature, top_p, top_k, max_new_tokens, greedy (defaults: the model card's).
    Started again with the same `out`, it resumes: nothing finished is lost, duplicated or redone.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples {samples!r} is not allowed: use an integer >= 1")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed {seed!r} is not allowed: use a non-negative integer")
    suite = load_suite(suite, limit=limit) if isinstance(suite, str) else suite.limit(limit)
    sampling.setdefault("greedy", False)  # k samples per problem: sample unless told otherwise
    resolved = lab._sampling(sampling).as_dict()  # validates before any work
    generate = _backend(lab, backend)
    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix=f"mimo-lab-{suite.name}-"))
    settings = _settings(lab, suite, samples, seed, resolved, backend)
    _check_resume(folder, settings)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps(settings, indent=1))
    samples_path = folder / "samples.jsonl"
    done = {(r["problem_id"], r["sample_index"]) for r in read_samples(samples_path)}
    pending = [(p, k) for p in suite.problems for k in range(samples) if (p.id, k) not in done]

    bar = tqdm(total=len(suite.problems) * samples, initial=len(done), desc=f"{suite.name} · {lab.name}",
               disable=not progress)
    with samples_path.open("a") as sink:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            prompts = [suite.prompt(p) for p, _ in batch]
            seeds = [sample_seed(seed, p.id, k) for p, k in batch]
            traces = generate(prompts, seeds, sampling)
            for (problem, index), trace, sample_seed_value in zip(batch, traces, seeds, strict=True):
                record = _grade_record(problem, index, trace, sample_seed_value)
                if save_traces:
                    trace.save(folder / "traces" / f"{_safe(problem.id)}__{index}")
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                sink.flush()
                os.fsync(sink.fileno())
                bar.update(1)
    bar.close()
    records = read_samples(samples_path)
    summary = summarize(pd.DataFrame(records), samples)
    summary["settings"] = settings
    tmp = folder / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(folder / "summary.json")
    return Run(folder)


def _grade_record(problem, index: int, trace: Trace, seed: int) -> dict:
    verdict = grade(trace.answer, problem)
    category, evidence = classify(correct=verdict.correct, extracted=verdict.extracted, rule=verdict.rule,
                                  finish_reason=trace.finish_reason, closed_thinking=trace.closed_thinking,
                                  uses_think_tags=trace.opened_thinking,
                                  token_ids=trace.token_ids, grader_error=verdict.error, token_texts=trace.token_texts)
    return {
        "problem_id": problem.id, "sample_index": index, "seed": seed, "category": category,
        "correct": verdict.correct, "extracted_answer": verdict.extracted, "extraction_rule": verdict.rule,
        "reference_answer": problem.answer, "num_tokens": len(trace), "finish_reason": trace.finish_reason,
        "thinking_chars": len(trace.thinking), "evidence": evidence, "grader_error": verdict.error,
        "meta": problem.meta, "prompt": trace.prompt, "answer": trace.answer[-500:],
        "mean_entropy": float(trace.entropies.mean()) if len(trace) else None,
    }


def _backend(lab, backend: str):
    if backend == "vllm":
        from mimo_lab.bench.vllm_backend import vllm_generator

        return vllm_generator(lab)

    def generate(prompts, seeds, sampling):
        return lab.generate(prompts, seed=seeds, batch_size=len(prompts), mtp=False, **sampling)

    return generate
