"""common.results.cache: stable keys, atomic writes that leave nothing on failure, unreadable = absent."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from common.results.cache import atomic_write, cache_key, load_torch, read_json, save_torch, write_json


def test_cache_key_is_the_sha256_of_the_sorted_json_of_its_parts() -> None:
    expected = hashlib.sha256(json.dumps([1, {"a": 2, "b": [3]}], sort_keys=True).encode()).hexdigest()
    assert cache_key(1, {"b": [3], "a": 2}) == expected[:16]
    assert cache_key(1, {"b": [3], "a": 2}, length=20) == expected[:20]
    assert cache_key(1, 2) != cache_key(2, 1)
    assert cache_key(Path("x")) == cache_key("x")  # other objects by str


def test_json_round_trip_and_unreadable_files_read_as_absent(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "value.json"
    assert read_json(path) is None
    write_json(path, {"metrics": {"acc": 0.5, "nan": float("nan")}, "curves": [1, 2]})
    loaded = read_json(path)
    assert loaded["curves"] == [1, 2] and loaded["metrics"]["acc"] == 0.5
    assert loaded["metrics"]["nan"] != loaded["metrics"]["nan"]
    path.write_text('{"truncated": ')
    assert read_json(path) is None
    assert [p.name for p in path.parent.iterdir()] == ["value.json"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "value.json"
    write_json(path, {"old": True})

    def broken(tmp: Path) -> None:
        tmp.write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, broken)
    assert read_json(path) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["value.json"]


def test_torch_round_trip_and_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    assert load_torch(path) is None
    save_torch(path, {"weight": torch.arange(3.0), "loss": 0.25})
    loaded = load_torch(path)
    assert torch.equal(loaded["weight"], torch.arange(3.0)) and loaded["loss"] == 0.25
    path.write_bytes(b"not a torch file")
    assert load_torch(path) is None
