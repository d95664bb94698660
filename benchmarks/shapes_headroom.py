"""The headroom of the generated shapes set (common/data/shapes.py): accuracy of a linear classifier on raw
pixels against a small CNN trained with labels, and the time to generate the set.

    python -m benchmarks.shapes_headroom [--num-classes 10] [--num-samples 12000] [--epochs 15]

Writes benchmarks/results/shapes_headroom_<device>.{md,csv}."""

from __future__ import annotations

import argparse
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.data.shapes import ShapesConfig, generate_shapes
from common.data.sources import stratified_split

RESULTS = Path(__file__).parent / "results"


def small_cnn(num_classes: int, width: int = 32) -> nn.Module:
    """Three conv blocks and a linear head: about 0.1 M parameters at width 32."""

    def block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )

    return nn.Sequential(
        block(3, width),
        block(width, 2 * width),
        block(2 * width, 2 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )


def train_and_test(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 128,
    seed: int = 0,
) -> float:
    """Test accuracy (%) after `epochs` of Adam with a cosine schedule on in-memory tensors."""
    torch.manual_seed(seed)
    xs, ys = torch.from_numpy(x_train), torch.from_numpy(y_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(xs) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xs))
        for start in range(0, len(xs), batch_size):
            batch = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(model(xs[batch]), ys[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        predicted = torch.cat(
            [model(torch.from_numpy(x_test[i : i + 1024])).argmax(1) for i in range(0, len(x_test), 1024)]
        )
    return float((predicted.numpy() == y_test).mean() * 100)


def headroom(config: ShapesConfig, epochs: int, test_fraction: float = 0.25) -> dict[str, float]:
    started = time.perf_counter()
    images, labels = generate_shapes(config)
    generate_s = time.perf_counter() - started
    data = stratified_split(images, labels, test_fraction, config.seed)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(data.input_shape)), config.num_classes))
    linear_acc = train_and_test(
        linear, data.x_train, data.y_train, data.x_test, data.y_test, epochs=epochs, lr=1e-3
    )
    cnn_acc = train_and_test(
        small_cnn(config.num_classes),
        data.x_train,
        data.y_train,
        data.x_test,
        data.y_test,
        epochs=epochs,
        lr=3e-3,
    )
    return {"generate_s": generate_s, "linear_pixels_acc": linear_acc, "small_cnn_acc": cnn_acc}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args(argv)
    config = ShapesConfig(num_classes=args.num_classes, num_samples=args.num_samples)
    result = headroom(config, args.epochs)
    device = f"cpu-{platform.machine()}"
    header = "| classes | images | generate (s) | linear on pixels (%) | small CNN (%) | epochs |"
    row = (
        f"| {config.num_classes} | {config.num_samples} | {result['generate_s']:.1f} | "
        f"{result['linear_pixels_acc']:.1f} | {result['small_cnn_acc']:.1f} | {args.epochs} |"
    )
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"shapes_headroom_{device}"
    stem.with_suffix(".md").write_text(
        f"# Shapes headroom ({device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{datetime.now(UTC):%Y-%m-%d})\n\n`python -m benchmarks.shapes_headroom "
        f"--num-classes {args.num_classes} --num-samples {args.num_samples} --epochs {args.epochs}`\n\n"
        f"{header}\n|---|---|---|---|---|---|\n{row}\n"
    )
    stem.with_suffix(".csv").write_text(
        "num_classes,num_samples,generate_s,linear_pixels_acc,small_cnn_acc,epochs\n"
        f"{config.num_classes},{config.num_samples},{result['generate_s']:.2f},"
        f"{result['linear_pixels_acc']:.2f},{result['small_cnn_acc']:.2f},{args.epochs}\n"
    )
    print(header, row, sep="\n")


if __name__ == "__main__":
    main()
