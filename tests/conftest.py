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


def context_without_stages(cfg, trainer_root: Path | None = None):
    """The `RunContext` a pipeline gets when called outside the runner: the run's data set up, its trainer
    factory, no module factory and no stages (so the pipeline computes every stage itself)."""
    from common.experiment import build_datamodule, build_trainer
    from common.lit import RunContext

    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    return RunContext(
        cfg=cfg,
        datamodule=datamodule,
        make_module=None,
        make_trainer=lambda **kw: build_trainer(cfg, trainer_root, checkpoint=False, **kw),
    )


def compose(overrides: list[str]):
    """The run config for `overrides` (Hydra compose, as `python -m common.run` would see it)."""
    from common.config import compose_run_config

    return compose_run_config(overrides)


@pytest.fixture(scope="session")
def first_in_session(tmp_path_factory, request):
    """`claim(key) -> bool`: True for the first test of the whole session (across xdist workers) that claims
    `key`, False after. Expensive checks that depend only on `key` (a training step of one backbone at one
    input shape) then run once per session, whichever test reaches them first."""
    import hashlib

    base = tmp_path_factory.getbasetemp()
    under_xdist = hasattr(request.config, "workerinput")  # also without the xdist plugin (`-p no:xdist`)
    shared = (base.parent if under_xdist else base) / "claims"
    shared.mkdir(exist_ok=True)

    def claim(key: str) -> bool:
        path = shared / hashlib.sha256(key.encode()).hexdigest()[:24]
        try:
            path.open("x").close()
        except FileExistsError:
            return False
        return True

    return claim


def committed_table_result(key: str, table_id: str, scale: str = "mini"):
    """(TableResult, evaluated claims) of a committed table, rebuilt from its manifest's per-run values."""
    import json
    from types import SimpleNamespace

    from common.results.aggregate import TableResult
    from common.results.claims import evaluate_claim
    from common.results.paper_spec import load_paper

    table = load_paper(key).tables[table_id]
    manifest = json.loads((REPO_ROOT / "results" / key / scale / "manifest.json").read_text())
    records = [
        SimpleNamespace(
            complete=run["status"] == "complete",
            cell={"row": run["row"], "column": run["column"]},
            metrics=run["metrics"],
            curves={},
            seed=run["seed"],
        )
        for run in manifest["runs"]
        if run["table"] == table_id
    ]
    result = TableResult(table, scale, records)
    return result, [evaluate_claim(c, result, 1) for c in table.claims if c.scale == scale]
