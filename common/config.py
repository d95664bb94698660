"""Config helpers shared by the entry points: resolvers, composing a run's config, the config directory."""

from __future__ import annotations

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


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("pnu.cell_dir"):
        OmegaConf.register_new_resolver("pnu.cell_dir", cell_dir, use_cache=True)
    if not OmegaConf.has_resolver("pnu.slug"):
        OmegaConf.register_new_resolver("pnu.slug", slug)


def compose_run_config(overrides: list[str]) -> DictConfig:
    """The config of one run as `python -m common.run <overrides>` sees it (without Hydra's run state)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    if not GlobalHydra.instance().is_initialized():
        initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3")
    return compose(config_name=CONFIG_NAME, overrides=overrides)


register_resolvers()
