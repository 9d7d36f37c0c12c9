"""The runner: JSONL per sample, summary, crash-safety under kill -9, resume, refused settings, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from suite_files import write_all

import mimo_lab
from mimo_lab.bench import Run, compare_runs, run
from mimo_lab.bench.run import read_samples
from mimo_lab.nano import tasks

REQUIRED = {"problem_id", "sample_index", "category", "extracted_answer", "reference_answer", "num_tokens"}


@pytest.fixture(scope="module")
def lab(mimo_checkpoint):
    return mimo_lab.load(mimo_checkpoint)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("suites"))


def test_run_writes_graded_samples_and_summary(lab, files, tmp_path):
    result = run(lab, str(files["aime24"]), samples=2, out=tmp_path / "r", max_new_tokens=16, progress=False)
    records = [json.loads(line) for line in (tmp_path / "r" / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(REQUIRED <= set(r) for r in records)
    assert {(r["problem_id"], r["sample_index"]) for r in records} == {("60", 0), ("60", 1), ("61", 0), ("61", 1)}
    assert records[0]["reference_answer"] == "24"
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    for key in ("pass@1", "avg@2", "pass@2", "maj@2", "pass@1_ci95", "categories"):
        assert key in summary
    assert sum(summary["categories"].values()) == 4
    trace = result.trace("60", 1)
    assert trace.seed == records[1]["seed"] and len(trace) == records[1]["num_tokens"]
    again = Run(tmp_path / "r")
    assert len(again.frame) == 4 and "problem_id" in again.per_problem().index.name


def test_seeds_do_not_depend_on_batching(lab, files, tmp_path):
    a = run(lab, str(files["aime25"]), samples=2, out=tmp_path / "a", max_new_tokens=12, batch_size=1, progress=False)
    b = run(lab, str(files["aime25"]), samples=2, out=tmp_path / "b", max_new_tokens=12, batch_size=4, progress=False)
    key = ["problem_id", "sample_index"]
    fa, fb = a.frame.sort_values(key), b.frame.sort_values(key)
    assert fa["seed"].tolist() == fb["seed"].tolist()
    assert fa["answer"].tolist() == fb["answer"].tolist()
    via_lab = lab.bench(str(files["aime25"]), samples=2, out=tmp_path / "c", max_new_tokens=12, progress=False)
    assert via_lab.frame.sort_values(key)["answer"].tolist() == fa["answer"].tolist()  # lab.bench = bench.run
    comparison = compare_runs(a, b)
    assert comparison.summary()["paired_samples"] == 4 and comparison.mcnemar["p_value"] == 1.0
    # the result protocol: every result has .to_frame() (and .plot())
    pd.testing.assert_frame_equal(comparison.to_frame(), comparison.per_problem)
    pd.testing.assert_frame_equal(a.to_frame(), a.frame)
    trace = a.trace(a.frame["problem_id"].iloc[0], 0)
    frame = trace.to_frame()
    assert list(frame.index) == list(trace.positions) and frame["text"].tolist() == trace.token_texts


def test_resume_refuses_other_settings(lab, files, tmp_path):
    run(lab, str(files["aime25"]), samples=1, out=tmp_path / "r", max_new_tokens=8, progress=False)
    with pytest.raises(ValueError, match="samples: was 1, now 2"):
        run(lab, str(files["aime25"]), samples=2, out=tmp_path / "r", max_new_tokens=8, progress=False)
    with pytest.raises(ValueError, match="sampling"):
        run(lab, str(files["aime25"]), samples=1, out=tmp_path / "r", max_new_tokens=9, progress=False)


def test_a_cut_line_is_left_by_readers_and_dropped_by_the_resuming_writer(lab, files, tmp_path):
    out = tmp_path / "r"
    run(lab, str(files["gsm8k"]), samples=2, out=out, max_new_tokens=8, progress=False)
    path = out / "samples.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + lines[2][:25])  # a kill in the middle of writing line 3
    cut = path.read_bytes()
    assert len(read_samples(path)) == 2 and len(Run(out).frame) == 2
    assert path.read_bytes() == cut  # reading changed nothing
    run(lab, str(files["gsm8k"]), samples=2, out=out, max_new_tokens=8, progress=False)
    final = path.read_text().splitlines(keepends=True)
    assert final[:2] == lines[:2] and len(final) == 4
    assert not list(out.glob("*.tmp"))

    def key(line):  # the redone samples are the same (seeded); float analytics may differ in the last bits
        r = json.loads(line)
        return (r["problem_id"], r["sample_index"], r["seed"], r["answer"], r["category"], r["num_tokens"])

    assert sorted(map(key, final)) == sorted(map(key, lines))


def test_a_bad_line_in_the_middle_is_skipped_reported_and_kept(lab, files, tmp_path):
    out = tmp_path / "r"
    run(lab, str(files["gsm8k"]), samples=2, out=out, max_new_tokens=8, progress=False)
    path = out / "samples.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + '{"problem_id": "0", "sampl\n' + "".join(lines[2:]))  # line 2 broken
    before, stat = path.read_bytes(), path.stat()
    with pytest.warns(UserWarning, match=r"samples\.jsonl line 2 skipped"):
        records = read_samples(path)
    assert [(r["problem_id"], r["sample_index"]) for r in records] == [("0", 0), ("1", 0), ("1", 1)]
    with pytest.warns(UserWarning, match="line 2"):
        assert len(Run(out).frame) == 3 and len(Run(out).per_problem()) == 2
    assert path.read_bytes() == before and path.stat().st_mtime_ns == stat.st_mtime_ns
    # the writer resuming redoes the unreadable sample and leaves the bad line where it is
    with pytest.warns(UserWarning, match="line 2"):
        run(lab, str(files["gsm8k"]), samples=2, out=out, max_new_tokens=8, progress=False)
    after = path.read_text().splitlines(keepends=True)
    assert after[:4] == before.decode().splitlines(keepends=True) and len(after) == 5
    assert json.loads(after[4])["sample_index"] == 1 and json.loads(after[4])["problem_id"] == "0"


WRITER = r"""
import json, os, sys
path, n = sys.argv[1], int(sys.argv[2])
with open(path, "a") as f:
    for i in range(n):
        line = json.dumps({"problem_id": f"p{i}", "sample_index": 0, "pad": "x" * 40}) + "\n"
        for part in (line[:20], line[20:]):
            f.write(part)
            f.flush()
            os.fsync(f.fileno())
            print("written", flush=True)
            sys.stdin.readline()
    f.write('{"problem_id": "torn", "sam')
    f.flush()
    print("written", flush=True)
    sys.stdin.readline()
