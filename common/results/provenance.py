"""Which code produced a run: hashes of the paper's package and of the files of `common/` it runs.

The rule (stable, so a hash changes only when the code does):
- `paper_code_hash`: every `.py` file under `papers/<key>/`, and under `papers/<other>/` for each paper its
  `paper.yaml` lists in `methods_from` (a cross-paper table runs those papers' registered methods).
- `common_code_hash`: the `.py` files of `common/` reached by following `import common...` statements
  (anywhere in a file, lazy imports included) from the paper's files, from the run entry (`common.run`) and
  from the modules that register common's built-in methods and data modules (`common.registry`), with the
  `__init__.py` of every package on the way.
Each hash is sha256 over the sorted `path NUL sha256(content)` lines, cut to 16 hex digits."""

from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from common.config import REPO_ROOT

RUN_ENTRY_MODULES = ("common.run",)


@dataclass(frozen=True)
class CodeHashes:
    paper: str
    common: str
    common_files: tuple[str, ...]

    def as_dict(self) -> dict[str, str]:
        return {"paper_code_hash": self.paper, "common_code_hash": self.common}


def _module_file(module: str, root: Path) -> Path | None:
    parts = module.split(".")
    as_file = root.joinpath(*parts).with_suffix(".py")
    if as_file.is_file():
        return as_file
    as_package = root.joinpath(*parts, "__init__.py")
    return as_package if as_package.is_file() else None


def _imported_modules(path: Path) -> set[str]:
    """Every `common...` module a file imports; `from common.x import y` counts `common.x.y` when y is a
    module, else `common.x`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "common")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "common":
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def common_closure(start_files: list[Path], extra_modules: tuple[str, ...], root: Path) -> list[Path]:
    """The files of `common/` reached from `start_files` and `extra_modules` by static imports."""
    seen: set[Path] = set()
    queue = [m for name in extra_modules for m in _with_parents(name)]
    for path in start_files:
        queue += [m for name in _imported_modules(path) for m in _with_parents(name)]
    while queue:
        module_file = _module_file(queue.pop(), root)
        if module_file is None or module_file in seen:
            continue
        seen.add(module_file)
        queue += [m for name in _imported_modules(module_file) for m in _with_parents(name)]
    return sorted(seen)


def files_hash(files: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        content = hashlib.sha256(path.read_bytes()).hexdigest()
        digest.update(f"{path.relative_to(root).as_posix()}\0{content}\n".encode())
    return digest.hexdigest()[:16]


def methods_from(paper: str, root: Path = REPO_ROOT) -> list[str]:
    """The other papers whose methods a paper's tables run (`methods_from` in its paper.yaml), if any."""
    path = root / "conf" / "papers" / paper / "paper.yaml"
    if not path.is_file():
        return []
    return list((yaml.safe_load(path.read_text()) or {}).get("methods_from") or [])


def paper_files(paper: str, root: Path = REPO_ROOT) -> list[Path]:
    """The paper's own `.py` files and those of the papers it takes methods from."""
    return sorted(
        path for key in (paper, *methods_from(paper, root)) for path in (root / "papers" / key).rglob("*.py")
    )


def code_hashes(paper: str, root: Path = REPO_ROOT) -> CodeHashes:
    """The code hashes of a paper's runs as the files are now (computed afresh on every call)."""
    from common.registry import _BUILTIN_MODULES

    own = paper_files(paper, root)
    common = common_closure(own, (*RUN_ENTRY_MODULES, *_BUILTIN_MODULES), root)
    return CodeHashes(
        files_hash(own, root),
        files_hash(common, root),
        tuple(p.relative_to(root).as_posix() for p in common),
    )


@cache
def code_hashes_at_start(paper: str) -> CodeHashes:
    """`code_hashes` once per process: a run records the code it was started with."""
    return code_hashes(paper)


RUN_FIELDS = ("value", "metrics", "status", "config_hash", "paper_code_hash", "common_code_hash", "git_dirty")


def manifest_problems(manifest: dict, current: CodeHashes) -> tuple[list[str], list[str]]:
    """(errors, notes) for a committed manifest against the code as it is now. Errors: a run without its
    values or provenance, an incomplete or dirty run, or a paper whose own code changed since. Notes: the
    tables to re-run because files of `common/` that the paper runs changed (the results may still hold)."""
    key, scale = manifest.get("paper"), manifest.get("scale")
    rerun = f"run `make reproduce PAPER={key} SCALE={scale}` on a clean tree and commit the results"
    errors: list[str] = []
    for run in manifest.get("runs", []):
        where = f"{run.get('table')} / {run.get('row')} / {run.get('column')} / seed {run.get('seed')}"
        missing = [name for name in RUN_FIELDS if name not in run]
        if missing or not isinstance(run.get("value"), int | float):
            errors.append(f"{key} {where}: the manifest lacks {missing or ['a numeric value']}; {rerun}")
        elif run["status"] != "complete":
            errors.append(f"{key} {where} is {run['status']}; {rerun}")
        elif run["git_dirty"] is not False:
            errors.append(f"{key} {where} was run from a dirty tree (git_dirty {run['git_dirty']}); {rerun}")
    paper_hashes = {run.get("paper_code_hash") for run in manifest.get("runs", [])}
    if paper_hashes != {current.paper}:
        sources = ", ".join(f"papers/{k}/" for k in (key, *methods_from(key)))
        errors.append(f"{key}: {sources} changed since its {scale} results were made; {rerun}")
    tables = sorted(
        {run["table"] for run in manifest.get("runs", []) if run.get("common_code_hash") != current.common}
    )
    notes = (
        [f"{key} ({scale}): files of common/ it runs changed since its results; re-run tables {tables}"]
        if tables
        else []
    )
    return errors, notes
