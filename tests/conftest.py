"""Shared fixtures: runs write under a temporary output root; W&B never goes online; no hub access."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def output_root(tmp_path: Path) -> Path:
    root = tmp_path / "outputs"
    root.mkdir()
    return root


def compose(overrides: list[str]):
    """The run config for `overrides` (Hydra compose, as `python -m common.run` would see it)."""
    from common.config import compose_run_config

    return compose_run_config(overrides)
