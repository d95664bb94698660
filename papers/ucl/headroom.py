"""The mini setting's headroom on development seeds: the baseline (SimCLR) and the label-oracle rows (FN-masked
InfoNCE, SupCon) of the objectives table, both evaluations of each frozen encoder, from the run records of a
development sweep. Written to choose the setting before the DCL/HCL rows were run; not a confirmatory result.

    python -m common.reproduce paper=ucl seeds=3 "rows=[SimCLR (InfoNCE),FN-masked InfoNCE,SupCon]" columns=[linear]
    python -m papers.ucl.headroom --runs $PNU_OUTPUT_ROOT --out results/ucl/headroom

The linear column's record holds both accuracies of the encoder (`test/knn_acc`, `test/linear_acc`); the kNN
column would pretrain the same encoder again."""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from common.results.record import read_record

ROWS = ("SimCLR (InfoNCE)", "FN-masked InfoNCE", "SupCon")
METRICS = {"kNN": "test/knn_acc", "linear": "test/linear_acc"}
DEV_SEEDS = (0, 1, 2)


def collect(runs_root: Path, seeds: tuple[int, ...] = DEV_SEEDS) -> dict[str, dict[int, dict]]:
    """Complete mini records of the objectives table's linear column under `runs_root`, by row and seed
    (a row and seed with several records must agree on the config hash)."""
    found: dict[str, dict[int, dict]] = {}
    for path in sorted(Path(runs_root).glob("ucl/mini/objectives/**/result.json")):
        record = read_record(path.parent)
        if record is None or not record.complete or record.seed not in seeds:
            continue
        row, column = record.cell.get("row"), record.cell.get("column")
        if row not in ROWS or column != "linear":
            continue
        previous = found.setdefault(row, {}).get(record.seed)
        if previous and previous["config_hash"] != record.config_hash:
            raise SystemExit(f"{row} seed {record.seed}: records of two configs under {runs_root}")
        found[row][record.seed] = {
            "config_hash": record.config_hash,
            "git_sha": record.git_sha,
            "git_dirty": record.git_dirty,
            "wall_time_s": record.wall_time_s,
            **{label: record.metrics[key] for label, key in METRICS.items()},
        }
    return found


def write(found: dict[str, dict[int, dict]], out: Path) -> None:
    """headroom.md (mean ± std over seeds, per-seed values, gaps to SimCLR), headroom.csv and runs.json."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.json").write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")

    def mean_std(row: str, label: str) -> tuple[float, float, list[float]]:
        values = [found[row][s][label] for s in sorted(found[row])]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0, values

    with (out / "headroom.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "column", "mean", "std", "seeds", "values"])
        for row in ROWS:
            if row in found:
                for label in METRICS:
                    mean, std, values = mean_std(row, label)
                    seeds = " ".join(str(s) for s in sorted(found[row]))
                    writer.writerow([row, label, f"{mean:.2f}", f"{std:.2f}", seeds, " ".join(f"{v:.2f}" for v in values)])
    lines = [
        "# ucl mini: headroom on development seeds (not a confirmatory result)",
        "",
        "Baseline and label-oracle rows of the objectives table on development seeds, frozen-encoder test accuracy",
        "(%), mean ± std over seeds (per-seed values in brackets), and the gap to SimCLR. Written by",
        "`python -m papers.ucl.headroom` from the records in `runs.json` (config hashes, git sha).",
        "",
        "| row | seeds | kNN | linear | kNN − SimCLR | linear − SimCLR |",
        "|---|---|---|---|---|---|",
    ]
    base = {label: mean_std(ROWS[0], label)[0] for label in METRICS} if ROWS[0] in found else None
    for row in ROWS:
        if row not in found:
            continue
        cells = []
        for label in METRICS:
            mean, std, values = mean_std(row, label)
            cells.append(f"{mean:.2f} ± {std:.2f} ({', '.join(f'{v:.2f}' for v in values)})")
        gaps = [f"{mean_std(row, label)[0] - base[label]:+.2f}" if base else "" for label in METRICS]
        seeds = ", ".join(str(s) for s in sorted(found[row]))
        lines.append(f"| {row} | {seeds} | {cells[0]} | {cells[1]} | {gaps[0]} | {gaps[1]} |")
    (out / "headroom.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="the output root of the development sweep")
    parser.add_argument("--out", type=Path, default=Path("results/ucl/headroom"))
    args = parser.parse_args()
    found = collect(args.runs)
    if not found:
        raise SystemExit(f"no complete development records of {ROWS} (linear column) under {args.runs}")
    write(found, args.out)
    print((args.out / "headroom.md").read_text())


if __name__ == "__main__":
    main()
