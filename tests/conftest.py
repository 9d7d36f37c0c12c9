"""Shared fixtures: the tiny hub-layout MiMo checkpoint, MiMo-nano, a guard on remote code."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import checkpoint_fixture  # noqa: E402


@pytest.fixture(scope="session")
def remote_code_marker(tmp_path_factory) -> Path:
    marker = tmp_path_factory.mktemp("marker") / "remote_code_ran"
    os.environ["MIMO_LAB_REMOTE_CODE_MARKER"] = str(marker)
    return marker


@pytest.fixture(scope="session")
def mimo_checkpoint(tmp_path_factory, remote_code_marker) -> Path:
    """A tiny MiMo in MiMo-7B-RL's exact hub layout (two shards, index, auto_map, remote-code files)."""
    return checkpoint_fixture.build(tmp_path_factory.mktemp("ckpt") / "MiMo-tiny")


@pytest.fixture(scope="session")
def nano():
    """MiMo-nano as shipped, loaded once for the session."""
    import mimo_lab

    return mimo_lab.load()
