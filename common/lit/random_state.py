"""The process's torch, NumPy and Python random states as plain values (tensors, lists, numbers), so they
fit in checkpoints and stage results that load with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch


def get_random_state() -> dict[str, Any]:
    """The torch (CPU), NumPy and Python global random states."""
    name, keys, position, has_gauss, cached_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gauss],
        "python": random.getstate(),
    }


def set_random_state(state: dict[str, Any]) -> None:
    """Restore what `get_random_state` returned."""
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, cached_gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gauss))
    python = state["python"]  # a weights-only load turns the tuples into lists
    random.setstate((python[0], tuple(python[1]), python[2]))


def random_state_digest() -> str:
    """A short hash of the current random states (to tell whether two moments share them)."""
    state = get_random_state()
    digest = hashlib.sha256(state["torch"].numpy().tobytes())
    digest.update(state["numpy"][1].numpy().tobytes())
    digest.update(repr((state["numpy"][2:], state["python"])).encode())
    return digest.hexdigest()[:16]
