"""ucl through the harness: a tiny run of every row completes, both columns pretrain the same encoder, the
mini runs on the generated shapes with SimCLR's colour augmentations, and the paper-scale config carries the
official DCL/HCL settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.reproduce import run_overrides
from common.results.paper_spec import load_paper
from common.run import execute
from tests.conftest import compose

PAPER = load_paper("ucl")
TABLE = PAPER.tables["objectives"]
# 400 generated images (300 train, 100 test), 2 epochs with a kNN monitor after each.
TINY = [
    "trainer.max_epochs=2",
    "data.batch_size=64",
    "data.source_kwargs.num_samples=400",
    "method.eval_every_n_epochs=1",
    "method.probe_epochs=5",
    "runtime.progress=false",
    "logger=none",
]


def _run(row: str, column: str, output_root: Path):
    overrides = run_overrides(PAPER, TABLE, row, column, 0, "mini")
    return execute(compose([*overrides, *TINY, f"runtime.output_root={output_root}"]))


@pytest.mark.parametrize("row", list(TABLE.rows))
def test_every_row_runs(row: str, output_root: Path):
    record = _run(row, "linear", output_root)
    assert record.complete, record.reason
    metrics = record.metrics
    assert metrics["test/acc"] == metrics["test/linear_acc"]
    assert 0.0 <= metrics["test/knn_acc"] <= 100.0 and 0.0 <= metrics["test/linear_acc"] <= 100.0
    assert len(record.curves["val/knn_acc"]) == 2 and len(record.curves["train/loss"]) == 2


def test_knn_and_linear_columns_share_the_pretrained_encoder(output_root: Path):
    knn = _run("DCL", "kNN", output_root)
    linear = _run("DCL", "linear", output_root)
    assert knn.complete and linear.complete
    assert knn.metrics["test/acc"] == knn.metrics["test/knn_acc"] == linear.metrics["test/knn_acc"]
    assert "test/linear_acc" not in knn.metrics  # the kNN column skips the probe
    assert knn.curves["train/loss"] == linear.curves["train/loss"]


def test_mini_is_shapes_with_simclr_colour_views():
    cfg = compose(run_overrides(PAPER, TABLE, "SimCLR (InfoNCE)", "kNN", 0, "mini"))
    assert (cfg.data.datamodule, cfg.data.source) == ("multiview", "shapes")
    assert cfg.data.saturation_jitter > 0 and cfg.data.hue_jitter > 0 and cfg.data.tensor_grayscale_prob > 0
    assert cfg.model.backbone == "cnn_small" and cfg.data.drop_last


def test_paper_scale_uses_the_official_hcl_settings():
    cfg = compose(run_overrides(PAPER, TABLE, "HCL", "linear", 0, "paper"))
    assert cfg.model.backbone == "cifar_resnet50" and cfg.data.hub_id == "uoft-cs/cifar10"
    assert (cfg.method.temperature, cfg.method.hard_negative_beta, cfg.method.debias_tau_plus) == (
        0.5,
        1.0,
        0.1,
    )
    assert list(cfg.method.projection_dims) == [512, 128]
    assert (cfg.data.batch_size, cfg.trainer.max_epochs, cfg.data.drop_last) == (256, 400, True)
    assert cfg.optim.optimizer._target_ == "torch.optim.Adam"
    assert (cfg.optim.optimizer.lr, cfg.optim.optimizer.weight_decay) == (1e-3, 1e-6)
    assert (cfg.method.knn_k, cfg.method.probe, cfg.method.probe_epochs) == (200, "torch", 100)
    assert list(cfg.data.std) == [0.2023, 0.1994, 0.2010]
