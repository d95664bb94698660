"""`make list`: every paper with its family, tables, mini run time and confirmatory verdicts (from its
committed manifest), and what its paper scale needs (GPUs, hub data and weights, inputs made by hand).

Read from `conf/papers/` and `results/` only: nothing runs."""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from common.config import REPO_ROOT
from common.errors import UserError
from common.results.paper_spec import FAMILIES, PaperSpec, available_papers, load_paper

HUB_KEYS = ("hub_id", "dataset", "pretrained", "tokenizer")  # config keys that name a hub repository
WEIGHT_KEYS = ("pretrained", "tokenizer")
INPUT_SUFFIXES = ("_dir", "_path", "_file", "runs")  # config keys that name a file a user must provide


@dataclass
class PaperEntry:
    paper: PaperSpec
    mini_tables: list[str]
    paper_tables: list[str]
    run_seconds: float | None  # sum of the committed mini runs' wall times
    verdicts: Counter
    gpus: int = 0
    hub: set[str] = field(default_factory=set)
    hand_made: set[str] = field(default_factory=set)


def _manifest(results_root: Path, key: str, scale: str) -> dict[str, Any] | None:
    path = results_root / key / scale / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _walk(node: Any, prefix: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{prefix}{key}.")
    yield prefix.rstrip("."), node


def paper_scale_needs(cfg: DictConfig) -> tuple[int, set[str], set[str]]:
    """(GPUs per run, hub repositories, keys of inputs to make by hand) of a composed paper-scale config."""
    trainer = cfg.get("trainer") or {}
    devices = trainer.get("devices", 1)
    gpus = int(devices) * int(trainer.get("num_nodes", 1) or 1) if isinstance(devices, int) else 1
    hub, hand_made = set(), set()
    for group in ("data", "model"):
        node = cfg.get(group)
        container = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else {}
        for path, value in _walk(container, f"{group}."):
            name = path.rsplit(".", 1)[-1]
            # Data sets are named <org>/<name>; weights may be a bare hub name (bert-base-uncased).
            if name in HUB_KEYS and isinstance(value, str) and ("/" in value or name in WEIGHT_KEYS):
                hub.add(value)
            if name.endswith(INPUT_SUFFIXES) and (
                value is None or (isinstance(value, dict) and None in value.values())
            ):
                hand_made.add(path)
    return gpus, hub, hand_made


def collect(
    results_root: Path, compose_paper_scale: bool = True, keys: list[str] | None = None
) -> list[PaperEntry]:
    from common.config import compose_run_configs
    from common.reproduce import run_overrides

    entries = []
    for key in keys or available_papers():
        paper = load_paper(key)
        manifest = _manifest(results_root, key, "mini")
        runs = (manifest or {}).get("runs", [])
        seconds = sum(r.get("wall_time_s") or 0.0 for r in runs) if runs else None
        verdicts = Counter(c["status"] for c in (manifest or {}).get("claims", []) if c.get("confirmatory"))
        entry = PaperEntry(
            paper,
            [t.id for t in paper.tables.values() if "mini" in t.scales],
            [t.id for t in paper.tables.values() if "paper" in t.scales],
            seconds,
            verdicts,
        )
        if compose_paper_scale:
            for table in paper.tables.values():
                if "paper" not in table.scales:
                    continue
                row, column = table.cells()[0]
                (cfg,) = compose_run_configs([run_overrides(paper, table, row, column, 0, "paper")])
                gpus, hub, hand_made = paper_scale_needs(cfg)
                entry.gpus = max(entry.gpus, gpus)
                entry.hub |= hub
                entry.hand_made |= hand_made
        entries.append(entry)
    return entries


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def render(entries: list[PaperEntry], console: Console) -> None:
    table = Table(title="Papers: committed mini results", title_justify="left")
    table.add_column("paper", no_wrap=True)
    table.add_column("tables\nmini/paper", justify="center")
    table.add_column("mini runs", justify="right", no_wrap=True)
    for verdict in ("held", "failed", "inconclusive"):
        table.add_column(verdict, justify="right")
    needs = Table(title="Paper scale: what a run needs", title_justify="left")
    needs.add_column("paper", no_wrap=True)
    needs.add_column("GPUs", justify="right")
    needs.add_column("hub data and weights")
    needs.add_column("inputs made by hand (see the paper's README)")
    total = Counter()
    for family in FAMILIES:
        members = [e for e in entries if e.paper.family == family]
        if not members:
            continue
        table.add_row(f"[bold]{family}[/bold]", "", "", "", "", "")
        for entry in members:
            total.update(entry.verdicts)
            table.add_row(
                f"  {entry.paper.key}",
                f"{len(entry.mini_tables)}/{len(entry.paper_tables)}",
                _minutes(entry.run_seconds),
                *(str(entry.verdicts[v]) for v in ("held", "failed", "inconclusive")),
            )
            if entry.paper_tables:
                needs.add_row(
                    entry.paper.key,
                    str(entry.gpus) if entry.gpus else "CPU",
                    ", ".join(sorted(entry.hub)) or "-",
                    ", ".join(sorted(entry.hand_made)) or "-",
                )
    table.add_section()
    table.add_row(
        f"{len(entries)} papers",
        "",
        _minutes(sum(e.run_seconds or 0 for e in entries)),
        *(f"[bold]{total[v]}[/bold]" for v in ("held", "failed", "inconclusive")),
    )
    console.print(table)
    console.print(
        "mini runs: the committed runs' training time (results/<key>/mini/manifest.json); verdicts: its "
        "confirmatory claims. `make reproduce PAPER=<key>` runs a paper, `PAPER=all` all (`FAMILY=<family>`: "
        "one family)."
    )
    console.print(needs)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    results_root = Path(args[0]) if args else REPO_ROOT / "results"
    console = Console(highlight=False)
    try:
        render(collect(results_root), console)
    except UserError as err:
        Console(stderr=True).print(f"error: {err}", markup=False)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
