"""One run through the harness: its record, determinism, failures recorded, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.errors import UserError
from common.lit import ClassificationModule
from common.registry import register_method
from common.results.record import read_record
from common.run import execute
from tests.conftest import REPO_ROOT, compose

TINY = [
    "experiment=elr/table1",
    "data.noise_type=symmetric",
    "data.noise_rate=0.4",
    "trainer.max_epochs=3",
    "runtime.progress=false",
    "logger=none",
    "cell.row=CE",
    "cell.column=sym-40%",
]


@register_method("nan_loss_for_tests")
class NaNLossModule(ClassificationModule):
    def compute_loss(self, logits, batch):
        return logits.sum() * torch.tensor(float("nan"))


def _run_dir(output_root: Path, seed: int) -> Path:
    """The one run folder of the CE / sym-40% cell at `seed` (named by the seed and the config's hash)."""
    (folder,) = (output_root / "elr/mini/table1/CE__sym-40pct").glob(f"seed_{seed}-*")
    return folder


def _run(output_root: Path, *extra: str):
    return execute(compose([*TINY, f"runtime.output_root={output_root}", *extra]))


def test_run_writes_a_complete_record(output_root: Path):
    record = _run(output_root, "seed=1")
    assert record.complete and record.reason is None
    on_disk = read_record(_run_dir(output_root, 1))
    assert on_disk == record
    assert set(record.metrics) >= {"test/acc", "test/acc_best", "test/acc_drop_from_peak", "train/memorized"}
    assert 0 <= record.metrics["test/acc"] <= 100 and len(record.curves["val/acc"]) == 3
    assert record.packages["torch"] and record.device["type"] in ("cpu", "cuda")
    assert record.effective_batch_size == 128 and record.precision == "32-true"
    assert len(record.data_split_hash) == 16 and len(record.config_hash) == 16
    assert record.cell == {"row": "CE", "column": "sym-40%"} and record.wall_time_s > 0


def test_same_seed_same_metrics_and_skip(output_root: Path, tmp_path: Path):
    first = _run(output_root, "seed=2")
    again = _run(output_root, "seed=2")  # complete record with the same config: skipped
    assert again.started_at == first.started_at
    rerun = execute(compose([*TINY, f"runtime.output_root={tmp_path / 'other'}", "seed=2"]))
    assert rerun.metrics == first.metrics and rerun.data_split_hash == first.data_split_hash
    other_seed = _run(output_root, "seed=3")
    assert other_seed.data_split_hash != first.data_split_hash


def test_nan_loss_is_recorded_as_failed(output_root: Path):
    overrides = [*TINY, f"runtime.output_root={output_root}", "method=ce", "method.name=nan_loss_for_tests"]
    record = execute(compose(overrides))
    assert record.status == "failed" and "non-finite loss" in record.reason
    assert read_record(Path(compose(overrides).runtime.run_dir)).status == "failed"


def test_unknown_method_and_missing_experiment_are_user_errors(output_root: Path):
    with pytest.raises(UserError, match="method.name='nope': a registered method"):
        _run(output_root, "method.name=nope")
    with pytest.raises(UserError, match="experiment=<paper>/<table>"):
        execute(compose([f"runtime.output_root={output_root}"]))


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "common.run", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_csv_logger_gets_every_epoch_metric_and_no_logger_costs_nothing(output_root: Path):
    import csv

    record = _run(output_root, "seed=2", "logger=csv")
    assert record.complete, record.reason
    (metrics_file,) = _run_dir(output_root, 2).rglob("metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    val_acc = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    assert val_acc == pytest.approx(record.curves["val/acc"], rel=1e-6)  # one row per epoch (float32)
    assert len([r for r in rows if r.get("train/loss")]) == len(val_acc)

    record = _run(output_root, "seed=3", "logger=none")
    assert record.complete and len(record.curves["val/acc"]) == len(val_acc)


@pytest.mark.slow  # four Hydra processes
def test_cli_errors_are_one_clear_message(output_root: Path):
    unknown_key = _cli("experiment=elr/table1", "data.no_such_key=1", f"runtime.output_root={output_root}")
    assert unknown_key.returncode != 0 and "no_such_key" in unknown_key.stderr
    malformed = _cli("experiment=elr/table1", "data.noise_rate=[0.4", f"runtime.output_root={output_root}")
    assert (
        malformed.returncode != 0
        and "override_grammar" in malformed.stderr
        and "Traceback" not in malformed.stderr
    )
    unknown_experiment = _cli("experiment=elr/nope", f"runtime.output_root={output_root}")
    assert (
        unknown_experiment.returncode != 0
        and "experiment=elr/nope names no table" in unknown_experiment.stderr
        and "Traceback" not in unknown_experiment.stderr
    )
    bad_rate = _cli("experiment=elr/table1", "data.noise_rate=1.5", f"runtime.output_root={output_root}")
    assert bad_rate.returncode == 2 and "data.noise_rate=1.5: a number in [0, 1)" in bad_rate.stderr
    assert "Traceback" not in bad_rate.stderr
    assert not list(output_root.rglob("result.json"))


@pytest.mark.slow  # a Hydra process that tries the hub
def test_paper_scale_without_cached_dataset_says_what_to_do(output_root: Path, tmp_path: Path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = _cli(
        "experiment=elr/table1",
        "scale=paper",
        f"runtime.output_root={output_root}",
        f"runtime.cache_dir={tmp_path / 'hf'}",
        env=env,
    )
    assert result.returncode == 2
    assert "uoft-cs/cifar10" in result.stderr and str(tmp_path / "hf") in result.stderr
    assert "datasets.load_dataset" in result.stderr and "Traceback" not in result.stderr
    assert not list(output_root.rglob("result.json"))


def test_wandb_logger_offline_groups_runs_by_table(output_root: Path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(output_root))
    record = _run(output_root, "seed=4", "logger=wandb", "trainer.max_epochs=1")
    assert record.complete, record.reason
    run_dir = _run_dir(output_root, 4)
    offline = list(run_dir.rglob("offline-run-*"))
    assert offline, "no offline W&B run written"
    assert (offline[0] / "files" / "result.json").exists()  # the run record is uploaded with the run
    import wandb

    # The service writes the run's stream asynchronously: shut it down so the stream is complete.
    wandb.teardown()
    stream = next(offline[0].glob("run-*.wandb")).read_bytes()
    assert b"elr/table1/mini" in stream and b"noise_rate" in stream  # group = table; resolved config
