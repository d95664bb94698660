"""Run records: one `result.json` per run, written atomically, read back only when complete."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from common.results.cache import atomic_write

RECORD_NAME = "result.json"
STATUS_COMPLETE, STATUS_FAILED = "complete", "failed"
# Keys of the run config that do not change what is computed (paths, logging, progress display).
NON_SEMANTIC_KEYS = ("runtime", "hydra", "logger")
TRACKED_PACKAGES = (
    "torch",
    "lightning",
    "torchmetrics",
    "hydra-core",
    "numpy",
    "scikit-learn",
    "timm",
    "open_clip_torch",
    "datasets",
    "triton",
    "cleanlab",
)


@dataclass
class RunRecord:
    paper: str
    table: str
    scale: str
    seed: int
    cell: dict[str, Any]
    status: str
    config_hash: str
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)
    reason: str | None = None
    wall_time_s: float = 0.0
    started_at: str = ""
    finished_at: str = ""
    git_sha: str | None = None
    git_dirty: bool | None = None
    packages: dict[str, str] = field(default_factory=dict)
    python: str = platform.python_version()
    device: dict[str, Any] = field(default_factory=dict)
    precision: str | None = None
    effective_batch_size: int | None = None
    data_split_hash: str | None = None
    paper_code_hash: str | None = None
    common_code_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.status == STATUS_COMPLETE


def config_hash(cfg: DictConfig) -> str:
    """sha256 of the resolved config without the keys that do not change results (which no other key may
    interpolate: the run folder itself is named by this hash)."""
    semantic = OmegaConf.masked_copy(cfg, [key for key in cfg if key not in NON_SEMANTIC_KEYS])
    container = OmegaConf.to_container(semantic, resolve=True)
    text = json.dumps(container, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: Keys that say where a run's numbers go, not what it trains (cells of one training share the rest).
NOT_TRAINING_KEYS = ("runtime", "cell", "table", "hydra", "objective", "logger")


def training_config(cfg: DictConfig) -> dict:
    """What a run trains: its resolved config without `NOT_TRAINING_KEYS` and `protocol.report`."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for key in NOT_TRAINING_KEYS:
        config.pop(key, None)
    if isinstance(config.get("protocol"), dict):
        config["protocol"].pop("report", None)
    return config


def write_record(record: RunRecord, run_dir: Path) -> Path:
    """Write `result.json` atomically: a temporary file in the same folder, then a rename."""
    text = json.dumps(asdict(record), indent=2, sort_keys=True, allow_nan=True)
    return atomic_write(run_dir / RECORD_NAME, lambda tmp: tmp.write_text(text))


def read_record(run_dir: Path) -> RunRecord | None:
    """The record in `run_dir`, or None when there is none or it cannot be parsed."""
    path = Path(run_dir) / RECORD_NAME
    try:
        data = json.loads(path.read_text())
        return RunRecord(**data)
    except (OSError, ValueError, TypeError):  # missing, unreadable, undecodable or not a record: absent
        return None


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# What produces a run: a change here, tracked or not (an untracked file included), makes its record dirty.
CODE_PATHS = ("common", "conf", "papers", "hydra_plugins", "pyproject.toml")


def git_state(repo: Path | None = None) -> tuple[str | None, bool | None]:
    """(HEAD sha, whether the code paths differ from it, untracked files included); (None, None) outside a
    git checkout. Changes elsewhere (results, READMEs) do not make a run dirty."""
    cwd = repo or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        return sha, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return None, None


def package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def device_info() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        return {"type": "cuda", "name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count()}
    return {
        "type": "cpu",
        "name": platform.processor() or platform.machine(),
        "count": 1,
        "threads": torch.get_num_threads(),
    }
