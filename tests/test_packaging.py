"""Packaging: pyproject and environment.yml list the same dependencies; the CLI is installed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject() -> tuple[dict[str, str], dict[str, str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r): r for r in project["dependencies"]}
    test = {_name(r): r for r in project["optional-dependencies"]["test"]}
    return core, test


def _environment() -> dict[str, str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    reqs = [line.strip()[2:] for line in lines[start + 1 :] if line.strip().startswith("- ")]
    return {_name(r): r for r in reqs if not r.startswith("-e")}


def test_environment_yml_matches_pyproject():
    core, test = _pyproject()
    env = _environment()
    assert env == {**core, **test}, "environment.yml and pyproject.toml have drifted apart"


def test_required_stack_is_declared():
    core, test = _pyproject()
    for name in ("torch", "transformers", "nnsight", "plotly", "ipywidgets", "einops", "jupyterlab", "safetensors",
                 "pandas", "math-verify", "tqdm", "datasets"):
        assert name in core, name
    for name in ("pytest", "nbmake", "papermill", "hypothesis", "ruff", "playwright", "kaleido"):
        assert name in test, name
    assert core["transformers"].startswith("transformers>=5")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.10"
    assert project["scripts"]["mimo-lab"] == "mimo_lab.cli:main"
    assert "vllm" in project["optional-dependencies"]
    assert (ROOT / "LICENSE").read_text().count("Apache License") >= 1


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "mimo_lab.cli", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout and "nano" in out.stdout


def test_readme_has_exactly_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", readme, flags=re.S)
    commands = [line for block in blocks for line in block.strip().splitlines()]
    assert len(commands) == 2, commands
    assert commands[0].endswith("mimo-lab demo")
    assert "python -m pytest" in commands[1] and commands[1].endswith("scripts/vllm_cpu_tests.sh")
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci, "the CI script must run exactly the README's test command"


def test_ruff_clean():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT / "mimo_lab"), str(ROOT / "tests"),
                          str(ROOT / "benchmarks")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
