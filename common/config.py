"""Config helpers shared by the entry points: resolvers, composing a run's config, the config directory."""

from __future__ import annotations

import copy
import re
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "conf"
CONFIG_NAME = "config"


def slug(text: object) -> str:
    """A folder-safe form of a table label: `sym-40%` -> `sym-40pct`."""
    value = str(text).replace("%", "pct").replace("+", "plus")
    value = re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("_")
    return value or "_"


def cell_dir(row: object, column: object) -> str:
    """The folder of a table cell; runs outside a table go under `manual/<time>`."""
    if row is None and column is None:
        return "manual/" + datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return f"{slug(row)}__{slug(column)}"


def run_key(*, _root_: DictConfig) -> str:
    """The first 8 characters of the run's config hash: a run folder holds one config, so a run with other
    settings (an override, a quick look) never replaces another's record."""
    from common.results.record import config_hash

    return config_hash(_root_)[:8]


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("pnu.cell_dir"):
        OmegaConf.register_new_resolver("pnu.cell_dir", cell_dir, use_cache=True)
    if not OmegaConf.has_resolver("pnu.run_key"):
        OmegaConf.register_new_resolver("pnu.run_key", run_key)
    if not OmegaConf.has_resolver("pnu.slug"):
        OmegaConf.register_new_resolver("pnu.slug", slug)


def _initialize() -> None:
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    if not GlobalHydra.instance().is_initialized():
        initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3")


def compose_run_config(overrides: list[str]) -> DictConfig:
    """The config of one run as `python -m common.run <overrides>` sees it (without Hydra's run state)."""
    from hydra import compose

    _initialize()
    return compose(config_name=CONFIG_NAME, overrides=overrides)


def compose_run_configs(override_lists: list[list[str]]) -> list[DictConfig]:
    """`compose_run_config` of each list, composing once per distinct set of config-group choices.

    A Hydra compose (reading and merging the defaults tree) costs about 0.2 s; the cells and seeds of a table
    differ mostly in plain values (`data.noise_rate=0.4`, `seed=3`). Hydra applies value overrides after
    composing the chosen groups, so each config here is a copy of the composed groups with its own value
    overrides applied the way Hydra applies them (same errors for unknown keys, `+`, `++` and `~`)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    _initialize()
    repository = GlobalHydra.instance().config_loader().repository
    parser = OverridesParser.create()
    composed: dict[tuple[str, ...], DictConfig] = {}
    configs = []
    for overrides in override_lists:
        parsed = parser.parse_overrides(list(overrides))
        is_group = [o.package is not None or repository.group_exists(o.key_or_group) for o in parsed]
        groups = tuple(o.input_line for o, group in zip(parsed, is_group, strict=True) if group)
        if groups not in composed:
            composed[groups] = compose_run_config(list(groups))
        # A copy of the unresolved config: resolver caches (e.g. the run folder) are per copy.
        cfg = copy.deepcopy(composed[groups])
        values = [o for o, group in zip(parsed, is_group, strict=True) if not group]
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        configs.append(cfg)
    return configs


register_resolvers()
