"""SLURM for `reproduce`: submit a table's missing runs as one job array and return at once.

Each run folder gets `submitted.json` (job id, array index, attempt folder). A later `reproduce` skips the
runs whose array task `squeue` still lists (queued or running), aggregates what has finished, and submits
only what is missing. The job settings are those of `conf/hydra/launcher/slurm.yaml` (partition, account,
qos, GPUs, CPUs, memory, time, array parallelism), overridden by `HYDRA_ARGS="hydra.launcher.<key>=<value>"`.
A job near its time limit gets USR1, Lightning checkpoints and requeues it, and the requeued task resumes the
run from its last epoch."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from common.config import CONFIG_DIR, REPO_ROOT
from common.errors import UserError

SUBMISSION_NAME = "submitted.json"
SETTINGS = (
    "partition",
    "account",
    "qos",
    "gpus_per_node",
    "tasks_per_node",
    "cpus_per_task",
    "mem_gb",
    "timeout_min",
    "array_parallelism",
)
REQUEUE_ENV = "PNU_SLURM_AUTO_REQUEUE"  # set in the job: Lightning requeues on USR1 (see slurm_environment)


def job_settings(hydra_args: list[str]) -> dict[str, Any]:
    """The launcher config's job settings with `hydra.launcher.<key>=<value>` overrides applied."""
    loaded = OmegaConf.load(CONFIG_DIR / "hydra" / "launcher" / "slurm.yaml")
    settings = {key: loaded.get(key) for key in SETTINGS}
    for arg in hydra_args:
        key, _, value = arg.lstrip("+").partition("=")
        if not key.startswith("hydra.launcher."):
            continue
        name = key.removeprefix("hydra.launcher.")
        if name not in SETTINGS:
            raise UserError(
                f"HYDRA_ARGS: {key} is not a job setting here; the settings: {', '.join(SETTINGS)}"
            )
        settings[name] = yaml.safe_load(value) if value else None
    return settings


def job_script(runs_file: Path, count: int, settings: dict[str, Any], attempt: Path, name: str) -> str:
    directives = [
        f"--job-name={name}",
        f"--array=0-{count - 1}%{int(settings.get('array_parallelism') or count)}",
        f"--output={attempt}/slurm-%A_%a.out",
        "--requeue",
        "--signal=USR1@120",
    ]
    flags = {
        "partition": "--partition={}",
        "account": "--account={}",
        "qos": "--qos={}",
        "gpus_per_node": "--gpus-per-node={}",
        "tasks_per_node": "--ntasks-per-node={}",
        "cpus_per_task": "--cpus-per-task={}",
        "mem_gb": "--mem={}G",
        "timeout_min": "--time={}",
    }
    directives += [
        flag.format(settings[key]) for key, flag in flags.items() if settings.get(key) not in (None, 0)
    ]
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives)]
    # srun starts one process per task (per GPU) and Lightning reads each one's rank from SLURM.
    launcher = "srun " if int(settings.get("tasks_per_node") or 1) > 1 else ""
    lines += [
        f"cd {shlex.quote(str(REPO_ROOT))}",
        f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}",
        f"export {REQUEUE_ENV}=1",
        f"exec {launcher}{shlex.quote(sys.executable)} -m common.run_listed {shlex.quote(str(runs_file))} "
        '"$SLURM_ARRAY_TASK_ID"',
    ]
    return "\n".join(lines) + "\n"


def submit(runs: list, attempt: Path, hydra_args: list[str], name: str) -> str:
    """Submit `runs` (planned runs) as one array; returns the job id and writes each run's submission."""
    attempt.mkdir(parents=True, exist_ok=True)
    runs_file = attempt / "runs.json"
    runs_file.write_text(json.dumps([run.overrides for run in runs], indent=1))
    settings = job_settings(hydra_args)
    devices = max((getattr(run, "devices", 1) for run in runs), default=1)
    given = {arg.lstrip("+").split("=", 1)[0].removeprefix("hydra.launcher.") for arg in hydra_args}
    if devices > 1:  # a multi-GPU run (devices=<n>gpu): one task per GPU, as Lightning's DDP on SLURM expects
        for key in ("gpus_per_node", "tasks_per_node"):
            if key not in given:
                settings[key] = devices
    script = attempt / "job.sh"
    script.write_text(job_script(runs_file, len(runs), settings, attempt, name))
    try:
        done = subprocess.run(
            ["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=120, check=True
        )
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", "") or err
        raise UserError(f"sbatch failed: {str(detail).strip()} (job script: {script})") from None
    job_id = done.stdout.strip().split(";")[0]
    when = datetime.now().isoformat(timespec="seconds")
    for index, run in enumerate(runs):
        run.run_dir.mkdir(parents=True, exist_ok=True)
        record = {"job_id": job_id, "array_index": index, "attempt": str(attempt), "submitted_at": when}
        (run.run_dir / SUBMISSION_NAME).write_text(json.dumps(record))
    return job_id


def submission(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / SUBMISSION_NAME).read_text())
    except (OSError, ValueError):
        return None


def in_flight(job_ids: set[str]) -> set[str] | None:
    """The array tasks (`<job>_<index>`) of `job_ids` that squeue lists (queued, running, requeued); None
    when squeue is not available (nothing can be said)."""
    if not job_ids:
        return set()
    if shutil.which("squeue") is None:
        return None
    try:
        done = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(sorted(job_ids))],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    tasks: set[str] = set()
    for line in done.stdout.split():
        match = re.fullmatch(r"(\d+)_\[?([\d,\-%]+)\]?", line.strip())
        if not match:
            continue
        job, spec = match.group(1), match.group(2).split("%")[0]
        for part in spec.split(","):
            low, _, high = part.partition("-")
            for index in range(int(low), int(high or low) + 1):
                tasks.add(f"{job}_{index}")
    return tasks


def queued_or_running(runs: list) -> list:
    """The runs whose submitted array task is still queued or running."""
    submitted = {id(run): submission(run.run_dir) for run in runs}
    jobs = {str(s["job_id"]) for s in submitted.values() if s}
    tasks = in_flight(jobs)
    if not tasks:
        return []
    return [
        run
        for run in runs
        if submitted[id(run)]
        and f"{submitted[id(run)]['job_id']}_{submitted[id(run)]['array_index']}" in tasks
    ]


def requeue_on_signal() -> bool:
    """Inside a job submitted here: Lightning handles USR1 by checkpointing and requeueing."""
    return os.environ.get(REQUEUE_ENV) == "1"
