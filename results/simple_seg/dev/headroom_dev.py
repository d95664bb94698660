"""Development check of the mini setting (not part of the harness; run by hand): stage 1 (CE + L_con on the
weak masks) and the fully supervised ceiling for one variant of the proxy on development seeds, e.g.
``python results/simple_seg/dev/headroom_dev.py D '["data.polygon_scale=0.6"]' 0``. Its logs lie beside it."""

import json
import os
import sys
import time

import numpy as np
import torch

from common.config import compose_run_config
from common.run import execute

ROWS = {
    "stage1": ["method.stop_after=stage1"],
    "ceiling": [
        "method.stop_after=stage1",
        "method.supervision=ground_truth",
        "method.contrastive_weight=0.0",
    ],
}


def main(name: str, extra: list[str], seeds: list[int]) -> None:
    os.environ.setdefault("PNU_OUTPUT_ROOT", "/work/out_simple_seg_dev")
    torch.set_num_threads(1)
    dice = {}
    for seed in seeds:
        for row, overrides in ROWS.items():
            start = time.time()
            base = ["experiment=simple_seg/stage_ablation", "scale=mini", f"seed={seed}"]
            cfg = compose_run_config([*base, *overrides, *extra, "logger=none", "runtime.progress=false"])
            metrics = execute(cfg).metrics
            dice[row, seed] = metrics["test/dice"]
            initial = metrics.get("train/initial_dice", float("nan"))
            took = time.time() - start
            print(f"{name} seed={seed} {row}: dice={dice[row, seed]:.2f} initial={initial:.1f} ({took:.0f}s)")
    for row in ROWS:
        values = [dice[row, s] for s in seeds]
        spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
        print(f"{name} {row}: mean {np.mean(values):.2f} sd {spread:.2f} {[f'{v:.2f}' for v in values]}")
    gaps = [dice["ceiling", s] - dice["stage1", s] for s in seeds]
    print(f"{name} gap ceiling-stage1: mean {np.mean(gaps):.2f} {[f'{g:.2f}' for g in gaps]}")


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]), [int(s) for s in (sys.argv[3:] or ["0,1,2"])[0].split(",")])
