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
    if spec.rate is not None:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        _plot_rates(result, ax)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return
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


def _plot_rates(result: TableResult, ax: plt.Axes) -> None:
    """Mean ± std against x on log-log axes, with the theorem's slope drawn through each row's fitted line."""
    spec, rate = result.spec, result.spec.rate
    columns = sorted(rate.x, key=rate.x.get)
    for row in spec.rows:
        stats = [result.stats(row, c) for c in columns]
        points = [(rate.x[c], s) for c, s in zip(columns, stats, strict=True) if s.n and s.mean > 0]
        if not points:
            continue
        xs = np.asarray([x for x, _ in points])
        means = np.asarray([s.mean for _, s in points])
        stds = np.asarray([s.std for _, s in points])
        slope = result.slope(row)
        label = f"{row} (fit {slope.mean:.2f})" if slope.n else row
        line = ax.errorbar(xs, means, yerr=stds, marker="o", capsize=2, label=label)
        theory = rate.theory.get(row)
        if theory is not None and len(xs) >= 2:
            # Anchor the theorem's power law at the geometric centre of the measured points.
            centre_x, centre_y = np.exp(np.log(xs).mean()), np.exp(np.log(means).mean())
            ax.plot(
                xs,
                centre_y * (xs / centre_x) ** theory,
                linestyle="--",
                color=line.lines[0].get_color(),
                alpha=0.7,
                label=f"{row} ({rate.theory_label} {theory:g})",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(rate.xlabel)
    ax.set_ylabel(spec.metric_label)
    ax.set_title(f"{spec.id} ({result.scale}): {spec.title}", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
