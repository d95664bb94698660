"""`common.reproduce` end to end on a tiny sweep: launchers, reuse of records, user errors. (Kills during a
sweep and its resumption: test_reliability.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from common.results.record import read_record
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

TINY = ["paper=elr", "table=table1", "columns=[sym-40%]", "overrides=['trainer.max_epochs=2']"]


def _command(tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "common.reproduce",
        *TINY,
        f"output_root={tmp_path / 'outputs'}",
        f"results_root={tmp_path / 'results'}",
        *extra,
    ]


def _reproduce(tmp_path: Path, *extra: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(tmp_path, *extra), cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


def _records(tmp_path: Path) -> dict[Path, object]:
    return {p.parent: read_record(p.parent) for p in (tmp_path / "outputs").rglob("result.json")}


def _sweep_counting_workers(command: list[str], log: Path) -> tuple[subprocess.CompletedProcess, int]:
    """Runs a sweep; returns its outcome and the most submitit worker processes seen alive at once."""
    with log.open("w") as out:  # a file, not a pipe: nobody reads a pipe while the loop polls
        child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)
    most = 0
    while child.poll() is None:
        workers = 0
        try:
            for process in psutil.Process(child.pid).children(recursive=True):
                try:
                    workers += "submitit.core._submit" in " ".join(process.cmdline())
                except psutil.Error:
                    pass
        except psutil.NoSuchProcess:
            pass
        most = max(most, workers)
        time.sleep(0.1)
    return subprocess.CompletedProcess(command, child.returncode, log.read_text(), ""), most


def test_submitit_local_sweep_writes_tables_and_reuses_records(tmp_path: Path):
    # Four runs, a process each, at most two at once (the cap keeps a big sweep within the machine's memory).
    first, most = _sweep_counting_workers(
        _command(tmp_path, "seeds=2", "launcher=submitit_local", "max_parallel=2"), tmp_path / "first.log"
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert 1 <= most <= 2, most
    records = _records(tmp_path)
    assert len(records) == 4 and all(r.complete for r in records.values())
    # A quick look (a column subset, overrides, development seeds) never writes the committed results.
    assert not (tmp_path / "results").exists() and "a quick look" in first.stdout
    results = tmp_path / "outputs" / "tables" / "elr" / "mini"
    for name in ("table1.md", "table1.csv", "table1.png", "claims.md", "manifest.json"):
        assert (results / name).stat().st_size > 0, name
    markdown = (results / "table1.md").read_text()
    assert "/ 89.15 ± 0.17" in markdown  # the paper's number beside ours
    manifest = json.loads((results / "manifest.json").read_text())
    assert {(r["row"], r["seed"]) for r in manifest["runs"]} == {("CE", 0), ("CE", 1), ("ELR", 0), ("ELR", 1)}
    claims = (results / "claims.md").read_text()
    assert "## Confirmatory claims" in claims and "(catalog)" in claims.split("## Exploratory claims")[0]
    assert "95% CI" in claims and manifest["claims"] and all(r["paper_code_hash"] for r in manifest["runs"])
    assert all(isinstance(r["value"], float) for r in manifest["runs"])  # the table metric, per run

    # A committed value that the same config no longer gives is reported (the code or environment changed).
    manifest["runs"][0]["value"] += 1.0
    (results / "manifest.json").write_text(json.dumps(manifest))
    started = time.perf_counter()
    second = _reproduce(tmp_path, "seeds=2", "launcher=submitit_local")
    assert second.returncode == 0 and "4 complete, 0 to run" in second.stdout
    assert "1 run(s) measured a different value" in " ".join(second.stdout.split())
    assert time.perf_counter() - started < 30
    assert {p: r.started_at for p, r in _records(tmp_path).items()} == {
        p: r.started_at for p, r in records.items()
    }

    explicit = _reproduce(tmp_path, "seeds=[1,7]")  # explicit seeds: seed 1 is reused, seed 7 is new
    assert explicit.returncode == 0 and "2 complete, 2 to run" in explicit.stdout


def test_reproduce_user_errors(tmp_path: Path):
    unknown_paper = subprocess.run(
        [sys.executable, "-m", "common.reproduce", "paper=nope"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown_paper.returncode == 2 and "unknown paper 'nope'; available:" in unknown_paper.stderr
    assert "elr" in unknown_paper.stderr
    unknown_option = _reproduce(tmp_path, "sedes=3")
    assert unknown_option.returncode == 2 and "unknown option 'sedes'" in unknown_option.stderr
    unknown_table = _reproduce(tmp_path, "table=nope")
    assert unknown_table.returncode == 2 and "has no table 'nope'" in unknown_table.stderr
    bad_column = _reproduce(tmp_path, "columns=[sym-99%]")
    assert bad_column.returncode == 2 and "has no column" in bad_column.stderr
    bad_override = _reproduce(tmp_path, "overrides=['data.no_such_key=1']")
    assert bad_override.returncode == 2 and "no_such_key" in bad_override.stderr
    assert not (tmp_path / "results").exists()
