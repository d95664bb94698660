"""`python -m common.run_listed <runs.json> <index>`: the run at `index` of a list of override lists, as
`python -m common.run <overrides>` would run it (what a SLURM array task of `reproduce` executes)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    if len(argv) != 2 or not argv[1].isdigit():
        sys.exit("usage: python -m common.run_listed <runs.json> <index>")
    runs = json.loads(Path(argv[0]).read_text())
    index = int(argv[1])
    if not 0 <= index < len(runs):
        sys.exit(f"index {index} is outside the {len(runs)} runs of {argv[0]}")
    sys.argv = ["common.run", *runs[index]]
    runpy.run_module("common.run", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
