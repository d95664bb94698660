"""One figure per table: grouped bars (mean ± std over seeds) with the paper's numbers as markers, and
optionally learning curves of one column."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common.results.aggregate import TableResult  # noqa: E402


def plot_table(result: TableResult, path: Path) -> None:
    spec = result.spec
    rows, columns = list(spec.rows), list(spec.columns)
    has_curves = bool(spec.curves)
    fig, axes = plt.subplots(1, 2 if has_curves else 1, figsize=(11 if has_curves else 7, 3.8), squeeze=False)
    ax = axes[0, 0]
    width = 0.8 / len(rows)
    x = np.arange(len(columns))
    for i, row in enumerate(rows):
        stats = [result.stats(row, c) for c in columns]
        means = [s.mean for s in stats]
        stds = [s.std if s.n > 1 else 0.0 for s in stats]
        offset = x - 0.4 + width * (i + 0.5)
        bars = ax.bar(offset, means, width, yerr=stds, capsize=2, label=row)
        reported = [spec.reported_for(row, c) for c in columns]
        rx = [o for o, r in zip(offset, reported, strict=True) if r is not None]
        ry = [r.value for r in reported if r is not None]
        if rx:
            ax.scatter(
                rx,
                ry,
                marker="D",
                s=18,
                facecolors="none",
                edgecolors=bars.patches[0].get_facecolor(),
                zorder=3,
                label=f"{row} (paper)",
            )
    ax.set_xticks(x, columns, rotation=20 if len(columns) > 4 else 0)
    ax.set_ylabel(spec.metric_label)
    ax.set_title(f"{spec.id} ({result.scale}): {spec.title}", fontsize=9)
    ax.legend(fontsize=7, ncols=2)
    ax.grid(axis="y", alpha=0.3)
    if has_curves:
        _plot_curves(result, axes[0, 1])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_curves(result: TableResult, ax: plt.Axes) -> None:
    spec = result.spec
    metric, column = spec.curves["metric"], spec.curves["column"]
    for row in spec.rows:
        runs = [
            r.curves.get(metric, [])
            for r in result.records
            if r.complete and r.cell.get("row") == row and r.cell.get("column") == column
        ]
        runs = [c for c in runs if c]
        if not runs:
            continue
        length = min(len(c) for c in runs)
        curves = np.asarray([c[:length] for c in runs])
        mean, std = curves.mean(0), curves.std(0)
        epochs = np.arange(1, length + 1)
        ax.plot(epochs, mean, label=row)
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(spec.curves.get("label", metric))
    ax.set_title(f"{metric} per epoch at {column}", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
