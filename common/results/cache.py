"""Files that are whole or absent: stable content keys and atomic writes.

Run records and cached stages (`common.lit.stages`) are written through `atomic_write` (a temporary file
beside the target, fsync, rename): a crash never leaves a partial file, and writers that race for one path
each write a complete one. A file that cannot be read is treated as absent. `cache_key` names content by a
hash of everything that determines it.
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

__all__ = ["atomic_write", "cache_key", "load_torch", "read_json", "save_torch", "write_json"]


def cache_key(*parts: Any, length: int = 16) -> str:
    """A hex digest of ``parts`` (JSON with sorted keys, other objects by ``str``): same inputs, same key."""
    text = json.dumps(list(parts), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


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
