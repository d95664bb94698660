"""`python -m common.results.summary`: the confirmatory verdicts of every committed table, per paper and in
total, read from `results/<key>/<scale>/manifest.json`."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common.config import REPO_ROOT
from common.results.claims import VERDICTS

COLUMNS = ("held", "failed", "inconclusive", "not evaluated")


def collect(results_root: Path) -> list[tuple[str, str, Counter, Counter]]:
    """(paper, scale, confirmatory counts, exploratory counts) per committed manifest."""
    rows = []
    for path in sorted(results_root.glob("*/*/manifest.json")):
        manifest = json.loads(path.read_text())
        claims = manifest.get("claims")
        if claims is None:
            continue  # results from before claims had verdicts with intervals
        confirmatory = Counter(c["status"] for c in claims if c["confirmatory"])
        exploratory = Counter(c["status"] for c in claims if not c["confirmatory"])
        rows.append((manifest["paper"], manifest["scale"], confirmatory, exploratory))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    results_root = Path(args[0]) if args else REPO_ROOT / "results"
    rows = collect(results_root)
    console = Console(highlight=False)
    if not rows:
        console.print(f"no results with claim verdicts under {results_root}")
        return 1
    table = Table(title="Confirmatory claims (pre-registered), per paper", title_justify="left")
    table.add_column("paper", no_wrap=True)
    table.add_column("scale")
    for name in COLUMNS:
        table.add_column(name, justify="right")
    table.add_column("exploratory\n(not counted)\nh / f / i / n", justify="right", no_wrap=True)
    total = Counter()
    for paper, scale, confirmatory, exploratory in rows:
        total.update(confirmatory)
        shown = " / ".join(str(exploratory[v]) for v in VERDICTS)
        table.add_row(paper, scale, *(str(confirmatory[v]) for v in VERDICTS), shown)
    table.add_section()
    table.add_row("total", "", *(f"[bold]{total[v]}[/bold]" for v in VERDICTS), "")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
