"""Cached stages (`common.lit.stages`): computed once per sub-config and code, atomic, shared by concurrent
tasks, and a killed gradient stage resumes from its last epoch while finished stages are reused."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from common.config import REPO_ROOT
from common.lit.stages import Stages

WORKER = Path(__file__).with_name("stages_worker.py")


def test_compute_runs_once_per_config_and_code(tmp_path: Path):
    calls = []

    def compute():
        calls.append(1)
        return {"probs": torch.arange(3.0), "n": len(calls)}

    stages = Stages(root=tmp_path, code_hash="a")
    first = stages.compute("cross_val", {"folds": 4}, compute)
    again = stages.compute("cross_val", {"folds": 4}, compute)
    assert len(calls) == 1 and torch.equal(again["probs"], first["probs"]) and again["n"] == 1
    stages.compute("cross_val", {"folds": 5}, compute)  # another sub-config
    Stages(root=tmp_path, code_hash="b").compute("cross_val", {"folds": 4}, compute)  # changed code
    assert len(calls) == 3
    assert stages.computed == ["cross_val", "cross_val"]


def test_unreadable_result_is_recomputed(tmp_path: Path):
    stages = Stages(root=tmp_path, code_hash="a")
    stages.compute("gmm", {"k": 2}, lambda: 1)
    stages.locate("gmm", {"k": 2}).result.write_bytes(b"\x00torn write")
    assert stages.compute("gmm", {"k": 2}, lambda: 2) == 2


def test_seeded_stage_leaves_the_callers_random_state(tmp_path: Path):
    stages = Stages(root=tmp_path, code_hash="a")
    torch.manual_seed(0)
    drawn = stages.compute("noise", {}, lambda: torch.rand(2), seed=7)
    after_compute = torch.rand(1)
    torch.manual_seed(0)
    reused = stages.compute("noise", {}, lambda: torch.rand(2), seed=7)
    after_reuse = torch.rand(1)
    torch.manual_seed(7)
    assert torch.equal(drawn, torch.rand(2)) and torch.equal(reused, drawn)
    assert torch.equal(after_compute, after_reuse)


def _draws() -> tuple:
    return torch.rand(2), np.random.rand(2), random.random()


def _same(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_an_unseeded_stage_reused_leaves_the_random_state_its_computation_left(tmp_path: Path):
    stages = Stages(root=tmp_path, code_hash="a")
    L.seed_everything(0, verbose=False)
    drawn = stages.compute("noise", {"seed": 0}, _draws)
    after_compute = _draws()
    L.seed_everything(0, verbose=False)  # a rerun of the same run: the stage is read, not drawn again
    reused = stages.compute("noise", {"seed": 0}, _draws)
    assert _same(reused, drawn) and _same(_draws(), after_compute)


def test_an_unseeded_stage_reused_from_another_starting_state_leaves_the_state_alone(tmp_path: Path):
    stages = Stages(root=tmp_path, code_hash="a")
    L.seed_everything(0, verbose=False)
    stages.compute("table", {}, lambda: 1)  # draws nothing, shared by runs of every seed
    L.seed_everything(1, verbose=False)
    expected = _draws()
    L.seed_everything(1, verbose=False)
    stages.compute("table", {}, lambda: 1)
    assert _same(_draws(), expected)


def test_a_seeded_stage_leaves_the_runs_seed_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    monkeypatch.setenv("PL_SEED_WORKERS", "1")
    Stages(root=tmp_path, code_hash="a").compute("noise", {}, lambda: torch.rand(1), seed=7)
    assert os.environ["PL_GLOBAL_SEED"] == "3" and os.environ["PL_SEED_WORKERS"] == "1"


def test_bad_stage_names_are_refused(tmp_path: Path):
    for name in ("", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="plain folder name"):
            Stages(root=tmp_path, code_hash="a").locate(name, {})


def _slow_stage(root: str, marker: str) -> int:
    def compute():
        with open(marker, "a") as out:
            out.write("computed\n")
        time.sleep(1.0)
        return 42

    return Stages(root=Path(root), code_hash="a").compute("shared", {"x": 1}, compute)


def test_concurrent_tasks_compute_a_stage_once(tmp_path: Path):
    marker = tmp_path / "marker.txt"
    with ProcessPoolExecutor(max_workers=3) as pool:
        values = list(pool.map(_slow_stage, [str(tmp_path)] * 3, [str(marker)] * 3))
    assert values == [42, 42, 42]
    assert marker.read_text().splitlines() == ["computed"]


def _checkpointed_epoch(stage: Path) -> int:
    for path in stage.glob("*/checkpoints/last.ckpt"):
        try:
            return int(torch.load(path, weights_only=False, mmap=True)["epoch"])
        except Exception:  # being written
            return -1
    return -1


@pytest.mark.slow
def test_kill_during_the_second_stage_resumes_it_and_reuses_the_first(tmp_path: Path):
    log = tmp_path / "log.txt"
    command = [sys.executable, str(WORKER), str(tmp_path), str(log)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill -9 once the second stage has finished two epochs
        if _checkpointed_epoch(tmp_path / "stages" / "second") >= 1:
            break
        assert process.poll() is None, "the worker ended before it could be killed"
        time.sleep(0.1)
    else:
        pytest.fail("the second stage never checkpointed")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert "done" not in log.read_text()
    subprocess.run(command, cwd=REPO_ROOT, env=env, check=True, timeout=300)

    lines = log.read_text().splitlines()
    assert lines.count("first start_epoch=0") == 1, lines  # the finished stage is not refitted
    starts = [int(line.split("=")[1]) for line in lines if line.startswith("second start_epoch=")]
    assert starts[0] == 0 and starts[1] >= 2, lines  # resumed after its last finished epoch
    assert lines[-1] == "done computed=second curve=8", lines  # the whole curve, epochs before the kill too
    assert not list((tmp_path / "stages").glob("*/*/checkpoints")), "checkpoints of finished stages remain"


def test_a_resumed_fit_equals_an_uninterrupted_one_curves_included(tmp_path: Path):
    """`build_trainer` checkpoints every epoch with the module's curves and the random states: fitting 2
    epochs, then resuming to 4 from last.ckpt in a fresh module, gives the weights and the whole curve of a
    4-epoch fit, shuffled batches included."""
    from omegaconf import OmegaConf

    from common.experiment import build_trainer
    from tests.common.stages_worker import Regression, regression_loader

    cfg = OmegaConf.create(
        {
            "trainer": {"accelerator": "cpu", "max_epochs": 4},
            "runtime": {"checkpoint": False, "progress": False},
        }
    )
    torch.manual_seed(0)
    whole = Regression("whole", tmp_path / "log", 0.0)
    build_trainer(cfg, tmp_path, checkpoint_dirpath=tmp_path / "a").fit(
        whole, regression_loader(shuffle=True)
    )

    torch.manual_seed(0)
    first = Regression("first", tmp_path / "log", 0.0)
    build_trainer(cfg, tmp_path, checkpoint_dirpath=tmp_path / "b", max_epochs=2).fit(
        first, regression_loader(shuffle=True)
    )
    torch.manual_seed(123)  # as in a fresh process: the resumed fit must not depend on the state it starts in
    resumed = Regression("resumed", tmp_path / "log", 0.0)
    build_trainer(cfg, tmp_path, checkpoint_dirpath=tmp_path / "b").fit(
        resumed, regression_loader(shuffle=True), ckpt_path=str(tmp_path / "b" / "last.ckpt")
    )
    assert resumed.curves == whole.curves and len(whole.curves["train/loss"]) == 4
    assert torch.equal(resumed.layer.weight, whole.layer.weight)


@pytest.mark.parametrize("max_epochs", [-1, 4])
def test_a_fit_limited_by_steps_resumes_as_an_uninterrupted_one(tmp_path: Path, max_epochs: int):
    """A fit with `trainer.max_steps` (16 steps = 4 epochs of 4 batches) killed at the start of its third
    epoch and resumed from last.ckpt ends where the uninterrupted fit ends: same steps, weights and curve
    (Lightning's own max_steps would resume one batch off and lose an epoch)."""
    from omegaconf import OmegaConf

    from common.experiment import build_trainer
    from tests.common.stages_worker import Regression, regression_loader

    class Kill(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                raise RuntimeError("killed")

    trainer_cfg = {"accelerator": "cpu", "max_epochs": max_epochs, "max_steps": 16}
    cfg = OmegaConf.create({"trainer": trainer_cfg, "runtime": {"checkpoint": False, "progress": False}})
    torch.manual_seed(0)
    whole = Regression("whole", tmp_path / "log", 0.0)
    straight = build_trainer(cfg, tmp_path, checkpoint_dirpath=tmp_path / "a")
    straight.fit(whole, regression_loader(shuffle=True))

    torch.manual_seed(0)
    killed = build_trainer(cfg, tmp_path, checkpoint_dirpath=tmp_path / "b")
    killed.callbacks.append(Kill())
    with pytest.raises(RuntimeError, match="killed"):
        killed.fit(Regression("first", tmp_path / "log", 0.0), regression_loader(shuffle=True))
    torch.manual_seed(123)
    resumed = Regression("resumed", tmp_path / "log", 0.0)
    again = build_trainer(cfg, tmp_path, checkpoint_dirpath=tmp_path / "b")
    again.fit(resumed, regression_loader(shuffle=True), ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert again.global_step == straight.global_step == 16
    assert resumed.curves == whole.curves and torch.equal(resumed.layer.weight, whole.layer.weight)


def test_training_metrics_are_shared_by_cells_that_train_the_same_config(tmp_path: Path):
    from omegaconf import OmegaConf

    def config(column: str, report: str, output: str):
        return OmegaConf.create(
            {
                "seed": 1,
                "method": {"name": "x"},
                "protocol": {"report": report},
                "cell": {"row": "A", "column": column},
                "table": column,
                "runtime": {"output_root": output},
            }
        )

    calls = []

    def train():
        calls.append(1)
        return {"ndcg": 0.5, "recall": 0.25}, {"val/ndcg": [0.4, 0.5]}

    stages = Stages(root=tmp_path, code_hash="a")
    first = stages.training_metrics(config("ndcg", "ndcg", "o1"), train)
    second = stages.training_metrics(config("recall", "recall", "o2"), train)
    assert first == second == ({"ndcg": 0.5, "recall": 0.25}, {"val/ndcg": [0.4, 0.5]}) and len(calls) == 1
    changed = config("ndcg", "ndcg", "o1")
    changed.seed = 2
    stages.training_metrics(changed, train)
    assert len(calls) == 2


def test_with_reported_value_copies_the_cells_metric():
    from common.errors import UserError
    from common.lit.pipeline import with_reported_value

    metrics = {"test/dcg@5": 0.5, "test/dcg@1": 0.25}
    assert with_reported_value(metrics, "test/dcg@1") == {**metrics, "value": 0.25}
    assert with_reported_value(metrics, None) == metrics
    with pytest.raises(UserError, match="protocol.report='test/ndcg@5' is not a recorded metric"):
        with_reported_value(metrics, "test/ndcg@5")
