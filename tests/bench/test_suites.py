"""Suites load from local files in the real hub schemas, and the nano suite covers every cell."""

from __future__ import annotations

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
    with pytest.raises(ValueError, match="limit 0"):
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
