"""Committed results must match the current configs and code: a result whose config or paper code changed is
stale and fails; one whose common/ files changed is reported (a warning naming the tables to re-run)."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from common.config import compose_run_configs
from common.reproduce import run_overrides
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
        f"{manifest_path.parent} does not cover the tables of conf/papers/{paper.key}/paper.yaml: "
        f"run `make reproduce PAPER={paper.key} SCALE={scale}` and commit the results"
    )
    errors, notes = manifest_problems(manifest, code_hashes(paper.key))
    assert not errors, "\n".join(errors)
    for note in notes:
        warnings.warn(note, stacklevel=1)
    for table in paper.tables_at(scale):
        keys = [(table.id, row, column, seed) for row, column in table.cells() for seed in seeds]
        configs = compose_run_configs([run_overrides(paper, table, *key[1:], scale) for key in keys])
        for key, cfg in zip(keys, configs, strict=True):
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
def test_composing_a_table_at_once_equals_composing_each_run(key: str):
    """`compose_run_configs` (one Hydra compose per distinct group choice) gives each run the config a
    compose of its own overrides gives: the first and last cell of the paper's largest table, two seeds."""
    paper = load_paper(key)
    table = max(paper.tables_at("mini"), key=lambda t: len(t.cells()))
    runs = [
        (row, column, seed) for row, column in (table.cells()[0], table.cells()[-1]) for seed in (0, 1007)
    ]
    fast = compose_run_configs([run_overrides(paper, table, *run, "mini") for run in runs])
    for run, cfg in zip(runs, fast, strict=True):
        slow = compose(run_overrides(paper, table, *run, "mini"))
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
