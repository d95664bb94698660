"""Run records: atomic writes, incomplete records never read as complete, config hashes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.results.record import RunRecord, config_hash, read_record, write_record
from tests.conftest import compose


def _record(status: str = "complete") -> RunRecord:
    return RunRecord(
        "elr", "table1", "mini", 0, {"row": "CE", "column": "x"}, status, "abc", metrics={"test/acc": 1.0}
    )


def test_write_is_atomic_and_round_trips(tmp_path: Path):
    path = write_record(_record(), tmp_path)
    assert read_record(tmp_path) == _record()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_failed_write_keeps_previous_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write_record(_record(), tmp_path)

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("common.results.cache.os.replace", explode)
    with pytest.raises(OSError):
        write_record(_record("failed"), tmp_path)
    assert read_record(tmp_path).status == "complete"
    assert len(list(tmp_path.iterdir())) == 1


def test_truncated_or_foreign_json_is_not_a_record(tmp_path: Path):
    (tmp_path / "result.json").write_text('{"paper": "elr", "status": "compl')
    assert read_record(tmp_path) is None
    (tmp_path / "result.json").write_text(json.dumps({"unexpected": 1}))
    assert read_record(tmp_path) is None
    assert read_record(tmp_path / "missing") is None


def test_config_hash_ignores_runtime_and_logger_but_not_semantics():
    base = ["experiment=elr/table1", "method=elr", "data.noise_rate=0.4"]
    reference = config_hash(compose(base))
    assert config_hash(compose([*base, "runtime.output_root=/elsewhere", "logger=wandb"])) == reference
    assert config_hash(compose([*base, "runtime.progress=false"])) == reference
    assert config_hash(compose([*base, "method.lam=2.0"])) != reference
    assert config_hash(compose([*base, "seed=1"])) != reference
