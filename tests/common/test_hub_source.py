"""`load_hub_dataset`, the one loader of hub datasets: config, split and columns reach `datasets`, and a
dataset that is neither cached nor reachable gives one error with the command that fetches it. Offline:
`datasets` is replaced by fakes."""

from __future__ import annotations

import datasets
import pytest

from common.data.sources import load_hub_dataset
from common.errors import UserError


def test_config_split_and_columns(monkeypatch: pytest.MonkeyPatch, tmp_path):
    seen = {}

    def fake_load(hub_id, name=None, *, split=None, cache_dir=None):
        seen.update(hub_id=hub_id, name=name, split=split, cache_dir=cache_dir)
        return datasets.Dataset.from_dict({"image": [1, 2], "label": [0, 1], "extra": ["a", "b"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    dataset = load_hub_dataset(
        "org/set", name="cfg", split="train", columns=["label", "image"], cache_dir=tmp_path
    )
    assert seen == {"hub_id": "org/set", "name": "cfg", "split": "train", "cache_dir": str(tmp_path)}
    assert dataset.column_names == ["label", "image"]
    with pytest.raises(
        UserError, match=r"no columns \['labels'\]; its columns: \['image', 'label', 'extra'\]"
    ):
        load_hub_dataset("org/set", columns=["labels"])


def test_unreachable_dataset_names_the_command_that_fetches_it(monkeypatch: pytest.MonkeyPatch, tmp_path):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        load_hub_dataset("org/set", name="cfg", split="test", cache_dir=str(tmp_path))
    message = str(err.value)
    assert "dataset 'org/set' config 'cfg' split 'test' is not in the cache at" in message
    assert "HF_HUB_OFFLINE is set" in message and "ConnectionError: no network" in message
    assert f"datasets.load_dataset('org/set', 'cfg', split='test', cache_dir='{tmp_path}')" in message


def test_without_a_connection_only_the_cache_is_read_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """No hub reachable and HF_HUB_OFFLINE unset: the load runs offline (no half-minute of retries)."""
    import datasets.config
    from huggingface_hub import constants

    from common.data import sources

    seen = []

    def cache_only(*args, **kwargs):
        seen.append((constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE))
        raise ConnectionError("offline mode is enabled")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "hub_reachable", lambda: False)
    monkeypatch.setattr(datasets, "load_dataset", cache_only)
    before = constants.HF_HUB_OFFLINE
    with pytest.raises(UserError, match="no connection to the hub: only the cache was read"):
        load_hub_dataset("org/set", cache_dir=str(tmp_path))
    assert seen == [(True, True)] and constants.HF_HUB_OFFLINE == before  # restored afterwards


def test_a_load_that_fails_online_is_not_reported_as_missing_from_the_cache(monkeypatch, tmp_path):
    from common.data import sources

    def wrong_config(*args, **kwargs):
        raise ValueError("BuilderConfig 'nope' not found")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", wrong_config)
    with pytest.raises(
        UserError, match="could not be loaded from the HuggingFace hub .*BuilderConfig 'nope'"
    ):
        load_hub_dataset("org/set", name="nope", cache_dir=str(tmp_path))
