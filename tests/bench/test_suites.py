"""Suites load from local files in the real hub schemas, and the nano suite covers every cell."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from suite_files import write_all

from mimo_lab.bench.suites import MATH_INSTRUCTION, load_suite, nano_suite
from mimo_lab.nano import tasks


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("suites"))


def test_math500_schema(files):
    for key in ("math500", "math500_csv"):
        suite = load_suite(str(files[key]))
        assert [p.id for p in suite.problems] == ["test/prealgebra/1.json", "test/algebra/2.json",
                                                  "test/prealgebra/3.json"]
        assert suite.problems[1].answer == "2\\sqrt{2}" and suite.problems[1].meta["subject"] == "Algebra"
        assert str(suite.problems[0].meta["level"]) == "2"
        assert suite.prompt(suite.problems[0]).endswith(MATH_INSTRUCTION)


def test_aime_schemas(files):
    a24 = load_suite(str(files["aime24"]))
    assert [(p.id, p.answer) for p in a24.problems] == [("60", "24"), ("61", "77")]
    a25 = load_suite(str(files["aime25"]))
    assert [(p.question, p.answer) for p in a25.problems][1] == ("What is 2^5?", "32")


def test_gsm8k_schema(files):
    for key in ("gsm8k", "gsm8k_parquet"):
        suite = load_suite(str(files[key]))
        assert [p.answer for p in suite.problems] == ["7", "1000"]


def test_limit_and_errors(files, tmp_path):
    assert len(load_suite(str(files["math500"]), limit=2)) == 2
    with pytest.raises(ValueError, match="limit=0"):
        load_suite(str(files["math500"]), limit=0)
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"foo": 1, "bar": 2}\n')
    with pytest.raises(ValueError, match="unrecognised columns"):
        load_suite(str(odd))
    with pytest.raises(ValueError, match="unknown suite 'mmlu'"):
        load_suite("mmlu")


def test_hub_suite_offline_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="could not load HuggingFaceH4/MATH-500"):
        load_suite("math500")


def test_nano_suite_cells():
    suite = nano_suite(per_cell=2)
    assert len(suite) == 2 * len(tasks.FAMILIES) * len(tasks.ALL_LEVELS)
    cells = {(p.meta["family"], p.meta["level"]) for p in suite.problems}
    assert len(cells) == len(tasks.FAMILIES) * 5
    assert all(p.answer_type == ("ordered_list" if p.meta["family"] == "sorting" else "math") for p in suite.problems)
    assert nano_suite(per_cell=2).problems == suite.problems  # fixed seed
    assert {p.meta["in_training"] for p in suite.problems} == {True, False}


# ----------------------------------------------------------------------------- bad suite files (D18)
def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_a_row_without_an_answer_is_refused_naming_file_and_line(tmp_path):
    rows = [{"question": "What is 1 + 1?", "answer": "2"}, {"question": "What is 2 + 2?"}]
    with pytest.raises(ValueError, match=r"no\.jsonl line 2 has no 'answer' field"):
        load_suite(str(_jsonl(tmp_path / "no.jsonl", rows)))
    rows[1]["answer"] = None  # `answer: null` was graded against the string 'None'
    with pytest.raises(ValueError, match=r"null\.jsonl line 2 has an empty 'answer' \(None\)"):
        load_suite(str(_jsonl(tmp_path / "null.jsonl", rows)))
    rows[1]["answer"] = "  "
    with pytest.raises(ValueError, match=r"blank\.jsonl line 2 has an empty 'answer'"):
        load_suite(str(_jsonl(tmp_path / "blank.jsonl", rows)))


def test_an_empty_csv_cell_is_refused_naming_the_line(files, tmp_path):
    frame = pd.read_csv(files["math500_csv"], dtype=str)
    frame.loc[1, "answer"] = None  # an empty cell: pandas reads NaN, graded against 'nan' before
    frame.to_csv(tmp_path / "gap.csv", index=False)
    assert ",," in (tmp_path / "gap.csv").read_text()
    with pytest.raises(ValueError, match=r"gap\.csv line 3 has an empty 'answer' \(nan\)"):
        load_suite(str(tmp_path / "gap.csv"))


def test_duplicate_ids_are_refused_naming_both_rows(tmp_path):
    rows = [{"id": 7, "problem": "a?", "answer": "1"}, {"id": 8, "problem": "b?", "answer": "2"},
            {"id": 7, "problem": "c?", "answer": "3"}]
    with pytest.raises(ValueError, match=r"duplicate problem id '7': .*dup\.jsonl line 1 and .*dup\.jsonl line 3"):
        load_suite(str(_jsonl(tmp_path / "dup.jsonl", rows)))


def test_missing_file_broken_line_and_per_cell(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_suite(str(tmp_path / "nowhere.jsonl"))
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        load_suite(tmp_path / "nowhere.csv")
    broken = _jsonl(tmp_path / "broken.jsonl", [{"question": "q", "answer": "1"}, '{"question": "r", "ans'])
    with pytest.raises(ValueError, match=r"broken\.jsonl line 2 is not valid JSON"):
        load_suite(str(broken))
    with pytest.raises(ValueError, match="per_cell=0"):
        load_suite("nano", per_cell=0)
    with pytest.raises(ValueError, match="per_cell=0"):
        nano_suite(per_cell=0)
    with pytest.raises(ValueError, match="unknown suite 'mmlu'"):
        load_suite("mmlu")
