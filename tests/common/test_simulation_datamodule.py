"""common.data.simulation.SimulationDataModule: source check, seed and the shared config keys."""

from __future__ import annotations

import pytest

from common.data.simulation import SimulationDataModule
from common.errors import UserError


class _Mixture(SimulationDataModule):
    sources = ("mixture", "random")


def test_sources_seed_and_shared_keys() -> None:
    module = _Mixture("mixture", seed=3, batch_size=16, cache_dir="/tmp/x")
    assert (module.source, module.seed, module.batch_size, module.num_workers) == ("mixture", 3, 16, 0)
    assert module.cache_dir == "/tmp/x"
    assert SimulationDataModule("random").source == "random"
    with pytest.raises(UserError, match=r"unknown data.source 'gaussian' for _Mixture; use one of"):
        _Mixture("gaussian")
