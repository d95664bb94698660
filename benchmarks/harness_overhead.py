"""Cost of the harness: one mini run through Hydra + Lightning (`common.run.execute`) against the same
training in a plain PyTorch loop (same data tensors, model, optimizer, epochs, per-epoch evaluation, threads).

    python -m benchmarks.harness_overhead [--repeats 3] [--epochs 100]

Writes benchmarks/results/harness_<device>.md and .csv. The target is a ratio of at most 1.5."""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
import torch.nn.functional as F

from common.config import compose_run_config
from common.experiment import build_backbone_for, build_datamodule, configure_runtime
from common.run import execute

RESULTS = Path(__file__).resolve().parent / "results"
OVERRIDES = [
    "experiment=elr/table1",
    "method=ce",
    "data.noise_type=symmetric",
    "data.noise_rate=0.4",
    "runtime.progress=false",
    "logger=none",
    "cell.row=bench",
    "cell.column=bench",
]


def plain_loop(cfg) -> float:
    """The same run as a hand-written loop; returns seconds for data set-up plus training."""
    configure_runtime(cfg.runtime.get("num_threads"))
    torch.manual_seed(int(cfg.seed))
    start = time.perf_counter()
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    model = build_backbone_for(cfg, datamodule)
    opt = cfg.optim.optimizer
    optimizer = torch.optim.SGD(
        model.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay
    )
    x, y = datamodule.train_x, torch.as_tensor(datamodule.train_labels)
    x_test, y_test = datamodule.test_x, torch.as_tensor(datamodule.test_labels)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    batch = int(cfg.data.batch_size)
    for _ in range(int(cfg.trainer.max_epochs)):
        model.train()
        for idx in torch.randperm(len(x), generator=generator).split(batch):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            (model(x_test).argmax(1) == y_test).float().mean().item()
    return time.perf_counter() - start


def harness(cfg) -> float:
    return execute(cfg).wall_time_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()
    rows = []
    with TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            cfg = compose_run_config(
                [
                    *OVERRIDES,
                    f"trainer.max_epochs={args.epochs}",
                    f"seed={repeat}",
                    f"runtime.output_root={tmp}",
                    "runtime.force=true",
                ]
            )
            plain = plain_loop(cfg)
            through_harness = harness(cfg)
            rows.append(
                {
                    "repeat": repeat,
                    "plain_s": plain,
                    "harness_s": through_harness,
                    "ratio": through_harness / plain,
                }
            )
            print(
                f"repeat {repeat}: plain {plain:.2f} s, harness {through_harness:.2f} s, "
                f"ratio {through_harness / plain:.2f}"
            )
    ratio = statistics.median(r["ratio"] for r in rows)
    on_cuda = torch.cuda.is_available()
    device = f"cuda-{torch.cuda.get_device_name(0)}" if on_cuda else f"cpu-{platform.machine()}"
    slug = device.replace(" ", "_")
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / f"harness_{slug}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("torch", "lightning", "hydra-core"))
    (RESULTS / f"harness_{slug}.md").write_text(
        "# Harness overhead\n\n"
        f"`{' '.join(['python -m benchmarks.harness_overhead', *sys.argv[1:]])}` on {device} "
        f"({torch.get_num_threads()} torch threads), {versions}; load average at the end "
        f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs (a shared machine slows "
        "both sides, the harness's many small calls more).\n\n"
        f"One mini run (ELR table 1 cell, CE, digits, MLP, {args.epochs} epochs, evaluation every epoch): "
        "data set-up plus training through Hydra + Lightning (`common.run.execute`, record written) against "
        "the same work in a plain PyTorch loop.\n\n"
        "| repeat | plain loop (s) | harness (s) | ratio |\n|---|---|---|---|\n"
        + "".join(
            f"| {r['repeat']} | {r['plain_s']:.2f} | {r['harness_s']:.2f} | {r['ratio']:.2f} |\n"
            for r in rows
        )
        + f"\nMedian ratio: **{ratio:.2f}** (target <= 1.5).\n"
    )
    print(f"median ratio {ratio:.2f} (target <= 1.5); written to {RESULTS}")


if __name__ == "__main__":
    main()
