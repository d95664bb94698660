"""ELR through the harness: a tiny run of each row of its table, and the module's per-example targets."""

from __future__ import annotations

from pathlib import Path

import torch

from common.experiment import build_datamodule, build_module
from common.reproduce import run_overrides
from common.results.paper_spec import load_paper
from common.run import execute
from papers.elr import ELRModule
from tests.conftest import compose

TINY = ["experiment=elr/table1", "data.noise_type=symmetric", "data.noise_rate=0.4", "trainer.max_epochs=2",
        "runtime.progress=false", "logger=none"]  # fmt: skip


def test_elr_run_completes(output_root: Path):
    record = execute(compose([*TINY, "method=elr", "cell.row=ELR", "cell.column=sym-40%",
                              f"runtime.output_root={output_root}"]))  # fmt: skip
    assert record.complete, record.reason
    assert len(record.curves["val/acc"]) == 2


def test_elr_module_targets_follow_training_examples():
    cfg = compose([*TINY, "method=elr", "method.beta=0.5"])
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    assert isinstance(module, ELRModule)
    assert module.elr.target.shape == (datamodule.num_train, datamodule.num_classes)
    batch = next(iter(datamodule.train_dataloader()))
    module.compute_loss(module(batch["x"]), batch)
    touched = module.elr.target[batch["index"]]
    assert torch.allclose(touched.sum(1), torch.full((len(touched),), 0.5), atol=1e-5)  # (1 - beta) * 1
    untouched = torch.ones(datamodule.num_train, dtype=torch.bool)
    untouched[batch["index"]] = False
    assert module.elr.target[untouched].abs().sum() == 0
    assert "elr.target" in module.state_dict()  # saved in checkpoints, so a resumed run keeps its targets


def test_symmetric_noise_redraws_from_all_classes_as_the_official_code():
    paper = load_paper("elr")
    cfg = compose(run_overrides(paper, paper.tables["table1"], "CE", "sym-80%", 0, "mini"))
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    # 80% of labels redrawn from 10 classes: about 72% end up wrong (0.8 * 9/10).
    assert 0.68 < datamodule.realised_noise_rate < 0.76


def test_mini_sym40_flips_to_another_class_as_the_catalog_claim():
    # The pre-registered mini claim is at 40% symmetric noise flipping to a uniformly random other class.
    paper = load_paper("elr")
    for row in ("CE", "ELR"):
        cfg = compose(run_overrides(paper, paper.tables["table1"], row, "sym-40%", 0, "mini"))
        datamodule = build_datamodule(cfg)
        datamodule.setup("fit")
        assert abs(datamodule.realised_noise_rate - 0.4) < 0.01
