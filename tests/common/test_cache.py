"""common.results.cache: stable keys, atomic writes that leave nothing on failure, unreadable = absent."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from common.errors import UserError
from common.results.cache import (
    atomic_write,
    cache_dir,
    cache_key,
    load_torch,
    read_json,
    save_torch,
    training_key,
    write_json,
)


def test_cache_key_is_the_sha256_of_the_sorted_json_of_its_parts() -> None:
    expected = hashlib.sha256(json.dumps([1, {"a": 2, "b": [3]}], sort_keys=True).encode()).hexdigest()
    assert cache_key(1, {"b": [3], "a": 2}) == expected[:16]
    assert cache_key(1, {"b": [3], "a": 2}, length=20) == expected[:20]
    assert cache_key(1, 2) != cache_key(2, 1)
    assert cache_key(Path("x")) == cache_key("x")  # other objects by str


def test_cache_dir_follows_the_run_config(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"runtime": {"output_root": str(tmp_path)}})
    assert cache_dir(cfg, "some_paper") == tmp_path / "cache" / "some_paper"
    assert not (tmp_path / "cache").exists()


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


def test_cached_metrics_computes_once_and_restores_the_curves(tmp_path: Path) -> None:
    from common.lit.pipeline import with_reported_value
    from common.results.cache import cached_metrics

    class Context:
        curves: dict = {}

    calls = []

    def compute() -> dict:
        calls.append(1)
        context.curves = {"train/loss": [2.0, 1.0]}
        return {"test/dcg@5": 0.5, "test/dcg@1": 0.25}

    context = Context()
    path = tmp_path / "run.json"
    assert cached_metrics(path, context, compute) == {"test/dcg@5": 0.5, "test/dcg@1": 0.25}
    context.curves = {}
    again = cached_metrics(path, context, compute)
    assert len(calls) == 1 and again["test/dcg@1"] == 0.25 and context.curves == {"train/loss": [2.0, 1.0]}
    assert with_reported_value(again, "test/dcg@1")["value"] == 0.25
    assert with_reported_value(again, None) == again
    with pytest.raises(UserError, match="protocol.report='test/ndcg@5' is not a recorded metric"):
        with_reported_value(again, "test/ndcg@5")


def test_training_key_ignores_where_and_what_is_reported_but_not_what_is_trained() -> None:
    base = {"method": {"name": "bpr", "lr": 0.01}, "seed": 0, "protocol": {"ks": [5], "report": "ndcg@5"}}
    same_training = {
        **base,
        "protocol": {"ks": [5], "report": "f1@5"},  # another metric of the same training
        "runtime": {"output_root": "/elsewhere"},
        "cell": {"row": "BPR", "column": "NDCG@5"},
        "table": "top_k",
    }
    key = training_key(OmegaConf.create(base), 1)
    assert key == training_key(OmegaConf.create(same_training), 1)
    expected = {"method": base["method"], "seed": 0, "protocol": {"ks": [5]}}
    assert key == cache_key(1, expected, length=20)  # the keys the papers' caches were written under
    assert key != training_key(OmegaConf.create({**base, "seed": 1}), 1)
    assert key != training_key(OmegaConf.create(base), 2)  # a new version invalidates old entries
