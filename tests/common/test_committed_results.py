"""Committed results must match the current configs and code: a result whose config or paper code changed is
stale and fails; one whose common/ files changed is reported (a warning naming the tables to re-run)."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from common.reproduce import compose_seeds, run_overrides
from common.results.claims import CONFIRMATORY_HEADING
from common.results.paper_spec import load_paper
from common.results.provenance import code_hashes, manifest_problems
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
    errors, notes = manifest_problems(manifest, code_hashes(paper.key))
    assert not errors, "\n".join(errors)
    for note in notes:
        warnings.warn(note, stacklevel=1)
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
    assert CONFIRMATORY_HEADING in (manifest_path.parent / "claims.md").read_text()
    assert manifest["claims"] is not None and manifest["git_dirty"] is False
    # Committed tables are confirmatory runs: seeds never used while developing (DESIGN.md).
    assert min(seeds) >= 1000, f"{manifest_path.parent} was run at seeds {seeds}; use SEEDS=1000,1001,..."


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


@pytest.mark.parametrize("manifest_path", MANIFESTS, ids=lambda p: f"{p.parent.parent.name}-{p.parent.name}")
def test_paper_readme_states_the_committed_confirmatory_verdicts(manifest_path: Path):
    """The README's verdict of each confirmatory claim is the committed one: a line naming the claim's id
    in backticks also names its verdict."""
    manifest = json.loads(manifest_path.read_text())
    readme = REPO_ROOT / "papers" / manifest["paper"] / "README.md"
    lines = readme.read_text().splitlines()
    for claim in manifest["claims"]:
        if not claim["confirmatory"]:
            continue
        mentions = [line for line in lines if f"`{claim['id']}`" in line]
        assert any(re.search(rf"\b{claim['status']}\b", line) for line in mentions), (
            f"{readme.relative_to(REPO_ROOT)} does not state the confirmatory verdict of `{claim['id']}` "
            f"({claim['status']}) on a line naming it"
        )
