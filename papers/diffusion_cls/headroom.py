"""The headroom of the mini setting, a development check (not a table): on the mini data of the t_block table
(the generated shapes set, `conf/papers/diffusion_cls/t_block.yaml`), a linear classifier on the raw pixels
and a small CNN trained with the labels (`benchmarks/shapes_headroom.py`: Adam, cosine schedule). The table's
own baseline, the linear probe on random-init U-Net features at the best (t, b), is the `random init` row of
`best_feature`; the supervised CNN shows how far above it the labels can go on these images.

    python -m papers.diffusion_cls.headroom --seeds 0 1 2 --out /path/headroom.json"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from benchmarks.shapes_headroom import small_cnn, train_and_test
from common.config import compose_run_config
from common.data.shapes import load_shapes


def mini_data_config(overrides: list[str] | None = None) -> dict[str, Any]:
    """The data config of the mini tables (every table composes the t_block table's mini data)."""
    cfg = compose_run_config(["experiment=diffusion_cls/t_block", "scale=mini", *(overrides or [])])
    return OmegaConf.to_container(cfg.data, resolve=True)


def headroom(data: dict[str, Any], seeds: list[int], epochs: int = 15) -> dict[str, Any]:
    """Test accuracy (%) per seed of a linear model on pixels and of the small CNN, on `data`'s split."""
    arrays = load_shapes(
        test_fraction=data["test_fraction"], split_seed=data["split_seed"], **data["source_kwargs"]
    )
    split = (arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test)
    results: dict[str, Any] = {
        "data": data, "epochs": epochs, "seeds": seeds, "num_train": len(arrays.y_train),
        "num_test": len(arrays.y_test), "linear_pixels": [], "small_cnn": [],
    }  # fmt: skip
    for seed in seeds:
        torch.manual_seed(seed)
        linear = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(arrays.input_shape)), arrays.num_classes))
        results["linear_pixels"].append(train_and_test(linear, *split, epochs=epochs, lr=1e-3, seed=seed))
        torch.manual_seed(seed)
        cnn = small_cnn(arrays.num_classes)
        results["small_cnn"].append(train_and_test(cnn, *split, epochs=epochs, lr=3e-3, seed=seed))
    for key in ("linear_pixels", "small_cnn"):
        results[f"{key}_mean"] = float(np.mean(results[key]))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = headroom(mini_data_config(), args.seeds, args.epochs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if k != "data"}))


if __name__ == "__main__":
    main()
