"""A disk cache for work that several runs share.

Cells of a table often reuse one computation: several reported metrics of the same training, rows that
differ only in evaluation, a pretrained encoder or extracted features. Such artefacts live under
``<runtime.output_root>/cache/<namespace>/``, are named by a hash of everything that determines them
(`cache_key`), and are written atomically (`atomic_write`): a crash never leaves a partial file, and runs of a
sweep that race for the same file each write a complete one. A file that cannot be read is treated as absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write",
    "cache_dir",
    "cache_key",
    "cached_metrics",
    "load_torch",
    "read_json",
    "save_torch",
    "training_key",
    "write_json",
]

# Run-config keys that never change what a run trains: where it writes, which cell it fills, the sweeper's
# objective. `protocol.report` (which of the computed metrics a cell reports) is dropped too.
NOT_TRAINING_KEYS = ("runtime", "cell", "table", "hydra", "objective")


def cache_key(*parts: Any, length: int = 16) -> str:
    """A hex digest of ``parts`` (JSON with sorted keys; other objects by ``str``): equal inputs, equal key.

    Put a version number among the parts and bump it when the cached computation changes."""
    text = json.dumps(list(parts), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def training_key(cfg: Any, version: int, length: int = 20) -> str:
    """Cache key of what a run trains: its resolved config without `NOT_TRAINING_KEYS` and `protocol.report`.

    Cells that report different metrics of one training (or sit in different tables) share an entry; bump
    `version` when the cached computation changes."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(cfg, resolve=True)
    for key in NOT_TRAINING_KEYS:
        config.pop(key, None)
    config.get("protocol", {}).pop("report", None)
    return cache_key(version, config, length=length)


def cache_dir(cfg: Any, namespace: str) -> Path:
    """``<runtime.output_root>/cache/<namespace>`` of a run config (not created)."""
    return Path(cfg.runtime.output_root) / "cache" / namespace


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, then rename it to ``path``.

    Readers see the old file or the complete new one, never a partial one; on error the temporary file is
    removed and the error propagates."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, value: Any, *, indent: int | None = None) -> Path:
    """``value`` as JSON at ``path``, atomically (NaN and infinities written as Python's json does)."""

    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(value, indent=indent, sort_keys=indent is not None))

    return atomic_write(path, write)


def read_json(path: Path) -> Any | None:
    """The JSON value at ``path``, or None when the file is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def save_torch(path: Path, value: Any) -> Path:
    """``torch.save(value)`` at ``path``, atomically."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(value, tmp))


def load_torch(path: Path, *, weights_only: bool = True) -> Any | None:
    """``torch.load`` of ``path`` on the CPU, or None when the file is missing or unreadable."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError):
        return None


def cached_metrics(path: Path, context: Any, compute: Callable[[], dict[str, float]]) -> dict[str, float]:
    """A run's metrics and learning curves (`context.curves`) from the JSON at `path`, or computed by
    `compute()` (which fills `context.curves`) and stored there for the next run with the same key."""
    cached = read_json(path)
    if cached is not None:
        context.curves = cached["curves"]
        return cached["metrics"]
    metrics = compute()
    write_json(path, {"metrics": metrics, "curves": context.curves})
    return metrics
