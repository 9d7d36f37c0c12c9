"""Bad input to every public bench function: the exception type, and the argument named in the message.

Wrong type -> TypeError, wrong value (out of range, empty) -> ValueError, missing file -> FileNotFoundError;
nothing is written before the checks pass.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mimo_lab import cli
from mimo_lab.answer import extract_answer
from mimo_lab.bench import BenchProblem, Run, Suite, classify, compare_runs, grade, load_suite, nano_suite, run
from mimo_lab.bench.compare import mcnemar_exact
from mimo_lab.bench.failures import find_tail_loop
from mimo_lab.bench.grade import equivalent
from mimo_lab.bench.metrics import bootstrap_interval, pass_at_k, per_problem, summarize
from mimo_lab.bench.suites import from_records
from mimo_lab.widgets import FailureExplorer

PROBLEM = BenchProblem("p1", "What is 1 + 1?", "2")
GOOD = {"question": "What is 1 + 1?", "answer": "2"}


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("suite") / "tiny.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({"question": "What is 2 + 2?", "answer": "4"}) + "\n")
    return path


@pytest.fixture(scope="module")
def small_run(nano, tmp_path_factory):
    return run(nano, "nano", limit=2, out=tmp_path_factory.mktemp("run") / "r", max_new_tokens=4, progress=False)


@pytest.fixture(scope="module")
def empty_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("empty") / "r"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"model": "m", "suite": "s", "samples": 1}))
    return Run(folder)


# ----------------------------------------------------------------------------- bench.run
@pytest.mark.parametrize("kwargs, error, name", [
    ({"samples": 0}, ValueError, "samples"),
    ({"samples": 1.5}, TypeError, "samples"),
    ({"samples": "2"}, TypeError, "samples"),
    ({"samples": True}, TypeError, "samples"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": 2.0}, TypeError, "batch_size"),
    ({"seed": -1}, ValueError, "seed"),
    ({"seed": 2**70}, ValueError, "seed"),
    ({"seed": 1.5}, TypeError, "seed"),
    ({"limit": 0}, ValueError, "limit"),
    ({"limit": "3"}, TypeError, "limit"),
    ({"select": "random"}, ValueError, "select"),
    ({"backend": "tgi"}, ValueError, "backend"),
    ({"backend": 5}, TypeError, "backend"),
    ({"save_traces": "yes"}, TypeError, "save_traces"),
    ({"progress": 1}, TypeError, "progress"),
    ({"out": 5}, TypeError, "out"),
    ({"out": ""}, ValueError, "out"),
    ({"temperature": -1.0}, ValueError, "temperature"),
    ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
    ({"nucleus": 0.9}, TypeError, "nucleus"),
])
def test_run_refuses_bad_arguments_before_writing(nano, suite_file, tmp_path, kwargs, error, name):
    with pytest.raises(error, match=name):
        run(nano, str(suite_file), **{"out": tmp_path / "out", "progress": False, **kwargs})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("suite, error, match", [
    (5, TypeError, "suite"),
    ("mmlu", ValueError, "unknown suite 'mmlu'"),
    ("missing.jsonl", FileNotFoundError, "missing.jsonl"),
])
def test_run_refuses_bad_suites(nano, tmp_path, suite, error, match):
    with pytest.raises(error, match=match):
        run(nano, suite, out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_run_refuses_what_is_not_a_lab(suite_file, tmp_path):
    with pytest.raises(TypeError, match="lab=str"):
        run("XiaomiMiMo/MiMo-7B-RL", str(suite_file), out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_run_refuses_a_suite_with_duplicate_ids(nano, tmp_path):
    suite = Suite("dups", [PROBLEM, BenchProblem("p1", "again?", "3")])
    with pytest.raises(ValueError, match="duplicate problem id.*'p1'"):
        run(nano, suite, out=tmp_path / "out", progress=False)
    clash = Suite("clash", [BenchProblem("a/b", "q", "1"), BenchProblem("a_b", "q", "2")])
    with pytest.raises(ValueError, match="'a/b' and 'a_b'"):
        run(nano, clash, out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- Run, its trace, explorer, compare
def test_run_folder_errors(tmp_path, small_run, empty_run):
    with pytest.raises(TypeError, match="folder"):
        Run(5)
    with pytest.raises(FileNotFoundError, match="no run.json"):
        Run(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match="run.json"):
        Run(tmp_path)
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(ValueError, match="'model'"):
        Run(tmp_path)
    with pytest.raises(TypeError, match="problem_id"):
        small_run.trace(5)
    with pytest.raises(ValueError, match="problem_id"):
        small_run.trace("")
    with pytest.raises(ValueError, match="sample_index"):
        small_run.trace(small_run.records[0]["problem_id"], -1)
    with pytest.raises(TypeError, match="sample_index"):
        small_run.trace(small_run.records[0]["problem_id"], 1.0)
    with pytest.raises(FileNotFoundError, match="problem_id='nope'"):
        small_run.trace("nope")
    assert empty_run.per_problem().empty and empty_run.records == []


def test_explorers_and_comparison(small_run, empty_run, tmp_path):
    with pytest.raises(ValueError, match="no graded samples"):
        empty_run.explore()
    with pytest.raises(ValueError, match="no graded samples"):
        FailureExplorer(empty_run)
    with pytest.raises(TypeError, match="run"):
        FailureExplorer("runs/x")
    explorer = small_run.explore()
    with pytest.raises(ValueError, match="category 'nope'"):
        explorer.failures("nope")
    with pytest.raises(ValueError, match="'nope' to group by"):
        explorer.accuracy("nope")
    with pytest.raises(FileNotFoundError, match="b=.*not a benchmark run folder"):
        compare_runs(small_run, str(tmp_path))
    with pytest.raises(TypeError, match="a="):
        compare_runs(5, small_run)
    with pytest.raises(ValueError, match="no graded samples"):
        compare_runs(small_run, empty_run)


# ----------------------------------------------------------------------------- suites
@pytest.mark.parametrize("kwargs, error, name", [
    ({"name_or_path": 5}, TypeError, "name_or_path"),
    ({"name_or_path": ""}, ValueError, "name_or_path"),
    ({"name_or_path": "nano", "limit": 0}, ValueError, "limit"),
    ({"name_or_path": "nano", "limit": 2.5}, TypeError, "limit"),
    ({"name_or_path": "nano", "per_cell": 0}, ValueError, "per_cell"),
    ({"name_or_path": "nano", "per_cell": "3"}, TypeError, "per_cell"),
    ({"name_or_path": "nano", "select": "random"}, ValueError, "select"),
    ({"name_or_path": "nope/missing.jsonl"}, FileNotFoundError, "missing.jsonl"),
    ({"name_or_path": "problems.txt"}, ValueError, "problems.txt"),
])
def test_load_suite_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        load_suite(**kwargs)


@pytest.mark.parametrize("content, suffix, match", [
    ('{"question": "q", "answer": "1"}\n{"question": "r", "answ\n', ".jsonl", r"line 2 is not valid JSON"),
    ('[1, 2]\n', ".jsonl", r"line 1 is a list"),
    ('{"question": "q"', ".json", r"not valid JSON"),
    ("not parquet at all", ".parquet", r"could not be read as parquet"),
    ('{"question": "q", "answer": "1"}\n{"question": "r", "answer": null}\n', ".jsonl",
     r"line 2 has an empty 'answer'"),
    ('{"question": "q", "answer": "1"}\n{"question": "r"}\n', ".jsonl", r"line 2 has no 'answer'"),
    ('{"foo": 1}\n', ".jsonl", r"unrecognised columns"),
    ("", ".jsonl", r"no rows"),
])
def test_load_suite_corrupt_files(tmp_path, content, suffix, match):
    path = tmp_path / f"suite{suffix}"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        load_suite(str(path))
    assert "suite" in str(info.value)  # the file (or suite) is named


def test_load_suite_folder(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        load_suite(str(tmp_path))


@pytest.mark.parametrize("kwargs, error, name", [
    ({"per_cell": 0}, ValueError, "per_cell"),
    ({"per_cell": 1.5}, TypeError, "per_cell"),
    ({"levels": (9,)}, ValueError, "levels"),
    ({"levels": ()}, ValueError, "levels"),
    ({"families": ("algebra",)}, ValueError, "families"),
    ({"seed": -1}, ValueError, "seed"),
])
def test_nano_suite_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        nano_suite(**kwargs)


@pytest.mark.parametrize("args, error, name", [
    ((0,), ValueError, "limit"), (("3",), TypeError, "limit"), ((2, "random"), ValueError, "select"),
    ((2, "stratified", -1), ValueError, "seed"),
])
def test_suite_limit_bad_arguments(args, error, name):
    with pytest.raises(error, match=name):
        nano_suite(per_cell=1).limit(*args)


@pytest.mark.parametrize("kwargs, error, name", [
    ({"answer": ""}, ValueError, "answer"),
    ({"answer": " "}, ValueError, "answer"),
    ({"answer": None}, TypeError, "answer"),
    ({"answer": 2}, TypeError, "answer"),
    ({"id": ""}, ValueError, "id"),
    ({"question": None}, TypeError, "question"),
    ({"answer_type": "fuzzy"}, ValueError, "answer_type"),
    ({"meta": [1]}, TypeError, "meta"),
])
def test_bench_problem_bad_fields(kwargs, error, name):
    with pytest.raises(error, match=name):
        BenchProblem(**{"id": "p", "question": "q", "answer": "1", **kwargs})


def test_suite_and_records_bad_input():
    with pytest.raises(TypeError, match="problems"):
        Suite("s", ["not a problem"])
    with pytest.raises(TypeError, match="name"):
        Suite(5, [])
    with pytest.raises(TypeError, match="records"):
        from_records("s", "rows")
    with pytest.raises(ValueError, match="no rows"):
        from_records("s", [])
    with pytest.raises(ValueError, match=r"suite 's' row 2 has an empty 'answer' \(nan\)"):
        from_records("s", [GOOD, {"question": "q", "answer": float("nan")}])


# ----------------------------------------------------------------------------- grading, classes, metrics
@pytest.mark.parametrize("call, error, name", [
    (lambda: grade(5, PROBLEM), TypeError, "answer_text"),
    (lambda: grade(None, PROBLEM), TypeError, "answer_text"),
    (lambda: grade("\\boxed{2}", "2"), TypeError, "problem"),
    (lambda: grade("\\boxed{2}", PROBLEM, timeout=0), ValueError, "timeout"),
    (lambda: equivalent(None, "2"), TypeError, "answer"),
    (lambda: equivalent("2", ""), ValueError, "reference"),
    (lambda: equivalent("2", 2), TypeError, "reference"),
    (lambda: equivalent("2", "2", "fuzzy"), ValueError, "answer_type"),
    (lambda: equivalent("2", "2", timeout=1.5), TypeError, "timeout"),
    (lambda: extract_answer(5), TypeError, "text"),
    (lambda: extract_answer(None), TypeError, "text"),
])
def test_grading_bad_arguments(call, error, name):
    with pytest.raises(error, match=name):
        call()


CLASSIFY = dict(correct=False, extracted="5", rule="boxed", finish_reason="stop", closed_thinking=True,
                uses_think_tags=True, token_ids=list(range(10)))


@pytest.mark.parametrize("changes, error, name", [
    ({"finish_reason": "done"}, ValueError, "finish_reason"),
    ({"finish_reason": None}, TypeError, "finish_reason"),
    ({"correct": "yes"}, TypeError, "correct"),
    ({"closed_thinking": 1}, TypeError, "closed_thinking"),
    ({"uses_think_tags": None}, TypeError, "uses_think_tags"),
    ({"extracted": 5}, TypeError, "extracted"),
    ({"rule": 5}, TypeError, "rule"),
])
def test_classify_bad_arguments(changes, error, name):
    with pytest.raises(error, match=name):
        classify(**{**CLASSIFY, **changes})


@pytest.mark.parametrize("call, error, name", [
    (lambda: find_tail_loop([1, 2, 3], max_period=0), ValueError, "max_period"),
    (lambda: find_tail_loop([1, 2, 3], min_tokens=1.5), TypeError, "min_tokens"),
    (lambda: pass_at_k(0, 0, 1), ValueError, "n"),
    (lambda: pass_at_k(1.5, 1, 1), TypeError, "n"),
    (lambda: pass_at_k(3, 4, 1), ValueError, "c=4"),
    (lambda: pass_at_k(3, 1, 4), ValueError, "k=4"),
    (lambda: bootstrap_interval([1, 0], iterations=0), ValueError, "iterations"),
    (lambda: bootstrap_interval([1, 0], level=1.5), ValueError, "level"),
    (lambda: bootstrap_interval([1, 0], level="95%"), TypeError, "level"),
    (lambda: summarize(pd.DataFrame(), samples=0), ValueError, "samples"),
    (lambda: summarize([], samples=1), TypeError, "frame"),
    (lambda: per_problem([]), TypeError, "frame"),
    (lambda: per_problem(pd.DataFrame({"x": [1]})), ValueError, "problem_id"),
    (lambda: mcnemar_exact(-1, 2), ValueError, "b"),
    (lambda: mcnemar_exact(1, 1.5), TypeError, "c"),
])
def test_metrics_bad_arguments(call, error, name):
    with pytest.raises(error, match=name):
        call()


# ----------------------------------------------------------------------------- the CLI: one line, exit 2
@pytest.mark.parametrize("extra, name", [
    (["--batch-size", "0"], "batch_size"), (["--samples", "0"], "samples"), (["--limit", "0"], "limit"),
    (["--suite", "missing.jsonl"], "missing.jsonl"), (["--temperature", "-1"], "temperature"),
])
def test_cli_bench_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, name):
    code = cli.main(["bench", "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("mimo-lab: error:") and name in err[-1]
    assert not (tmp_path / "o").exists()
