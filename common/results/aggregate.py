"""Records -> per-cell statistics (mean ± std over seeds) -> markdown / CSV tables."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.results.paper_spec import TableSpec
from common.results.record import RunRecord


@dataclass(frozen=True)
class CellStats:
    mean: float
    std: float
    n: int
    values: tuple[float, ...]

    def text(self, digits: int = 2) -> str:
        if self.n == 0:
            return "—"
        if self.n == 1:
            return f"{self.mean:.{digits}f} (n=1)"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


EMPTY = CellStats(math.nan, math.nan, 0, ())


def cell_stats(values: Iterable[float]) -> CellStats:
    """Mean and sample standard deviation (ddof=1; 0 for one value)."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return EMPTY
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return CellStats(float(arr.mean()), std, int(arr.size), tuple(float(v) for v in arr))


@dataclass
class TableResult:
    """A table's measured cells: stats[(row, column, metric)], plus the failed runs per cell."""

    spec: TableSpec
    scale: str
    records: list[RunRecord]

    def stats(self, row: str, column: str, metric: str | None = None) -> CellStats:
        metric = metric or self.spec.metric
        values = [
            r.metrics.get(metric)
            for r in self.records
            if r.complete and r.cell.get("row") == row and r.cell.get("column") == column
        ]
        return cell_stats(v for v in values if v is not None)

    def by_seed(self, row: str, column: str, metric: str | None = None) -> dict[int, float]:
        """The cell's finite values keyed by seed (complete runs only)."""
        metric = metric or self.spec.metric
        out = {}
        for r in self.records:
            if r.complete and r.cell.get("row") == row and r.cell.get("column") == column:
                value = r.metrics.get(metric)
                if value is not None and math.isfinite(value):
                    out[r.seed] = float(value)
        return out

    def slope(self, row: str, metric: str | None = None) -> CellStats:
        """Per-seed least-squares slope of log(metric) against log(x) over the columns of a rate table;
        seeds with fewer than two positive values are left out."""
        return cell_stats(self.slopes_by_seed(row, metric).values())

    def slopes_by_seed(self, row: str, metric: str | None = None) -> dict[int, float]:
        rate = self.spec.rate
        if rate is None:
            return {}
        metric = metric or self.spec.metric
        slopes = {}
        for seed in self.seeds():
            points = [
                (rate.x[str(r.cell.get("column"))], r.metrics.get(metric))
                for r in self.records
                if r.complete and r.seed == seed and r.cell.get("row") == row
                if r.cell.get("column") in rate.x
            ]
            points = [(x, y) for x, y in points if y is not None and math.isfinite(y) and y > 0]
            if len({x for x, _ in points}) >= 2:
                xs, ys = np.log([p[0] for p in points]), np.log([p[1] for p in points])
                slopes[seed] = float(np.polyfit(xs, ys, 1)[0])
        return slopes

    def failed(self, row: str, column: str) -> list[RunRecord]:
        return [
            r
            for r in self.records
            if not r.complete and r.cell.get("row") == row and r.cell.get("column") == column
        ]

    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.records})


def _reported_text(spec: TableSpec, row: str, column: str) -> str:
    reported = spec.reported_for(row, column)
    if reported is None:
        return ""
    return f"{reported.value:g}" + (f" ± {reported.std:g}" if reported.std is not None else "")


def to_markdown(result: TableResult) -> str:
    """The table as markdown: measured mean ± std over seeds, the paper's number beside it, sources below."""
    spec = result.spec
    rate = spec.rate
    extra = ["log-log slope (fit)", f"slope ({rate.theory_label})"] if rate else []
    lines = [
        f"### {spec.id}: {spec.title}",
        "",
        f"Metric: {spec.metric_label} (`{spec.metric}`), scale `{result.scale}`, "
        f"mean ± std over seeds {result.seeds()}. Cells read `ours / paper`; paper numbers are the paper's "
        "own setting (paper scale), shown at every scale for reference.",
        "",
        "| | " + " | ".join([*spec.columns, *extra]) + " |",
        "|---|" + "---|" * (len(spec.columns) + len(extra)),
    ]
    for row in spec.rows:
        cells = []
        for column in spec.columns:
            ours = result.stats(row, column).text(spec.digits)
            if result.failed(row, column):
                ours += f" ({len(result.failed(row, column))} failed)"
            paper = _reported_text(spec, row, column)
            cells.append(f"{ours} / {paper}" if paper else ours)
        if rate:
            theory = rate.theory.get(row)
            cells += [result.slope(row).text(max(spec.digits, 2)), "" if theory is None else f"{theory:g}"]
        lines.append(f"| **{row}** | " + " | ".join(cells) + " |")
    sources = sorted({r.source for r in spec.reported})
    if sources:
        lines += ["", "Paper numbers: " + "; ".join(sources) + "."]
    if spec.notes:
        lines += ["", spec.notes.strip()]
    return "\n".join(lines) + "\n"


CSV_FIELDS = [
    "paper_table",
    "scale",
    "row",
    "column",
    "metric",
    "mean",
    "std",
    "n",
    "seeds",
    "failed",
    "reported",
    "reported_std",
    "reported_source",
]


def write_csv(result: TableResult, path: Path) -> None:
    spec = result.spec
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row, column in spec.cells():
            stats = result.stats(row, column)
            reported = spec.reported_for(row, column)
            writer.writerow(
                {
                    "paper_table": spec.id,
                    "scale": result.scale,
                    "row": row,
                    "column": column,
                    "metric": spec.metric,
                    "mean": _num(stats.mean),
                    "std": _num(stats.std),
                    "n": stats.n,
                    "seeds": " ".join(str(s) for s in result.seeds()),
                    "failed": len(result.failed(row, column)),
                    "reported": reported.value if reported else "",
                    "reported_std": reported.std if reported and reported.std is not None else "",
                    "reported_source": reported.source if reported else "",
                }
            )
        if spec.rate:
            for row in spec.rows:
                stats = result.slope(row)
                theory = spec.rate.theory.get(row)
                writer.writerow(
                    {
                        "paper_table": spec.id,
                        "scale": result.scale,
                        "row": row,
                        "column": "log-log slope",
                        "metric": f"{spec.metric} vs {spec.rate.xlabel}",
                        "mean": _num(stats.mean),
                        "std": _num(stats.std),
                        "n": stats.n,
                        "seeds": " ".join(str(s) for s in result.seeds()),
                        "failed": 0,
                        "reported": "" if theory is None else theory,
                        "reported_std": "",
                        "reported_source": spec.rate.theory_label if theory is not None else "",
                    }
                )


def _num(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.4f}"
