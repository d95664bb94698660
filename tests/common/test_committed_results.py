"""Committed results must match the current configs: a result whose config changed is stale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.reproduce import run_overrides
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
        table = paper.tables[key[0]]
        current = config_hash(compose(run_overrides(paper, table, key[1], key[2], key[3], scale)))
        assert current == run["config_hash"], (
            f"stale result {key} in {manifest_path.parent}: its config changed; "
            f"run `make reproduce PAPER={paper.key} SCALE={scale}` and commit the results"
        )
    for table in paper.tables_at(scale):
        for suffix in (".md", ".csv", ".png"):
            assert (manifest_path.parent / f"{table.id}{suffix}").exists()
    assert (manifest_path.parent / "claims.md").exists()
