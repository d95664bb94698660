"""`reproduce` plans trainings, not cells: cells whose configs train the same thing (columns reporting metrics
of one training, tables that share trainings) get one training key, and the trainings run first."""

from __future__ import annotations

from pathlib import Path

from common.reproduce import PlannedRun, plan, training_waves
from common.results.paper_spec import load_paper


def _run(table: str, row: str, training: str) -> PlannedRun:
    return PlannedRun(table, row, "c", 1000, [], Path("."), f"{table}{row}", "p", training=training)


def test_waves_run_one_cell_per_training_first():
    runs = [
        _run("a", "1", "x"),
        _run("a", "2", "y"),
        _run("b", "1", "x"),
        _run("b", "2", "y"),
        _run("a", "3", "z"),
    ]
    lead, rest = training_waves(runs)
    assert [(r.table, r.row) for r in lead] == [("a", "1"), ("a", "2"), ("a", "3")]
    assert [(r.table, r.row) for r in rest] == [("b", "1"), ("b", "2")]
    assert training_waves(lead) == [lead]  # every run trains its own: one wave


def test_a_table_that_shares_trainings_plans_no_training_of_its_own(tmp_path: Path):
    """rel_mf's yahoo_r3_rare reads the trainings of yahoo_r3_all: same rows and columns, other metrics."""
    paper = load_paper("rel_mf")
    tables = [paper.tables["yahoo_r3_all"], paper.tables["yahoo_r3_rare"]]
    runs = plan(
        paper, tables, "mini", [1000, 1001], [f"runtime.output_root={tmp_path}"], ["WMF"], ["DCG@1", "MAP@5"]
    )
    assert len(runs) == 8
    trainings = {r.seed: r.training for r in runs if r.table == "yahoo_r3_all"}
    assert len(set(trainings.values())) == 2  # the columns report metrics of one training per seed
    assert all(r.training == trainings[r.seed] for r in runs)
    assert len({r.config_hash for r in runs}) == 8  # the cells themselves stay distinct
    lead, rest = training_waves(runs)
    assert len(lead) == 2 and len(rest) == 6