"""


def test_live_reader_never_changes_the_file_and_kill_9_loses_no_flushed_record(tmp_path):
    path, n = tmp_path / "samples.jsonl", 4
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(n)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        for step in range(2 * n + 1):  # the writer stops after every half line; the reader polls each time
            assert writer.stdout.readline() == "written\n"
            before, stat = path.read_bytes(), path.stat()
            records = read_samples(path)
            assert [r["problem_id"] for r in records] == [f"p{i}" for i in range((step + 1) // 2)]
            assert path.read_bytes() == before and path.stat().st_mtime_ns == stat.st_mtime_ns
            if step < 2 * n:
                writer.stdin.write("\n")
                writer.stdin.flush()
    finally:
        os.kill(writer.pid, signal.SIGKILL)  # mid-line, as a crash would
        writer.wait()
    expected = [{"problem_id": f"p{i}", "sample_index": 0, "pad": "x" * 40} for i in range(n)]
    assert read_samples(path) == expected
    assert path.read_bytes().endswith(b'{"problem_id": "torn", "sam')  # still there: only a writer repairs
    from mimo_lab.bench.run import repair_torn_tail

    assert repair_torn_tail(path) and path.read_bytes().endswith(b"\n") and read_samples(path) == expected
    assert not repair_torn_tail(path)  # nothing left to repair


def test_kill_9_then_resume_loses_and_duplicates_nothing(mimo_checkpoint, files, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mimo_lab.cli", "bench", "--model", str(mimo_checkpoint), "--suite",
           str(files["math500"]), "--samples", "3", "--out", str(out), "--max-new-tokens", "40", "--batch-size", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = out / "samples.jsonl"
    deadline = time.time() + 120
    seen: list[dict] = []  # a live reader polling while the run writes
    while time.time() < deadline and len(seen) < 3:
        seen = max(seen, read_samples(samples), key=len)
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_samples(samples)
    assert 3 <= len(before) < 9, "the kill should land mid-run"
    assert before[: len(seen)] == seen  # every record the reader saw survived the kill and the reads
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    after = read_samples(samples)
    keys = [(r["problem_id"], r["sample_index"]) for r in after]
    assert len(keys) == 9 and len(set(keys)) == 9
    assert after[: len(before)] == before  # finished samples kept as they were, not regenerated
    assert json.loads((out / "summary.json").read_text())["samples"] == 9


def test_bad_arguments(lab, files, tmp_path):
    with pytest.raises(ValueError, match="samples=0"):
        run(lab, str(files["aime25"]), samples=0, out=tmp_path / "x")
    with pytest.raises(ValueError, match="backend='tgi'"):
        run(lab, str(files["aime25"]), backend="tgi", out=tmp_path / "x")
    with pytest.raises(ValueError, match="temperature"):
        run(lab, str(files["aime25"]), temperature=-1, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()  # refused before any work


def test_cli_defaults_to_nano(tmp_path, monkeypatch):
    from mimo_lab import cli

    seen = {}

    def fake_run(lab, suite, **kwargs):
        seen.update(model=lab.name, suite=suite, **kwargs)
        raise SystemExit(0)

    monkeypatch.setattr("mimo_lab.bench.run", fake_run)
    with pytest.raises(SystemExit):
        cli.main(["bench", "--out", str(tmp_path / "o"), "--limit", "3", "--samples", "2"])
    assert seen["model"] == "MiMo-nano" and seen["suite"].name == "nano" and len(seen["suite"]) == 3
    assert seen["samples"] == 2 and seen["limit"] == 3
    with pytest.raises(SystemExit):
        cli.main(["bench", "--model", "nano", "--out", str(tmp_path / "o")])
    assert seen["model"] == "MiMo-nano"
    assert seen["select"] == "stratified"
    with pytest.raises(SystemExit):
        cli.main(["bench", "--out", str(tmp_path / "o"), "--limit", "3", "--select", "head"])
    assert seen["select"] == "head" and seen["limit"] == 3


def test_cli_bad_suite_row_is_one_line_and_exit_2(tmp_path, capsys):
    from mimo_lab import cli

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?"}\n')
    assert cli.main(["bench", "--suite", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.jsonl line 2" in err and "'answer'" in err
    assert cli.main(["bench", "--suite", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err and not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- one set of defaults per model (C15)
def test_samples_1_uses_the_cards_default_decoding_more_use_its_recommended_sampling(nano, tmp_path):
    card = nano.card
    assert card.greedy  # MiMo-nano decodes greedily by default
    one = run(nano, "nano", samples=1, limit=2, out=tmp_path / "one", max_new_tokens=6, progress=False)
    assert one.settings["sampling"]["greedy"] is True
    assert one.settings["decoding"] == "card default decoding; given: max_new_tokens"
    assert all(r["sampling"]["greedy"] is True for r in one.records)
    several = run(nano, "nano", samples=2, limit=2, out=tmp_path / "two", max_new_tokens=6, progress=False)
    used = several.settings["sampling"]
    assert (used["greedy"], used["temperature"], used["top_p"], used["top_k"]) == \
        (False, card.temperature, card.top_p, card.top_k)
    assert several.settings["decoding"].startswith("card recommended sampling")
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["settings"]["sampling"] == used
    assert all(r["sampling"] == used for r in several.records)
    assert set(several.frame["sampling.greedy"]) == {False}
    told = run(nano, "nano", samples=2, limit=1, out=tmp_path / "told", max_new_tokens=6, greedy=True,
               progress=False)
    assert told.settings["sampling"]["greedy"] is True  # told otherwise


# ----------------------------------------------------------------------------- --limit: stratified selection (C16)
def test_limit_is_stratified_and_recorded(nano, files, tmp_path):
    from mimo_lab.bench import load_suite

    chosen = load_suite("nano", limit=12)
    cells = [(p.meta["family"], p.meta["level"]) for p in chosen.problems]
    assert len(set(cells)) == 12 and {f for f, _ in cells} == set(tasks.FAMILIES)
    assert {lvl for _, lvl in cells} == {1, 2, 3, 4, 5}
    assert [p.id for p in load_suite("nano", limit=12).problems] == [p.id for p in chosen.problems]  # seeded
    head = load_suite("nano", limit=12, select="head")
    assert {p.meta["family"] for p in head.problems} == {"addition"}  # file order: one family only
    everything = load_suite("nano")
    assert head.problems == everything.problems[:12]
    # 30 cells x 10: limit 60 takes exactly 2 per cell
    per_cell = Counter((p.meta["family"], p.meta["level"]) for p in load_suite("nano", limit=60).problems)
    assert set(per_cell.values()) == {2} and len(per_cell) == 30
    result = run(nano, "nano", limit=3, out=tmp_path / "r", max_new_tokens=4, progress=False)
    assert result.settings["selection"] == {"limit": 3, "select": "stratified", "seed": 0}
    with pytest.raises(ValueError, match="selection"):
        run(nano, "nano", limit=3, select="head", out=tmp_path / "r", max_new_tokens=4, progress=False)


REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "benchmarks"


@pytest.mark.skipif(not (REAL / "math500_test.jsonl").is_file(), reason="../shared/data not here")
def test_limit_on_math500_spreads_over_subjects_and_levels():
    from mimo_lab.bench import load_suite

    chosen = load_suite(str(REAL / "math500_test.jsonl"), limit=14)
    subjects = {p.meta["subject"] for p in chosen.problems}
    levels = {p.meta["level"] for p in chosen.problems}
    assert len(subjects) == 7 and levels == {1, 2, 3, 4, 5}
    head = load_suite(str(REAL / "math500_test.jsonl"), limit=14, select="head")
    assert [p.id for p in head.problems] == [p.id for p in load_suite(str(REAL / "math500_test.jsonl")).problems[:14]]


# ----------------------------------------------------------------------------- runs with nothing in them (D18)
def test_a_run_with_no_samples_is_refused_clearly(lab, files, tmp_path):
    from mimo_lab.widgets import FailureExplorer

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "run.json").write_text(json.dumps({"model": "m", "suite": "s", "samples": 1}))
    result = Run(empty)
    assert result.per_problem().empty and list(result.per_problem().columns) == ["n", "c", "accuracy", "pass_at_n",
                                                                                  "maj_at_n"]
    with pytest.raises(ValueError, match="no graded samples"):
        result.explore()
    with pytest.raises(ValueError, match="no graded samples"):
        FailureExplorer(result)
    full = run(lab, str(files["aime25"]), out=tmp_path / "full", max_new_tokens=4, progress=False)
    with pytest.raises(ValueError, match="no graded samples"):
        compare_runs(full, result)
    with pytest.raises(FileNotFoundError, match="not a benchmark run folder"):
        compare_runs(full, str(tmp_path))
    assert compare_runs(full, str(tmp_path / "full")).summary()["paired_samples"] == 2  # a folder path works
    with pytest.raises(FileNotFoundError, match="problem_id='nope'"):
        full.trace("nope")
    with pytest.raises(FileNotFoundError, match="sample_index=3"):
        full.trace("0", 3)
