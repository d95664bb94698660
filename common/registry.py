"""Name -> class registry for methods, data modules and losses.

Papers register their classes with the decorators below; configs refer to them by name. Discovery imports
every subpackage of `papers` (and `common`'s own registering modules) on first lookup, so common never
imports a paper by name.
"""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from common.errors import UserError

T = TypeVar("T")

KINDS = ("method", "datamodule", "loss")
_REGISTRY: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
_discovered = False

# Modules of common/ that register built-in entries.
_BUILTIN_MODULES = (
    "common.data.datamodule",
    "common.data.views",
    "common.data.pu",
    "common.lit.classification",
    "common.lit.contrastive",
    "common.lit.pu",
    "common.lit.recommender",
    "common.losses",
)


def register(kind: str, name: str) -> Callable[[T], T]:
    """Decorator: register a class or function under `name` for `kind` ("method", "datamodule", "loss")."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown registry kind {kind!r}; use one of {KINDS}")

    def decorator(obj: T) -> T:
        existing = _REGISTRY[kind].get(name)
        if existing is not None and existing is not obj:
            raise ValueError(
                f"{kind} {name!r} is registered twice "
                f"({_qualname(existing)} and {_qualname(obj)}); rename one"
            )
        _REGISTRY[kind][name] = obj
        return obj

    return decorator


def register_method(name: str) -> Callable[[T], T]:
    return register("method", name)


def register_datamodule(name: str) -> Callable[[T], T]:
    return register("datamodule", name)


def register_loss(name: str) -> Callable[[T], T]:
    return register("loss", name)


def discover() -> None:
    """Import common's registering modules and every `papers.<key>` package (each registers on import)."""
    global _discovered
    if _discovered:
        return
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    import papers

    for info in pkgutil.iter_modules(papers.__path__, prefix="papers."):
        if info.ispkg:
            importlib.import_module(info.name)
    _discovered = True


def lookup(kind: str, name: str) -> Any:
    """The object registered as `name`; a UserError listing the known names otherwise."""
    discover()
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY[kind])) or "(none)"
        raise UserError(f"unknown {kind} {name!r}; registered {kind}s: {known}") from None


def available(kind: str) -> list[str]:
    discover()
    return sorted(_REGISTRY[kind])


def is_known(kind: str, name: str) -> bool:
    """`name` is registered for `kind`: declared in the source, or registered at run time (a test's
    method, say); imports nothing."""
    return name in _REGISTRY[kind] or name in declared(kind)


def declared(kind: str) -> set[str]:
    """The names `kind` is registered under, read from the source without importing it (a fraction of a
    second, against seconds for `discover`): what the configs may name, e.g. `method=<name>` with no file.
    A name must be a string literal or a module-level string constant; a test keeps this equal to
    `available(kind)`."""
    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "papers").rglob("*.py"))
    for module in _BUILTIN_MODULES:
        path = root / module.replace(".", "/")
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
    names: set[str] = set()
    for path in files:
        if path.is_file():
            names |= _declared_in(str(path), os.stat(path).st_mtime_ns).get(kind, set())
    return names


@cache
def _declared_in(path: str, mtime: int) -> dict[str, set[str]]:
    """{kind: names} registered by the decorators of one source file; `mtime` keys the cache."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name) and isinstance(node.value.value, str)
    }
    found: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or not node.args:
            continue
        args = [
            constants.get(a.id) if isinstance(a, ast.Name) else getattr(a, "value", None) for a in node.args
        ]
        if node.func.id == "register" and len(args) == 2 and args[0] in KINDS:
            kind, name = args
        elif node.func.id.startswith("register_") and node.func.id.removeprefix("register_") in KINDS:
            kind, name = node.func.id.removeprefix("register_"), args[0]
        else:
            continue
        if isinstance(name, str):
            found.setdefault(kind, set()).add(name)
    return found


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
