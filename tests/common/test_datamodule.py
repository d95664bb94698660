"""ClassificationDataModule options that papers share: long-tail head size and hub configurations."""

from __future__ import annotations

import numpy as np
import pytest

import common.data.datamodule as datamodule_module
from common.data.datamodule import ClassificationDataModule


def test_long_tail_head_size_is_configurable():
    dm = ClassificationDataModule("digits", imbalance_ratio=10, long_tail_max_per_class=100)
    dm.setup()
    counts = np.bincount(dm.train_labels_clean, minlength=10)
    assert counts[0] == 100 and counts[-1] == 10 and (np.diff(counts) <= 0).all()


def test_hub_configuration_name_reaches_the_loader(monkeypatch):
    seen = {}

    def fake_load(hub_id, *, cache_dir=None, **kwargs):
        seen.update(hub_id=hub_id, **kwargs)
        raise RuntimeError("stop after the call")

    monkeypatch.setattr(datamodule_module, "load_hub_dataset", fake_load)
    dm = ClassificationDataModule("hub", hub_id="ufldl-stanford/svhn", hub_name="cropped_digits")
    with pytest.raises(RuntimeError, match="stop"):
        dm.setup()
    assert seen == {"hub_id": "ufldl-stanford/svhn", "name": "cropped_digits"}
