"""The layout's dependency rules (DESIGN.md, Layout): papers -> common only; common never imports a paper
(paper discovery goes through the registry); no paper imports another paper or the run entry code; a module of
common/ serves several papers, common itself, or a family that is on its way (named below)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from common.config import REPO_ROOT
from common.registry import _BUILTIN_MODULES

ENTRY_MODULES = ("common.run", "common.reproduce", "common.experiment")
# Modules of common/ that one landed paper uses today and a planned table needs next (the issue that does).
AWAITED_BY = {
    "common.data.partition": "the unl cross-paper table (DivideMix's loss-GMM partition row), issue 20",
    "common.lit.cross_val": "the unl cross-paper table (Confident Learning's prune-and-retrain), issue 20",
    "common.data.retrieval": "the contrastive family's hard- and false-negative retrieval papers, issue 16",
}
# The registry imports the `papers` package itself to discover every paper (never one by name).
DISCOVERY = ("common/registry.py", "papers")


def _python_files(folder: str) -> list[Path]:
    return sorted(p for p in (REPO_ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names a file imports (relative ones resolved; `from a import b` gives a and a.b)."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _paper_of(path: Path) -> str:
    return path.relative_to(REPO_ROOT / "papers").parts[0]


def test_no_paper_imports_another_paper_or_the_run_entry():
    problems = []
    for path in _python_files("papers"):
        own = _paper_of(path)
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "papers" and len(parts) > 1 and parts[1] != own:
                problems.append(f"{path.relative_to(REPO_ROOT)} imports {name} (another paper)")
            if any(name == entry or name.startswith(entry + ".") for entry in ENTRY_MODULES):
                problems.append(f"{path.relative_to(REPO_ROOT)} imports {name} (the run entry code)")
    assert not problems, "\n".join(problems)


def test_common_imports_no_paper():
    problems = []
    for path in _python_files("common"):
        for name in _imports(path):
            if name.split(".")[0] == "papers" and (path.relative_to(REPO_ROOT).as_posix(), name) != DISCOVERY:
                problems.append(f"{path.relative_to(REPO_ROOT)} imports {name}")
    assert not problems, "\n".join(problems)


def test_common_modules_serve_more_than_one_paper():
    """A module of common/ that exactly one paper imports (and nothing in common/) belongs in that paper,
    unless a planned table needs it (AWAITED_BY)."""
    modules = {_module_name(p) for p in _python_files("common")}
    users: dict[str, set[str]] = defaultdict(set)
    for path in _python_files("papers"):
        for name in _imports(path):
            if name in modules:
                users[name].add(_paper_of(path))
    used_in_common = {name for path in _python_files("common") for name in _imports(path) if name in modules}
    used_in_common |= set(_BUILTIN_MODULES)  # registered data modules and methods, chosen by configs
    single = {m: sorted(p) for m, p in users.items() if len(p) == 1 and m not in used_in_common}
    unexplained = {m: p for m, p in single.items() if m not in AWAITED_BY}
    assert not unexplained, (
        f"move these into their paper, or say which planned table needs them: {unexplained}"
    )
    stale = sorted(m for m in AWAITED_BY if m not in single)
    assert not stale, f"AWAITED_BY lists modules that are no longer single-paper (drop them): {stale}"
