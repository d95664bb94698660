"""`make reproduce PAPER=<key>`: run every table of a paper and compare it with the paper.

Expands each table into cells x seeds, skips runs whose complete record has the same config hash, launches
the rest as one Hydra multirun (local, submitit_local or slurm launcher), then writes
`results/<key>/<scale>/`: per table `.md`, `.csv` and `.png`, `claims.md` and `manifest.json`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from common.checks import (
    LOGGERS,
    check_launcher,
    check_run_config,
    check_wandb_credentials,
    check_writable,
    one_line,
)
from common.config import CONFIG_DIR, REPO_ROOT, compose_run_config, compose_run_configs, register_resolvers
from common.errors import UserError
from common.results.aggregate import TableResult, to_markdown, write_csv
from common.results.claims import (
    FAILED,
    HELD,
    INCONCLUSIVE,
    NOT_EVALUATED,
    ClaimResult,
    claims_markdown,
    evaluate_claim,
    tally,
    tally_text,
)
from common.results.paper_spec import FAMILIES, PaperSpec, TableSpec, available_papers, load_paper
from common.results.provenance import code_hashes
from common.results.record import (
    NON_SEMANTIC_KEYS,
    RECORD_NAME,
    RunRecord,
    config_hash,
    git_state,
    read_record,
    training_config,
)

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False, soft_wrap=True)
LAUNCHERS = ("local", "submitit_local", "slurm")


@dataclass
class PlannedRun:
    table: str
    row: str
    column: str
    seed: int
    overrides: list[str]
    run_dir: Path
    config_hash: str
    paper_code_hash: str | None = None
    record: RunRecord | None = field(default=None, repr=False)
    training: str = ""  # what the run trains (`training_key`): cells of one training share it
    devices: int = 1  # trainer.devices: the GPUs (and SLURM tasks) a run asks for
    committed: bool = False  # its record comes from the committed results (`adopt_committed_runs`)

    @property
    def done(self) -> bool:
        """A complete record of this config, made by the paper's current code."""
        return self.record is not None and self.record.complete and self.matches(self.record)

    def matches(self, record: RunRecord) -> bool:
        return record.config_hash == self.config_hash and record.paper_code_hash == self.paper_code_hash

    def refresh(self) -> None:
        record = read_record(self.run_dir)
        self.record = record if record is not None and record.config_hash == self.config_hash else None


DEFAULT_SEEDS = 3
# Committed tables are confirmatory runs at seeds never used while developing: 1000, 1001, ...
CONFIRMATORY_SEED_START = 1000


def confirmatory_seeds(paper: PaperSpec) -> list[int]:
    """The default seeds of `make reproduce`: 1000 + i for the paper's seed count (its `seeds:`, else 3), so
    a default run measures the committed table's runs."""
    count = paper.seeds if isinstance(paper.seeds, int) else len(paper.seeds or []) or DEFAULT_SEEDS
    return [CONFIRMATORY_SEED_START + i for i in range(count)]


def quick_look_reason(
    paper: PaperSpec,
    seeds: list[int],
    overrides: list[str],
    rows: list[str] | None,
    columns: list[str] | None,
    runs: list[PlannedRun],
) -> str | None:
    """Why this reproduction may not write the committed `results/` (None: it may). Only a full run of every
    table at the confirmatory seeds, without overrides that change what is computed, writes there."""
    semantic = [
        o for o in overrides if o.lstrip("+~").split("=", 1)[0].split(".")[0] not in NON_SEMANTIC_KEYS
    ]
    if rows or columns:
        return "a subset of rows or columns"
    if semantic:
        return f"overrides {semantic}"
    if seeds != confirmatory_seeds(paper):
        return f"seeds {seeds} (the committed tables use {confirmatory_seeds(paper)})"
    not_done = sum(not run.done for run in runs)
    if not_done:
        return f"{not_done} of {len(runs)} runs without a complete record"
    return None


