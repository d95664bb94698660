"""One folder per paper: Hydra reads a paper's tables and its own config groups from `conf/papers/<key>/`.

A table is one file, `conf/papers/<key>/<table>.yaml`: what the table is (protocol, objective, default
method; set at every scale) and one section per scale (`mini:`, `paper:`: data, model, schedule at that
scale). A table that reads the trainings of another table of the paper says `shares_training_with: <table>`
and sets only what differs (which metric it reports, say). A paper's own method, data and model options live
in `conf/papers/<key>/{method,data,model}/<option>.yaml`, beside its tables; shared options stay in
`conf/<group>/`.

This config source serves that folder as the groups the run config composes:

- `experiment/<key>/<table>`: the table file without its scale sections, plus `paper: <key>` and
  `table: <table>` (named by the path, so no file repeats them); with `shares_training_with: <base>`, the
  base table's config first;
- `table_scale/<key>/<table>/<scale>`: the table's section for `scale` (after the base table's section when
  it shares trainings);
- `method/<option>`, `data/<option>`, `model/<option>`: a paper's own options;
- `method/<name>` for a registered method that needs no setting: `{name: <name>}`, with no file. A
  method is registered under its name in code (`common.registry`, read without importing the papers) and
  its docstring says what it is; a file exists only where an option sets something.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import DictConfig, OmegaConf

from common.registry import declared

SCHEME = "pnu-tables"
PAPER_FILE = "paper.yaml"
SCALES = ("mini", "paper")
SHARES_KEY = "shares_training_with"
IDENTITY_KEYS = ("paper", "table")  # derived from the file's path
PAPER_GROUPS = ("method", "data", "model")  # groups a paper may own options of
NAMED_GROUP = "method"  # registered names with no file are `{name: <option>}`


class PaperTablesSearchPath(SearchPathPlugin):
    """Adds `conf/papers` (next to the main config folder) as a `pnu-tables://` source."""

    def manipulate_search_path(self, search_path) -> None:
        for element in search_path.get_path():
            if element.provider != "main":
                continue
            path = element.path.removeprefix("file://")
            if "://" in path:
                continue
            papers = Path(path) / "papers"
            if papers.is_dir():
                search_path.append("pnu-repro-tables", f"{SCHEME}://{papers}")
            return


class PaperTablesSource(ConfigSource):
    def __init__(self, provider: str, path: str) -> None:
        if "://" not in path:
            path = f"{SCHEME}://{path}"
        super().__init__(provider=provider, path=path)
        self.root = Path(self.path)

    @staticmethod
    def scheme() -> str:
        return SCHEME

    # what exists

    def _papers(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / PAPER_FILE).is_file())

    def _tables(self, key: str) -> list[str]:
        folder = self.root / key
        if not (folder / PAPER_FILE).is_file():
            return []
        return sorted(p.stem for p in folder.glob("*.yaml") if p.name != PAPER_FILE)

    def _options(self, group: str) -> dict[str, Path]:
        """A paper-owned option of `group` -> its file; one name, one paper."""
        found: dict[str, Path] = {}
        for key in self._papers():
            for path in sorted((self.root / key / group).glob("*.yaml")):
                if path.stem in found:
                    raise ConfigLoadError(
                        f"{group} option {path.stem!r} is defined twice: {found[path.stem]} and {path}; "
                        "rename one (a paper's own options are global names: prefix them with its key)"
                    )
                shared = self.root.parent / group / path.name
                if shared.exists():
                    raise ConfigLoadError(
                        f"{group} option {path.stem!r} is defined twice: {shared} and {path}; "
                        "rename the paper's one"
                    )
                found[path.stem] = path
        return found

    def _parts(self, config_path: str) -> list[str]:
        return [
            part for part in self._normalize_file_name(config_path).removesuffix(".yaml").split("/") if part
        ]

    def is_group(self, config_path: str) -> bool:
        parts = [part for part in config_path.split("/") if part]
        if parts[:1] == ["experiment"]:
            return len(parts) == 1 or (len(parts) == 2 and bool(self._tables(parts[1])))
        if parts[:1] == ["table_scale"]:
            if len(parts) == 1:
                return True
            if len(parts) == 2:
                return bool(self._tables(parts[1]))
            return len(parts) == 3 and parts[2] in self._tables(parts[1])
        if len(parts) == 1 and parts[0] in PAPER_GROUPS:
            return bool(self._options(parts[0])) or (parts[0] == NAMED_GROUP and bool(declared(NAMED_GROUP)))
        return False

    def is_config(self, config_path: str) -> bool:
        parts = self._parts(config_path)
        if len(parts) == 3 and parts[0] == "experiment":
            return parts[2] in self._tables(parts[1])
        if len(parts) == 4 and parts[0] == "table_scale" and parts[2] in self._tables(parts[1]):
            return parts[3] in _scales(self.root, parts[1], parts[2])
        if len(parts) == 2 and parts[0] in PAPER_GROUPS:
            return parts[1] in self._options(parts[0]) or self._named_only(parts[0], parts[1])
        return False

    def _named_only(self, group: str, option: str) -> bool:
        """A registered method with no option file anywhere: served as `{name: <option>}`."""
        return (
            group == NAMED_GROUP
            and option in declared(group)
            and not (self.root.parent / group / f"{option}.yaml").exists()
            and option not in self._options(group)
        )

    def available(self) -> bool:
        return self.root.is_dir()

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        parts = [part for part in config_path.split("/") if part]
        groups: list[str] = []
        configs: list[str] = []
        if parts == ["experiment"] or parts == ["table_scale"]:
            groups = [key for key in self._papers() if self._tables(key)]
        elif len(parts) == 2 and parts[0] == "experiment":
            configs = self._tables(parts[1])
        elif len(parts) == 2 and parts[0] == "table_scale":
            groups = self._tables(parts[1])
        elif len(parts) == 3 and parts[0] == "table_scale":
            configs = sorted(_scales(self.root, parts[1], parts[2]))
        elif len(parts) == 1 and parts[0] in PAPER_GROUPS:
            configs = sorted(self._options(parts[0]))
            if parts[0] == NAMED_GROUP:
                configs += [name for name in declared(NAMED_GROUP) if self._named_only(NAMED_GROUP, name)]
        if results_filter in (None, ObjectType.GROUP):
            pass
        else:
            groups = []
        if results_filter not in (None, ObjectType.CONFIG):
            configs = []
        return sorted(set(groups) | set(configs))

    # what a config holds

    def load_config(self, config_path: str) -> ConfigResult:
        parts = self._parts(config_path)
        if not self.is_config(config_path):
            raise ConfigLoadError(f"Config not found: {config_path} (in {self.path})")
        if parts[0] == "experiment":
            config, header = self._table_config(parts[1], parts[2]), {"package": "_global_"}
        elif parts[0] == "table_scale":
            config, header = self._scale_config(parts[1], parts[2], parts[3]), {"package": "_global_"}
        elif self._named_only(parts[0], parts[1]):
            config, header = OmegaConf.create({"name": parts[1]}), ConfigSource._get_header_dict("")
        else:
            path = self._options(parts[0])[parts[1]]
            text = path.read_text(encoding="utf-8")
            config, header = OmegaConf.create(text), ConfigSource._get_header_dict(text[:512])
        return ConfigResult(
            config=config, path=f"{SCHEME}://{self.path}", provider=self.provider, header=header
        )

    def _table_config(self, key: str, table: str) -> DictConfig:
        body, _, base = _read_table(self.root, key, table)
        defaults = [f"/experiment/{key}/{base}"] if base else []
        config = OmegaConf.create({**_with_defaults(body, defaults), "paper": key, "table": table})
        return config

    def _scale_config(self, key: str, table: str, scale: str) -> DictConfig:
        _, sections, base = _read_table(self.root, key, table)
        before = (
            [f"/table_scale/{key}/{base}/{scale}"] if base and scale in _scales(self.root, key, base) else []
        )
        return OmegaConf.create(_with_defaults(sections.get(scale) or {}, before))


def _with_defaults(config: dict, before: list[str]) -> dict:
    """`config` with `before` composed ahead of its own defaults and itself."""
    if not before:
        return config
    own = list(config.get("defaults") or [])
    if "_self_" not in own:
        own.append("_self_")
    return {**config, "defaults": [*before, *own]}


def _scales(root: Path, key: str, table: str) -> set[str]:
    _, sections, base = _read_table(root, key, table)
    inherited = _scales(root, key, base) if base else set()
    return set(sections) | inherited


def _read_table(root: Path, key: str, table: str) -> tuple[dict, dict, str | None]:
    path = root / key / f"{table}.yaml"
    return _parse_table(str(path), os.stat(path).st_mtime_ns)


@cache
def _parse_table(path_text: str, mtime: int) -> tuple[dict, dict, str | None]:
    """(table-level body, {scale: section}, base table or None) of a table file; mtime keys the cache."""
    path = Path(path_text)
    loaded = OmegaConf.load(path)
    if not isinstance(loaded, DictConfig):
        raise ConfigLoadError(
            f"{path}: a table file is a mapping (the table's settings and its mini:/paper: sections)"
        )
    body = OmegaConf.to_container(loaded, resolve=False)
    for name in IDENTITY_KEYS:
        if name in body and not (name in SCALES and isinstance(body[name], dict | None)):
            raise ConfigLoadError(
                f"{path}: `{name}: {body[name]}` is set by the file's path "
                "(conf/papers/<paper>/<table>.yaml); remove it"
            )
    sections = {}
    for scale in SCALES:
        if scale in body:
            section = body.pop(scale)
            if section is not None and not isinstance(section, dict):
                raise ConfigLoadError(
                    f"{path}: `{scale}:` holds the table's {scale}-scale settings (a mapping)"
                )
            sections[scale] = section or {}
    base = body.pop(SHARES_KEY, None)
    if base is not None:
        if not isinstance(base, str) or not (path.parent / f"{base}.yaml").is_file() or base == path.stem:
            tables = sorted(p.stem for p in path.parent.glob("*.yaml") if p.name != PAPER_FILE)
            raise ConfigLoadError(
                f"{path}: {SHARES_KEY}: {base!r} names no other table of this paper; its tables: {tables}"
            )
    return body, sections, base
