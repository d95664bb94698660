"""With `LOGGER=wandb`, each aggregated table goes to W&B as well: a run of job type `table` in the table's
group (`<paper>/<table>/<scale>`, beside the table's training runs) holding the table exactly as
`<table>.csv` (ours beside the paper's numbers), its claims with verdicts and intervals, and its figure."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from omegaconf import OmegaConf

from common.config import CONFIG_DIR

CLAIM_COLUMNS = ["claim", "confirmatory", "verdict", "comparison", "estimate", "low", "high", "needs"]


def log_tables(
    paper: str, scale: str, tables: list, claims: list, results_dir: Path, wandb_dir: Path
) -> list[str]:
    """Log every table of `tables` (TableResult) with its claims (ClaimResult); returns the W&B run ids."""
    import wandb

    settings = OmegaConf.load(CONFIG_DIR / "logger" / "wandb.yaml")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    wandb_dir.mkdir(parents=True, exist_ok=True)
    ids = []
    for result in tables:
        table = result.spec.id
        run_id = f"{paper}-{scale}-{table}-table"
        run = wandb.init(
            project=settings.project,
            entity=settings.get("entity"),
            group=f"{paper}/{table}/{scale}",
            job_type="table",
            name=f"{table} (table)",
            id=run_id,
            resume="allow",
            dir=str(wandb_dir),
            tags=[paper, scale, "table"],
        )
        with (results_dir / f"{table}.csv").open(newline="") as handle:
            reader = csv.DictReader(handle)
            rows = [list(line.values()) for line in reader]
            columns = list(reader.fieldnames or [])
        logged = {"table": wandb.Table(columns=columns, data=rows)}
        own = [c for c in claims if c.table == table]
        if own:
            logged["claims"] = wandb.Table(
                columns=CLAIM_COLUMNS,
                data=[
                    [
                        c.claim.id,
                        c.confirmatory,
                        c.status,
                        check.what,
                        check.interval.estimate,
                        check.interval.low,
                        check.interval.high,
                        check.needs,
                    ]
                    for c in own
                    for check in c.checks
                ],
            )
        figure = results_dir / f"{table}.png"
        if figure.is_file():
            logged["figure"] = wandb.Image(str(figure))
        run.log(logged)
        run.summary.update({f"claims/{c.claim.id}": c.status for c in own})
        run.finish()
        ids.append(run_id)
    return ids
