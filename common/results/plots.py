"""One figure per table, readable at a glance: grouped bars (mean ± std over seeds) with the paper's
numbers as filled, dark-edged markers above them, a y-range fitted to the values, the legend outside the
bars; optionally learning curves of one column; and a panel of the table's claims, each comparison's
estimate with its 95% interval beside what the claim needs."""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from common.results.aggregate import TableResult  # noqa: E402

PANEL_WIDTH = 6.2  # inches per panel
VERDICT_COLOURS = {"held": "#1b7f3b", "failed": "#b3261e", "inconclusive": "#8a6d00"}


def plot_table(result: TableResult, path: Path, claims: Sequence = ()) -> None:
    """Write the table's figure; `claims` are its evaluated claims (`ClaimResult`) at this scale."""
    fig = table_figure(result, claims)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def table_figure(result: TableResult, claims: Sequence = ()) -> plt.Figure:
    checks = _claim_checks(claims)
    if result.spec.rate is not None:
        fig, axes = plt.subplots(1, 1 + bool(checks), figsize=(7 + 4.5 * bool(checks), 4.4), squeeze=False)
        _plot_rates(result, axes[0, 0])
    else:
        panels = 1 + bool(result.spec.curves) + bool(checks)
        fig, axes = plt.subplots(1, panels, figsize=(PANEL_WIDTH * panels, 4.4), squeeze=False)
        _plot_bars(result, axes[0, 0])
        if result.spec.curves:
            _plot_curves(result, axes[0, 1])
    if checks:
        _plot_claims(checks, axes[0, -1])
    fig.tight_layout()
    return fig


def _title(text: str, width: int = 60) -> str:
    return textwrap.fill(text, width=width)


def fitted_range(values: Sequence[float]) -> tuple[float, float]:
    """A y-range around `values`: from zero when zero is near (bars read as proportions), else cut to the
    values with a margin, so gaps of a point or two between tall bars stay visible."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    span = high - low or abs(high) or 1.0
    if low >= 0 and low < 0.5 * high:
        return 0.0, high + 0.08 * span
    if high <= 0 and high > 0.5 * low:
        return low - 0.08 * span, 0.0
    return low - 0.15 * span, high + 0.15 * span


def _plot_bars(result: TableResult, ax: plt.Axes) -> None:
    spec = result.spec
    rows, columns = list(spec.rows), list(spec.columns)
    width = 0.8 / len(rows)
    x = np.arange(len(columns))
    colours = plt.get_cmap("tab10").colors
    shown: list[float] = []
    any_reported = False
    for i, row in enumerate(rows):
        stats = [result.stats(row, c) for c in columns]
        means = [s.mean if s.n else np.nan for s in stats]
        stds = [s.std if s.n > 1 else 0.0 for s in stats]
        offset = x - 0.4 + width * (i + 0.5)
        colour = colours[i % len(colours)]
        ax.bar(offset, means, width, yerr=stds, capsize=2, label=row, color=colour, zorder=2)
        shown += [m - s for m, s in zip(means, stds, strict=True)] + [
            m + s for m, s in zip(means, stds, strict=True)
        ]
        reported = [spec.reported_for(row, c) for c in columns]
        points = [(o, r.value) for o, r in zip(offset, reported, strict=True) if r is not None]
        if points:
            any_reported = True
            shown += [value for _, value in points]
            ax.scatter(
                [o for o, _ in points],
                [value for _, value in points],
                marker="D",
                s=42,
                facecolors=[colour],
                edgecolors="black",
                linewidths=1.2,
                zorder=5,
            )
    ax.set_ylim(*fitted_range(shown))
    ax.set_xticks(
        x, columns, rotation=20 if len(columns) > 4 else 0, ha="right" if len(columns) > 4 else "center"
    )
    ax.set_ylabel(spec.metric_label)
    ax.set_title(_title(f"{spec.id} ({result.scale}): {spec.title}"), fontsize=9)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    handles, labels = ax.get_legend_handles_labels()
    if any_reported:
        handles.append(
            Line2D(
                [],
                [],
                marker="D",
                linestyle="",
                markerfacecolor="white",
                markeredgecolor="black",
                markersize=7,
            )
        )
        labels.append("paper's number (its row's colour)")
    ax.legend(
        handles,
        labels,
        fontsize=7,
        ncols=min(len(labels), 3),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16 if len(columns) <= 4 else -0.24),
        frameon=False,
    )


def _claim_checks(claims: Sequence) -> list[tuple[str, object]]:
    """(label, check) of every comparison with a finite estimate, confirmatory claims first."""
    out = []
    for claim in sorted(claims, key=lambda c: not c.confirmatory):
        for number, check in enumerate(claim.checks):
            if math.isfinite(check.interval.estimate):
                tag = "" if claim.confirmatory else " (expl.)"
                suffix = f" [{number + 1}]" if len(claim.checks) > 1 else ""
                out.append((f"{claim.claim.id}{suffix}{tag}", check))
    return out


def _threshold(needs: str) -> float | None:
    match = re.match(r"\s*[<>]=?\s*([-+0-9.eE]+)", needs or "")
    try:
        return float(match.group(1)) if match else None
    except ValueError:
        return None


def _plot_claims(checks: list[tuple[str, object]], ax: plt.Axes) -> None:
    """Each comparison: its estimate and 95% interval (colour: verdict) and what it needs (a tick)."""
    ys = np.arange(len(checks))[::-1]
    for y, (_, check) in zip(ys, checks, strict=True):
        interval, colour = check.interval, VERDICT_COLOURS.get(check.verdict, "#555")
        low = interval.low if math.isfinite(interval.low) else interval.estimate
        high = interval.high if math.isfinite(interval.high) else interval.estimate
        ax.errorbar(
            interval.estimate,
            y,
            xerr=[[interval.estimate - low], [high - interval.estimate]],
            fmt="o",
            color=colour,
            capsize=3,
        )
        needed = _threshold(check.needs)
        if needed is not None:
            ax.plot([needed, needed], [y - 0.35, y + 0.35], color="black", linewidth=1.5)
    ax.axvline(0.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_yticks(ys, [textwrap.shorten(label, 38, placeholder="…") for label, _ in checks], fontsize=7)
    ax.set_ylim(-0.7, len(checks) - 0.3)
    ax.set_xlabel(
        "estimate (difference or value), 95% interval; black tick: what the claim needs", fontsize=8
    )
    ax.set_title("claims: held (green), failed (red), inconclusive (amber)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)


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
    ax.set_title(_title(f"{metric} per epoch at {column}"), fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, frameon=False)
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
    ax.set_title(_title(f"{spec.id} ({result.scale}): {spec.title}"), fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(alpha=0.3, which="both")
