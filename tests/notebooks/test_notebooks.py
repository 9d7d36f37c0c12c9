"""Every notebook runs headless in a real kernel on MiMo-nano (papermill), and with MODEL swapped."""

from __future__ import annotations

from pathlib import Path

import nbformat
import papermill
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def _run(path: Path, tmp_path: Path, **parameters) -> nbformat.NotebookNode:
    out = tmp_path / path.name
    papermill.execute_notebook(str(path), str(out), parameters=parameters, kernel_name="python3",
                               cwd=str(tmp_path), progress_bar=False)
    return nbformat.read(out, as_version=4)


def _outputs(nb) -> list[dict]:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"01_reasoning_traces.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_nano(path, tmp_path):
    source = nbformat.read(path, as_version=4)
    first_code = next(c for c in source.cells if c.cell_type == "code")
    assert "parameters" in first_code.metadata.get("tags", []) and "MODEL = None" in first_code.source
    nb = _run(path, tmp_path)
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    shown = [o.get("data", {}) for o in outputs]
    assert any("application/vnd.plotly.v1+json" in d or "application/vnd.jupyter.widget-view+json" in d
               for d in shown), "no figure or widget shown"


def test_reasoning_notebook_runs_unchanged_on_a_hub_layout_mimo(mimo_checkpoint, tmp_path):
    """MODEL swapped for another MiMo checkpoint (the tiny hub-layout fixture): same cells, no edits."""
    path = next(p for p in NOTEBOOKS if p.name.startswith("01_"))
    nb = _run(path, tmp_path, MODEL=str(mimo_checkpoint))
    assert not [o for o in _outputs(nb) if o.get("output_type") == "error"]
