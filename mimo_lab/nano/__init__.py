"""MiMo-nano: the tiny MiMo-architecture reasoning model that mimo_lab trains and ships."""

from pathlib import Path

CHECKPOINT = Path(__file__).parent / "checkpoint"
NAME = "MiMo-nano"
