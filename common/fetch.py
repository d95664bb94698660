"""`make fetch PAPER=<key> [TABLE=<id>]`: download what a paper-scale table reads from the HuggingFace hub
(data sets and pretrained weights) into the caches, on a machine with network, so compute nodes can run
with `HF_HUB_OFFLINE=1`.

Each distinct data and model setup of the table's paper-scale cells is built as a run would build it: the
data module's setup loads exactly the splits and configs the runs read, and the method's module loads its
pretrained weights. `dry_run=true` lists the hub repositories from the configs without downloading."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass

from omegaconf import DictConfig
from rich.console import Console

from common.errors import UserError

console = Console(highlight=False)


@dataclass
class Setup:
    """One distinct data and model setup of a table's paper-scale cells."""

    table: str
    cell: tuple[str, str]
    cfg: DictConfig


def paper_scale_setups(key: str, table: str | None = None) -> list[Setup]:
    from common.config import compose_run_configs
    from common.reproduce import run_overrides
    from common.results.listing import paper_scale_needs
    from common.results.paper_spec import load_paper

    paper = load_paper(key)
    setups, seen = [], set()
    for spec in paper.tables_at("paper", table):
        cells = spec.cells()
        configs = compose_run_configs([run_overrides(paper, spec, r, c, 0, "paper") for r, c in cells])
        for cell, cfg in zip(cells, configs, strict=True):
            # What decides the downloads: the data module, its hub config and the hub repositories of the
            # data and the model (label noise, seeds and schedules do not).
            what = [cfg.data.get("datamodule"), cfg.data.get("config"), sorted(paper_scale_needs(cfg)[1])]
            digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                setups.append(Setup(spec.id, cell, cfg))
    return setups


def fetch_setup(setup: Setup) -> None:
    """Build the setup's data (every split its runs read) and the method's module (its weights)."""
    from common.experiment import build_datamodule, build_module

    datamodule = build_datamodule(setup.cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    build_module(setup.cfg, datamodule)


def main(argv: list[str] | None = None) -> int:
    args = dict(arg.split("=", 1) for arg in (sys.argv[1:] if argv is None else argv) if "=" in arg)
    key, table = args.get("paper"), args.get("table") or None
    dry_run = args.get("dry_run", "false").lower() in ("1", "true", "yes")
    try:
        if not key:
            raise UserError("choose a paper: make fetch PAPER=<key> [TABLE=<id>]")
        setups = paper_scale_setups(key, table)
    except UserError as err:
        Console(stderr=True).print(f"error: {err}", markup=False)
        return 2
    if dry_run:
        from common.results.listing import paper_scale_needs

        needs = sorted({repo for s in setups for repo in paper_scale_needs(s.cfg)[1]})
        console.print(
            f"{key}: {len(setups)} distinct data/model setups read from the hub: {', '.join(needs)}"
        )
        return 0
    failed = 0
    for number, setup in enumerate(setups, start=1):
        where = f"[{number}/{len(setups)}] {setup.table} / {setup.cell[0]} / {setup.cell[1]}"
        try:
            fetch_setup(setup)
            console.print(f"{where}: cached")
        except UserError as err:
            failed += 1
            console.print(f"[red]{where}: not fetched[/red]: {err}")
    console.print(
        f"{len(setups) - failed} of {len(setups)} setups cached"
        + ("; compute nodes can now run with HF_HUB_OFFLINE=1" if not failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
