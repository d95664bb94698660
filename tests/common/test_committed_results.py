"""Committed results must match the current configs: a result whose config changed is stale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from common.reproduce import compose_seeds, run_overrides
from common.results.paper_spec import load_paper
from common.results.record import config_hash
from tests.conftest import REPO_ROOT, compose

MANIFESTS = sorted((REPO_ROOT / "results").glob("*/*/manifest.json"))


@pytest.mark.parametrize("manifest_path", MANIFESTS, ids=lambda p: f"{p.parent.parent.name}-{p.parent.name}")
def test_committed_result_matches_current_config(manifest_path: Path):
    manifest = json.loads(manifest_path.read_text())
    paper = load_paper(manifest["paper"])
    scale, seeds = manifest["scale"], manifest["seeds"]
    expected = {
        (table.id, row, column, seed)
        for table in paper.tables_at(scale)
        for row, column in table.cells()
        for seed in seeds
    }
    committed = {(r["table"], r["row"], r["column"], r["seed"]): r for r in manifest["runs"]}
    assert set(committed) == expected, (
        f"{manifest_path.parent} does not cover the tables of conf/paper/{paper.key}.yaml: "
        f"run `make reproduce PAPER={paper.key} SCALE={scale}` and commit the results"
    )
    for key, run in committed.items():
        assert run["status"] == "complete", f"{key} is {run['status']} in the committed results"
    for table in paper.tables_at(scale):
        for row, column in table.cells():
            configs = compose_seeds(run_overrides(paper, table, row, column, seeds[0], scale), seeds)
            for seed, cfg in zip(seeds, configs, strict=True):
                key = (table.id, row, column, seed)
                assert config_hash(cfg) == committed[key]["config_hash"], (
                    f"stale result {key} in {manifest_path.parent}: its config changed; "
                    f"run `make reproduce PAPER={paper.key} SCALE={scale}` and commit the results"
                )
    for table in paper.tables_at(scale):
        for suffix in (".md", ".csv", ".png"):
            assert (manifest_path.parent / f"{table.id}{suffix}").exists()
    assert (manifest_path.parent / "claims.md").exists()


@pytest.mark.parametrize("key", sorted({p.parent.parent.name for p in MANIFESTS}))
def test_one_compose_per_cell_equals_one_per_seed(key: str):
    """`compose_seeds` (one Hydra compose per cell) gives the configs that composing each seed gives."""
    paper = load_paper(key)
    table = paper.tables_at("mini")[0]
    row, column = table.cells()[-1]
    seeds = [0, 7]
    fast = compose_seeds(run_overrides(paper, table, row, column, seeds[0], "mini"), seeds)
    for seed, cfg in zip(seeds, fast, strict=True):
        slow = compose(run_overrides(paper, table, row, column, seed, "mini"))
        assert OmegaConf.to_container(cfg, resolve=True) == OmegaConf.to_container(slow, resolve=True)