def _as_seed(value: Any) -> int:
    """An integer seed from an int or a string of digits; anything else (1.5, 'abc', True) is refused."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(value)
    return int(value.strip()) if isinstance(value, str) else value


def parse_seeds(seeds: Any) -> list[int]:
    """A count n means seeds 0..n-1; a list (or "1,5,7") is used as given."""
    hint = "use a count (SEEDS=3: seeds 0, 1, 2) or a list of integers (SEEDS=1000,1001,1002)"
    try:
        if isinstance(seeds, ListConfig | list | tuple):
            values = [_as_seed(s) for s in seeds]
        elif isinstance(seeds, str) and "," in seeds:
            values = [_as_seed(s) for s in seeds.split(",") if s.strip()]
        else:
            count = _as_seed(seeds)
            if count < 1:
                raise ValueError(seeds)
            values = list(range(count))
    except ValueError:
        raise UserError(
            f"seeds must be a positive count or a list of integer seeds, got {seeds!r}; {hint}"
        ) from None
    if not values or len(set(values)) != len(values):
        raise UserError(f"seeds must be distinct and at least one, got {values}; {hint}")
    return values


def override_value(value: Any) -> str:
    """A Python value as a Hydra override value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if text and all(ch.isalnum() or ch in "_-./" for ch in text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def run_overrides(
    paper: PaperSpec, table: TableSpec, row: str, column: str, seed: int, scale: str
) -> list[str]:
    overrides = [f"experiment={table.experiment}", f"scale={scale}", f"seed={seed}"]
    overrides += [f"cell.row={override_value(row)}", f"cell.column={override_value(column)}"]
    overrides += [f"{k}={override_value(v)}" for k, v in table.cell_overrides_for(row, column, scale).items()]
    return overrides


def _compose_table(table: TableSpec, cells: list[tuple[str, str]], overrides: list[list[str]]) -> list:
    """The run configs of a table's cells x seeds, each checked; a cell whose config does not compose, or
    holds a value no run can use, is named in one line."""
    per_cell = len(overrides) // max(len(cells), 1)
    starts = range(0, len(overrides), max(per_cell, 1))
    try:
        configs = compose_run_configs(overrides)
    except (HydraException, OmegaConfBaseException):
        for (row, column), start in zip(cells, starts, strict=True):
            try:
                compose_run_configs(overrides[start : start + per_cell])
            except (HydraException, OmegaConfBaseException) as err:
                raise UserError(
                    f"table {table.id}, cell ({row}, {column}): the config does not compose: {one_line(err)}"
                ) from None
        raise
    for index, cfg in enumerate(configs):
        row, column = cells[index // max(per_cell, 1)]
        check_run_config(cfg, where=f"table {table.id}, cell ({row}, {column}): ")
    return configs


def check_launcher_args(launcher: str, hydra_args: list[str]) -> None:
    """The launcher's overrides compose (an unknown `hydra.launcher.*` key is named before any run)."""
    if not hydra_args:
        return
    from hydra import compose

    compose_run_config([])  # initializes Hydra
    try:
        compose("config", overrides=[f"hydra/launcher={launcher}", *hydra_args], return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(f"HYDRA_ARGS: {one_line(err)}") from None


def check_labels(
    paper: PaperSpec, tables: list[TableSpec], rows: list[str] | None, columns: list[str] | None
) -> None:
    """Every chosen row and column label exists in at least one of `tables` (the tables being reproduced)."""
    for label, chosen in (("row", rows), ("column", columns)):
        known = {name: None for table in tables for name in getattr(table, f"{label}s")}
        unknown = sorted(set(chosen or []) - set(known))
        if unknown:
            where = f"table {tables[0].id} has" if len(tables) == 1 else f"the tables of {paper.key} have"
            raise UserError(f"{where} no {label} {unknown}; the {label}s: {list(known)}")


def plan(
    paper: PaperSpec,
    tables: list[TableSpec],
    scale: str,
    seeds: list[int],
    common: list[str],
    rows: list[str] | None = None,
    columns: list[str] | None = None,
) -> list[PlannedRun]:
    """Every (cell, seed) of the tables, with its composed config hash and any existing matching record."""
    planned = []
    paper_code_hash = code_hashes(paper.key).paper
    check_labels(paper, tables, rows, columns)
    for table in tables:
        cells = [
            (row, column)
            for row, column in table.cells()
            if not ((rows and row not in rows) or (columns and column not in columns))
        ]
        overrides = [
            run_overrides(paper, table, row, column, seed, scale) + common
            for row, column in cells
            for seed in seeds
        ]
        for (row, column, seed), run_args, cfg in zip(
            [(r, c, s) for r, c in cells for s in seeds],
            overrides,
            _compose_table(table, cells, overrides),
            strict=True,
        ):
            run = PlannedRun(
                table.id,
                row,
                column,
                seed,
                run_args,
                Path(cfg.runtime.run_dir),
                config_hash(cfg),
                paper_code_hash,
                training=training_key(cfg),
                devices=int(devices) if isinstance(devices := cfg.trainer.get("devices"), int) else 1,
            )
            run.refresh()
            if run.record is None:
                _set_aside_unreadable(run.run_dir)
                if _adopt_legacy_folder(run):
                    run.refresh()
            planned.append(run)
    return planned


def _adopt_legacy_folder(run: PlannedRun) -> bool:
    """Runs recorded before run folders were named by their config (`seed_<n>/`) are moved to their folder
    when their record holds this very config, so finished runs survive the upgrade."""
    legacy = run.run_dir.with_name(f"seed_{run.seed}")
    record = read_record(legacy) if legacy != run.run_dir else None
    if record is None or record.config_hash != run.config_hash or run.run_dir.exists():
        return False
    legacy.rename(run.run_dir)
    return True


def _set_aside_unreadable(run_dir: Path) -> None:
    """A record that exists but cannot be read (cut short, not UTF-8, not a record) counts as missing: it
    is renamed `result.json.unreadable` and the run is redone."""
    path = run_dir / RECORD_NAME
    if path.is_file():
        aside = path.with_name(f"{RECORD_NAME}.unreadable")
        path.replace(aside)
        console.print(f"[yellow]unreadable record set aside[/yellow] ({aside}); the run is redone")


def local_parallelism(memory_per_run_gb: float = 1.5) -> int:
    """How many runs fit this machine at once: one per core, and `memory_per_run_gb` each in the memory
    now available (a mini run's process takes about 1.1 GB)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        pages, page_size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        by_memory = int(pages * page_size / (memory_per_run_gb * 2**30))
    except (ValueError, OSError, AttributeError):
        by_memory = cores
    return max(1, min(cores, by_memory))


def new_attempt_dir(output_root: Path, prefix: str) -> Path:
    """A fresh `attempts/<prefix>-<time>` folder, created here: two reproduce processes started in the same
    second (a table split over processes) get folders of their own, never one shared."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    (output_root / "attempts").mkdir(parents=True, exist_ok=True)
    for suffix in ("", *(f"-{n}" for n in range(2, 1000))):
        attempt = output_root / "attempts" / f"{prefix}-{stamp}{suffix}"
        try:
            attempt.mkdir()
        except FileExistsError:
            continue
        return attempt
    raise UserError(f"could not create a new attempt folder under {output_root / 'attempts'}; clear old ones")


def training_key(cfg: DictConfig) -> str:
    """A short hash of what a run trains (`common.results.record.training_config`: its config without where it
    writes, which cell it fills and which metric it reports). Cells with one key are one training: columns
    reporting several metrics of it, tables that share trainings (`shares_training_with`)."""
    text = json.dumps(training_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def training_waves(runs: list[PlannedRun]) -> list[list[PlannedRun]]:
    """`runs` as launch waves: first one run per distinct training, then the runs that read a training another
    run makes. With a parallel launcher (a SLURM array) the second wave finds every shared training stored
    instead of waiting on it (or computing it twice); one wave when every run trains its own."""
    first: dict[str, PlannedRun] = {}
    for run in runs:
        first.setdefault(run.training, run)
    lead = list(first.values())
    rest = [run for run in runs if first[run.training] is not run]
    return [wave for wave in (lead, rest) if wave]


def launch(
    pending: list[PlannedRun], *, launcher: str, log_path: Path, hydra_args: list[str], sweep_dir: Path
) -> int:
    """Run `pending` as one Hydra multirun in a child process, with a progress bar over runs."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    runs_file = log_path.with_suffix(".runs.json")
    runs_file.write_text(json.dumps([run.overrides for run in pending], indent=1))
    command = [
        sys.executable,
        "-m",
        "common.run",
        "--multirun",
        "hydra/sweeper=run_list",
        f"hydra.sweeper.runs_file={runs_file}",
        f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={sweep_dir}",
        *hydra_args,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with log_path.open("w") as log, Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"runs ({launcher})", total=len(pending))
        child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        with _stops_forwarded_to(child):
            while child.poll() is None:
                time.sleep(0.5)
                progress.update(task, completed=_count_finished(pending))
        progress.update(task, completed=_count_finished(pending))
    return child.returncode


class _Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT while a sweep runs."""


@contextlib.contextmanager
def _stops_forwarded_to(child: subprocess.Popen, grace_s: float = 10.0):
    """SIGTERM and SIGINT stop `child` and every process under it (submitit's workers too): TERM, then
    KILL after `grace_s`; then KeyboardInterrupt. No run of the sweep outlives `reproduce`. (The sweep
    stays in this process group, so a kill of the whole group, as a preemption does, reaches it too.)"""

    def stop(signum, frame):
        raise _Stopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except KeyboardInterrupt:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        _stop_tree(child.pid, grace_s)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_tree(pid: int, grace_s: float) -> None:
    import psutil

    try:
        parent = psutil.Process(pid)
        processes = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


def _count_finished(runs: list[PlannedRun]) -> int:
    finished = 0
    for run in runs:
        record = read_record(run.run_dir)
        finished += record is not None and run.matches(record)
    return finished


def write_results(
    paper: PaperSpec,
    tables: list[TableSpec],
    runs: list[PlannedRun],
    scale: str,
    seeds: list[int],
    results_dir: Path,
    min_seeds: int,
) -> tuple[list[TableResult], list[ClaimResult]]:
    from common.results.plots import plot_table

    results_dir.mkdir(parents=True, exist_ok=True)
    table_results, claim_results = compute_results(tables, runs, scale, min_seeds)
    for result in table_results:
        table = result.spec
        (results_dir / f"{table.id}.md").write_text(to_markdown(result))
        write_csv(result, results_dir / f"{table.id}.csv")
        own = [c for c in claim_results if c.table == table.id]
        plot_table(result, results_dir / f"{table.id}.png", own)
    (results_dir / "claims.md").write_text(claims_markdown(paper.title, scale, claim_results))
    manifest_path = results_dir / "manifest.json"
    previous = _read_manifest(manifest_path)
    manifest = build_manifest(paper, tables, runs, scale, seeds, claim_results)
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    if previous is not None:
        _report_changed_values(changed_values(previous, manifest), previous)
    return table_results, claim_results


def compute_results(
    tables: list[TableSpec], runs: list[PlannedRun], scale: str, min_seeds: int
) -> tuple[list[TableResult], list[ClaimResult]]:
    """Each table's aggregate of the runs' records and its claims' verdicts at `scale`."""
    table_results, claim_results = [], []
    for table in tables:
        records = [run.record for run in runs if run.table == table.id and run.record is not None]
        result = TableResult(table, scale, records)
        table_results.append(result)
        claim_results += [evaluate_claim(c, result, min_seeds) for c in table.claims if c.scale == scale]
    return table_results, claim_results


def adopt_committed_runs(runs: list[PlannedRun], paper: str, scale: str, manifest_path: Path) -> int:
    """Runs without a record of their own whose committed result (`manifest_path`) holds the same config,
    made by the same paper code, count as complete with the committed values: a fresh clone aggregates
    the committed tables instead of recomputing them (`force=true` reruns). Returns how many."""
    manifest = _read_manifest(manifest_path)
    if not manifest:
        return 0
    committed = {(r["table"], r["row"], r["column"], int(r["seed"])): r for r in manifest.get("runs", [])}
    adopted = 0
    for run in runs:
        entry = committed.get((run.table, run.row, run.column, run.seed))
        if run.record is not None or entry is None or entry.get("status") != "complete":
            continue
        if entry.get("config_hash") != run.config_hash or entry.get("paper_code_hash") != run.paper_code_hash:
            continue
        run.record = RunRecord(
            paper=paper,
            table=run.table,
            scale=scale,
            seed=run.seed,
            cell={"row": run.row, "column": run.column},
            status="complete",
            config_hash=run.config_hash,
            metrics=dict(entry.get("metrics") or {}),
            wall_time_s=float(entry.get("wall_time_s") or 0.0),
            git_sha=entry.get("git_sha"),
            git_dirty=entry.get("git_dirty"),
            paper_code_hash=entry.get("paper_code_hash"),
            common_code_hash=entry.get("common_code_hash"),
            extra={"committed_result": str(manifest_path)},
        )
        run.committed = True
        adopted += 1
    return adopted


def _portable(override: str) -> str | None:
    """Overrides as a reader can reuse them: the machine's output folder is left out."""
    return None if override.startswith("runtime.output_root=") else override


def build_manifest(
    paper: PaperSpec,
    tables: list[TableSpec],
    runs: list[PlannedRun],
    scale: str,
    seeds: list[int],
    claims: list[ClaimResult],
) -> dict[str, Any]:
    """Every run's values and provenance, the code it ran, and the claims' verdicts with intervals."""
    metric_of = {t.id: t.metric for t in tables}
    # The metrics a reader needs to check the tables and claims against the runs.
    metrics_of = {t.id: sorted({t.metric, *(c.metric for c in t.claims if c.metric)}) for t in tables}
    sha, dirty = git_state()
    hashes = code_hashes(paper.key)
    records = [r.record for r in runs if r.record is not None]
    return {
        "paper": paper.key,
        "scale": scale,
        "seeds": seeds,
        "git_sha": sha,
        "git_dirty": bool(dirty) or any(rec.git_dirty is not False for rec in records),
        **hashes.as_dict(),
        "claims_totals": dict(tally(claims)),
        "claims": [c.as_dict() for c in claims],
        "runs": [
            {
                "table": r.table,
                "row": r.row,
                "column": r.column,
                "seed": r.seed,
                "metric": metric_of[r.table],
                "value": r.record.metrics.get(metric_of[r.table]) if r.record else None,
                "metrics": {m: r.record.metrics.get(m) for m in metrics_of[r.table]} if r.record else {},
                "status": r.record.status if r.record else "missing",
                "config_hash": r.config_hash,
                "paper_code_hash": r.record.paper_code_hash if r.record else None,
                "common_code_hash": r.record.common_code_hash if r.record else None,
                "git_sha": r.record.git_sha if r.record else None,
                "git_dirty": r.record.git_dirty if r.record else None,
                "wall_time_s": r.record.wall_time_s if r.record else None,
                "overrides": [o for o in map(_portable, r.overrides) if o is not None],
            }
            for r in runs
        ],
    }


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def changed_values(
    previous: dict[str, Any], current: dict[str, Any], rel_tol: float = 1e-9
) -> list[tuple[tuple[str, str, str, int], float, float]]:
    """Runs whose table metric differs from the previous manifest's at the same config hash: (key, old, new).

    Same config, different number: the code or the environment changed since the previous results."""

    def values(manifest: dict[str, Any]) -> dict[tuple[str, str, str, int], tuple[str, float]]:
        out = {}
        for run in manifest.get("runs", []):
            if isinstance(run.get("value"), int | float):
                key = (run["table"], run["row"], run["column"], int(run["seed"]))
                out[key] = (run["config_hash"], float(run["value"]))
        return out

    before, after = values(previous), values(current)
    changed = []
    for key, (config, new) in after.items():
        if key in before and before[key][0] == config:
            old = before[key][1]
            if abs(new - old) > rel_tol * max(1.0, abs(old)) and not (old != old and new != new):
                changed.append((key, old, new))
    return changed


def _report_changed_values(
    changed: list[tuple[tuple[str, str, str, int], float, float]], previous: dict[str, Any]
) -> None:
    if not changed:
        return
    key, old, new = max(changed, key=lambda item: abs(item[2] - item[1]))
    when = f"git {str(previous.get('git_sha', '?'))[:8]}"
    console.print(
        f"[yellow]{len(changed)} run(s) measured a different value than the previous results in this "
        f"folder ({when}) with the same config[/yellow]; largest change {old:g} -> {new:g} at "
        f"{' / '.join(map(str, key))}. The code or the environment changed since: check the claims."
    )


def print_results(tables: list[TableResult], claims: list[ClaimResult]) -> None:
    for result in tables:
        spec = result.spec
        table = Table(
            title=f"{spec.id}: {spec.title} [{result.scale}] — {spec.metric_label}", title_justify="left"
        )
        table.add_column("")
        for column in spec.columns:
            table.add_column(column, justify="right")
        for row in spec.rows:
            cells = []
            for column in spec.columns:
                text = result.stats(row, column).text(spec.digits)
                reported = spec.reported_for(row, column)
                if reported is not None:
                    text += f"\n[dim]paper {reported.value:g}[/dim]"
                if result.failed(row, column):
                    text += "\n[red]failed[/red]"
                cells.append(text)
            table.add_row(row, *cells)
        console.print(table)
    if claims:
        style = {HELD: "green", FAILED: "red", INCONCLUSIVE: "yellow", NOT_EVALUATED: "dim"}
        for title, group in (
            ("confirmatory claims (pre-registered; counted)", [c for c in claims if c.confirmatory]),
            ("exploratory claims (not counted)", [c for c in claims if not c.confirmatory]),
        ):
            if not group:
                continue
            table = Table(title=title, title_justify="left")
            for name in ("claim", "verdict", "measured (95% CI)"):
                table.add_column(name, overflow="fold")
            for item in group:
                table.add_row(item.claim.text, f"[{style[item.status]}]{item.status}[/]", item.detail)
            console.print(table)
        console.print(f"confirmatory: {tally_text(tally(claims))}")


def reproduce(cfg: DictConfig) -> int:
    if cfg.scale not in ("mini", "paper"):
        raise UserError(f"scale must be mini or paper, got {cfg.scale!r}")
    if cfg.launcher not in LAUNCHERS:
        raise UserError(f"launcher must be one of {LAUNCHERS}, got {cfg.launcher!r}")
    check_launcher(cfg.launcher)
    if cfg.logger is not None and cfg.logger not in LOGGERS:
        raise UserError(f"logger must be one of {LOGGERS}, got {cfg.logger!r}")
    paper = load_paper(str(cfg.paper))
    all_tables = paper.tables_at(cfg.scale)
    selected = paper.tables_at(cfg.scale, cfg.table)
    # A paper whose claims need more seeds than the usual 3 says so in its config (`seeds:`).
    seeds = parse_seeds(cfg.seeds) if cfg.seeds is not None else confirmatory_seeds(paper)
    output_root = Path(cfg.output_root).resolve()
    logger = cfg.logger or ("csv" if cfg.scale == "mini" else "wandb")
    check_wandb_credentials(logger)
    check_writable(output_root, "output folder", "set PNU_OUTPUT_ROOT (or output_root=) to a writable folder")
    check_launcher_args(cfg.launcher, [str(a) for a in cfg.hydra_args])
    common = [
        f"runtime.output_root={output_root}",
        f"logger={logger}",
        "runtime.progress=false",
        *(["runtime.force=true"] if cfg.force else []),
        *[str(o) for o in cfg.overrides],
    ]
    rows = list(cfg.rows) if cfg.rows else None
    columns = list(cfg.columns) if cfg.columns else None
    started = time.perf_counter()
    check_labels(paper, selected, rows, columns)
    runs = plan(paper, all_tables, cfg.scale, seeds, common, rows, columns)
    overrides = [str(o) for o in cfg.overrides]
    if quick_look_reason(paper, seeds, overrides, rows, columns, runs=[]) is None:  # once all runs finish
        check_writable(
            Path(cfg.results_root) / paper.key / cfg.scale,
            "results folder",
            "set results_root= to a writable one",
        )
    console.rule(f"[bold]{paper.key}[/bold]: {paper.title}")
    committed_manifest = Path(cfg.results_root) / paper.key / cfg.scale / "manifest.json"
    adopted = 0 if cfg.force else adopt_committed_runs(runs, paper.key, cfg.scale, committed_manifest)
    if adopted:
        console.print(
            f"{adopted} runs are complete in the committed results ({committed_manifest}): their values are "
            'used as they are; ARGS="force=true" reruns them'
        )
    chosen = {t.id for t in selected}
    to_run = [r for r in runs if r.table in chosen and (cfg.force or not r.done)]
    trainings = len({run.training for run in to_run})
    console.print(
        f"{len(runs)} runs in {len(all_tables)} table(s) at scale [bold]{cfg.scale}[/bold], seeds {seeds}; "
        f"{len(runs) - len(to_run)} complete, {len(to_run)} to run"
        + (f" ({trainings} distinct trainings)" if trainings < len(to_run) else "")
    )
    if logger == "wandb" and len(to_run) < len(runs):
        console.print(
            f"[yellow]{len(runs) - len(to_run)} complete runs are not logged to W&B now[/yellow]: each run "
            "logs to the logger it ran with (their records are in the output folder). To log them to W&B, "
            'rerun them: ARGS="force=true"'
        )
    exit_code = 0
    in_flight: list[PlannedRun] = []
    if cfg.launcher == "slurm" and to_run:
        to_run, in_flight = _submit_to_slurm(paper, cfg, to_run, output_root)
    if to_run:
        # One folder per attempt: its log, its run list and Hydra's sweep folder.
        attempt = new_attempt_dir(output_root, f"{paper.key}-{cfg.scale}")
        log_path, sweep_dir = attempt / "reproduce.log", attempt / "sweep"
        # Locally runs go one after another, so the trainings simply come first; a parallel launcher gets them
        # as a wave of their own.
        waves = training_waves(to_run)
        if cfg.launcher == "local":
            waves = [[run for wave in waves for run in wave]]
        elif cfg.launcher == "submitit_local":
            # A process per run: at most `max_parallel` at once, or the machine runs out of memory.
            cap = int(cfg.max_parallel) if cfg.max_parallel is not None else local_parallelism()
            waves = [wave[start : start + cap] for wave in waves for start in range(0, len(wave), cap)]
        try:
            code, failed_log = 0, log_path
            for number, wave in enumerate(waves, start=1):
                suffix = f"-wave{number}" if len(waves) > 1 else ""
                wave_log = log_path.with_name(f"{log_path.stem}{suffix}{log_path.suffix}")
                wave_code = launch(
                    wave,
                    launcher=cfg.launcher,
                    log_path=wave_log,
                    hydra_args=[str(a) for a in cfg.hydra_args],
                    sweep_dir=sweep_dir.with_name(sweep_dir.name + suffix),
                )
                if wave_code and not code:
                    code, failed_log = wave_code, wave_log
        except KeyboardInterrupt:
            missing = sum(not r.done for r in (_refreshed(to_run)))
            console.print(
                f"[yellow]interrupted[/yellow]: {missing} runs missing; the same command finishes them."
            )
            return 130
        for run in to_run:
            run.refresh()
        if code != 0:
            console.print(f"[red]the sweep exited with code {code}[/red]; its log: {failed_log}")
            console.print(_tail(failed_log))
            exit_code = 1
    failed = [r for r in runs if r.record is not None and not r.record.complete]
    waiting = {id(r) for r in in_flight}
    missing = [r for r in runs if r.table in chosen and r.record is None and id(r) not in waiting]
    quick_look = quick_look_reason(paper, seeds, overrides, rows, columns, runs)
    if adopted and all(run.committed for run in runs if run.record is not None):
        # Nothing measured here: the committed results are current; print them, rewrite nothing.
        tables, claims = compute_results(all_tables, runs, cfg.scale, int(cfg.min_seeds_for_claims))
        print_results(tables, claims)
        console.print(f"the committed results in {committed_manifest.parent} are current; nothing written")
        return 1 if [r for r in runs if r.table in chosen and r.record is None] else 0
    if quick_look is None:
        results_dir = Path(cfg.results_root) / paper.key / cfg.scale
    else:
        results_dir = output_root / "tables" / paper.key / cfg.scale
        console.print(
            f"[yellow]a quick look[/yellow] ({quick_look}): tables go to {results_dir}; "
            f"{Path(cfg.results_root) / paper.key / cfg.scale} is written only by a full run at the "
            "confirmatory seeds"
        )
    tables, claims = write_results(
        paper, all_tables, runs, cfg.scale, seeds, results_dir, int(cfg.min_seeds_for_claims)
    )
    print_results(tables, claims)
    if logger == "wandb":
        from common.results.wandb_tables import log_tables

        log_tables(paper.key, cfg.scale, tables, claims, results_dir, output_root / "wandb-tables")
        console.print(f"tables logged to W&B (project pnu-repro, groups {paper.key}/<table>/{cfg.scale})")
    for run in failed:
        console.print(
            f"[red]failed[/red] {run.table} / {run.row} / {run.column} / seed {run.seed}: "
            f"{run.record.reason} ({run.run_dir})"
        )
    if in_flight:
        console.print(
            f"{len(in_flight)} runs are on SLURM (queued or running): run the same command again to "
            "aggregate them once they finish; it submits nothing twice."
        )
    if missing:
        console.print(f"[red]{len(missing)} runs left no record[/red] (see the sweep log above).")
    console.print(f"results in {results_dir} ({time.perf_counter() - started:.1f} s)")
    return 1 if failed or missing else exit_code


def _submit_to_slurm(
    paper: PaperSpec, cfg: DictConfig, to_run: list[PlannedRun], output_root: Path
) -> tuple[list[PlannedRun], list[PlannedRun]]:
    """Submit the runs not already queued or running as one job array and return at once: (runs left for
    this process to run, none with SLURM), (runs now on SLURM)."""
    from common import slurm

    busy = slurm.queued_or_running(to_run)
    if busy:
        console.print(f"{len(busy)} runs are already queued or running on SLURM: not submitted again")
    busy_ids = {id(run) for run in busy}
    pending = [run for run in to_run if id(run) not in busy_ids]
    if pending:
        attempt = new_attempt_dir(output_root, f"{paper.key}-{cfg.scale}")
        job = slurm.submit(pending, attempt, [str(a) for a in cfg.hydra_args], f"pnu-{paper.key}-{cfg.scale}")
        console.print(
            f"submitted {len(pending)} runs as SLURM job array [bold]{job}[/bold] (job script and logs in "
            f"{attempt}); status: squeue -j {job}"
        )
    return [], busy + pending


def _refreshed(runs: list[PlannedRun]) -> list[PlannedRun]:
    for run in runs:
        run.refresh()
    return runs


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-lines:])
    except OSError:
        return ""


def parse_options(argv: list[str]) -> DictConfig:
    """`key=value` options (YAML values) over conf/reproduce.yaml; unknown keys are an error."""
    defaults = OmegaConf.load(CONFIG_DIR / "reproduce.yaml")
    OmegaConf.set_struct(defaults, True)
    options = list(defaults.keys())
    for arg in argv:
        if "=" not in arg:
            raise UserError(f"options are key=value, got {arg!r}; options: {', '.join(options)}")
        key = arg.split("=", 1)[0]
        if key not in options:
            raise UserError(f"unknown option {key!r}; options: {', '.join(options)}")
    try:
        cfg = OmegaConf.merge(defaults, OmegaConf.from_dotlist(argv))
    except OmegaConfBaseException as err:
        raise UserError(f"malformed option: {one_line(err)}") from None
    if OmegaConf.is_missing(cfg, "paper") or cfg.paper in (None, ""):
        papers = ", ".join(available_papers())
        raise UserError(
            f"choose a paper: paper=<key> (make reproduce PAPER=<key>), or paper=all; papers: {papers}"
        )
    _check_option_types(cfg)
    return cfg


def _check_option_types(cfg: DictConfig) -> None:
    """Each option holds the kind of value conf/reproduce.yaml describes."""

    def fail(key: str, expected: str) -> None:
        value = OmegaConf.select(cfg, key)
        raise UserError(f"{key}={value!r}: expected {expected} (conf/reproduce.yaml)")

    for key in ("paper", "scale", "launcher"):
        if not isinstance(cfg[key], str):
            fail(key, "a name")
    for key in ("table", "logger", "family"):
        if cfg[key] is not None and not isinstance(cfg[key], str):
            fail(key, "a name or null")
    if not isinstance(cfg.force, bool):
        fail("force", "true or false")
    if not (isinstance(cfg.min_seeds_for_claims, int) and not isinstance(cfg.min_seeds_for_claims, bool)):
        fail("min_seeds_for_claims", "a positive integer")
    if cfg.min_seeds_for_claims < 1:
        fail("min_seeds_for_claims", "a positive integer")
    parallel = cfg.max_parallel
    if parallel is not None and not (
        isinstance(parallel, int) and not isinstance(parallel, bool) and parallel >= 1
    ):
        fail("max_parallel", "a positive integer or null")
    for key in ("rows", "columns"):
        if cfg[key] is not None and not isinstance(cfg[key], ListConfig):
            fail(key, "a list of labels, e.g. [sym-40%]")
    for key in ("overrides", "hydra_args"):
        if not isinstance(cfg[key], ListConfig) or not all("=" in str(item) for item in cfg[key]):
            fail(key, "a list of key=value overrides, e.g. ['trainer.max_epochs=5']")


def reproduce_all(cfg: DictConfig) -> int:
    """`paper=all` (`family=<family>`: one family): each paper in turn, each resumable as one paper is; a
    paper whose runs fail does not stop the others. Exit code: the worst of the papers'."""
    if cfg.family is not None and cfg.family not in FAMILIES:
        raise UserError(f"family must be one of {FAMILIES}, got {cfg.family!r}")
    if cfg.table is not None:
        raise UserError("table= names a table of one paper; with paper=all leave it out")
    keys = [key for key in available_papers() if cfg.family is None or load_paper(key).family == cfg.family]
    codes: dict[str, int] = {}
    for key in keys:
        one = cfg.copy()
        one.paper = key
        codes[key] = reproduce(one)
        if codes[key] == 130:
            break
    summary = Table(title=f"paper=all{f' family={cfg.family}' if cfg.family else ''}", title_justify="left")
    summary.add_column("paper")
    summary.add_column("result")
    for key, code in codes.items():
        summary.add_row(key, "[green]done[/green]" if code == 0 else f"[red]exit {code}[/red] (see above)")
    console.print(summary)
    return max(codes.values(), default=0)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_options(sys.argv[1:] if argv is None else argv)
        if cfg.paper == "all" or cfg.family is not None:
            return reproduce_all(cfg)
        return reproduce(cfg)
    except UserError as err:
        errors.print(Text.assemble(("error: ", "red"), str(err)))
        return 2


register_resolvers()

if __name__ == "__main__":
    sys.exit(main())
