"""LAUNCHER=slurm submits and returns: a fake sbatch/squeue on PATH shows the submission returns at once, a
second call skips the queued runs, and a call after the tasks ran aggregates them into the table."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.slurm import in_flight, job_script, job_settings
from tests.conftest import REPO_ROOT

FAKE_SBATCH = """#!/bin/bash
# a job id per call; every array task of the script goes into the queue
n=$(( $(cat "$FAKE_SLURM/next" 2>/dev/null || echo 100) + 1 )); echo $n > "$FAKE_SLURM/next"
for a in "$@"; do script="$a"; done
echo "$n $script" >> "$FAKE_SLURM/submitted"
last=$(grep -o -- '--array=0-[0-9]*' "$script" | sed 's/.*-//')
for i in $(seq 0 $last); do echo "${n}_$i" >> "$FAKE_SLURM/queue"; done
echo "$n"
"""
FAKE_SQUEUE = """#!/bin/bash
cat "$FAKE_SLURM/queue" 2>/dev/null
"""


def test_job_settings_come_from_the_launcher_config_and_hydra_args():
    settings = job_settings(["hydra.launcher.partition=gpu", "hydra.launcher.mem_gb=32"])
    assert settings["partition"] == "gpu" and settings["mem_gb"] == 32 and settings["gpus_per_node"] == 1
    script = job_script(Path("/x/runs.json"), 5, settings, Path("/x"), "pnu-elr-paper")
    assert "#SBATCH --array=0-4%64" in script and "#SBATCH --partition=gpu" in script
    assert "#SBATCH --mem=32G" in script and "#SBATCH --signal=USR1@120" in script
    assert "common.run_listed /x/runs.json" in script and "PNU_SLURM_AUTO_REQUEUE=1" in script


def test_squeue_task_ranges_are_expanded(tmp_path: Path, monkeypatch):
    fake = tmp_path / "squeue"
    fake.write_text("#!/bin/bash\necho 7_3\necho '7_[5-6,9%2]'\necho 8_0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert in_flight({"7", "8"}) == {"7_3", "7_5", "7_6", "7_9", "8_0"}


@pytest.mark.slow  # three reproduce calls and two runs
def test_slurm_submits_returns_skips_queued_runs_and_aggregates_after(tmp_path: Path):
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM": str(state)}
    command = [
        sys.executable,
        "-m",
        "common.reproduce",
        "paper=elr",
        "columns=[sym-40%]",
        "rows=[CE]",
        "seeds=2",
        "launcher=slurm",
        "overrides=[trainer.max_epochs=1]",
        f"output_root={tmp_path / 'outputs'}",
        f"results_root={tmp_path / 'results'}",
    ]

    def reproduce() -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300)

    started = time.perf_counter()
    first = reproduce()
    assert first.returncode == 0, first.stdout + first.stderr
    assert time.perf_counter() - started < 60  # returns once submitted, runs nothing
    assert "submitted 2 runs as SLURM job array 101" in " ".join(first.stdout.split())
    submissions = sorted((tmp_path / "outputs").rglob("submitted.json"))
    assert len(submissions) == 2 and not list((tmp_path / "outputs").rglob("result.json"))

    second = reproduce()
    assert second.returncode == 0, second.stdout + second.stderr
    assert "2 runs are already queued or running" in " ".join(second.stdout.split())
    assert len((state / "submitted").read_text().splitlines()) == 1  # nothing submitted twice

    (job_script_path,) = [Path(line.split()[1]) for line in (state / "submitted").read_text().splitlines()]
    for index in range(2):  # what SLURM would do with the array
        task = subprocess.run(
            ["bash", str(job_script_path)],
            env={**env, "SLURM_ARRAY_TASK_ID": str(index)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert task.returncode == 0, task.stdout + task.stderr
    (state / "queue").write_text("")

    third = reproduce()
    assert third.returncode == 0, third.stdout + third.stderr
    assert "2 complete, 0 to run" in third.stdout
    assert (tmp_path / "outputs" / "tables" / "elr" / "mini" / "table1.csv").is_file()


def test_a_multi_gpu_run_is_one_override_set_together(monkeypatch):
    """devices=4gpu: four devices with DDP for the Trainer, four GPUs and four srun tasks for its SLURM job;
    configured and built on the CPU (no GPU here)."""
    from lightning.pytorch.strategies import DDPStrategy

    from common.experiment import build_trainer
    from tests.conftest import compose

    cfg = compose(["experiment=elr/table1", "scale=paper", "devices=4gpu", "trainer.accelerator=cpu"])
    assert cfg.trainer.devices == 4 and cfg.trainer.strategy == "ddp"
    trainer = build_trainer(cfg, checkpoint=False)
    assert trainer.num_devices == 4 and isinstance(trainer.strategy, DDPStrategy)
    assert compose(["experiment=elr/table1", "scale=paper"]).trainer.devices == 1  # the default: one


def test_a_multi_gpu_job_asks_for_a_gpu_and_a_task_per_device(tmp_path: Path, monkeypatch):
    from types import SimpleNamespace

    from common.slurm import submit

    fake = tmp_path / "sbatch"
    fake.write_text("#!/bin/bash\necho 42\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    runs = [SimpleNamespace(overrides=["seed=0"], run_dir=tmp_path / "run0", devices=4)]
    assert submit(runs, tmp_path / "attempt", [], "pnu-test") == "42"
    script = (tmp_path / "attempt" / "job.sh").read_text()
    assert "#SBATCH --gpus-per-node=4" in script and "#SBATCH --ntasks-per-node=4" in script
    assert "exec srun " in script and (tmp_path / "run0" / "submitted.json").is_file()
