"""Checks of a run's inputs that fail in one line, before anything runs or is written.

`reproduce` applies them to every planned run and to its own options; `common.run` to its config. A value
that would otherwise surface minutes later, deep in a data module or a trainer (a batch size of 0, a noise
rate of 1.5, a seed that is a word), is named here with the key that sets it.
"""

from __future__ import annotations

import numbers
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from common.errors import UserError
from common.registry import is_known

LOGGERS = ("csv", "wandb", "none")
WANDB_OFFLINE_MODES = ("offline", "disabled", "dryrun")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _rule_violations(cfg: DictConfig) -> list[str]:
    """What is wrong with the keys every run config shares (an empty list when nothing is)."""
    problems = []
    seed = OmegaConf.select(cfg, "seed", default=None)
    if not _is_int(seed):
        problems.append(f"seed={seed!r}: an integer")
    data = OmegaConf.select(cfg, "data", default=None)
    if isinstance(data, DictConfig):
        for key in data:
            value = data.get(key)
            if str(key).endswith("batch_size") and value is not None and not (_is_int(value) and value > 0):
                problems.append(f"data.{key}={value!r}: a positive integer (or null where allowed)")
        rate = data.get("noise_rate")
        if rate is not None and not (_is_number(rate) and 0 <= rate < 1):
            problems.append(f"data.noise_rate={rate!r}: a number in [0, 1)")
    trainer = OmegaConf.select(cfg, "trainer", default=None)
    if isinstance(trainer, DictConfig):
        epochs = trainer.get("max_epochs")
        if epochs is not None and not (_is_int(epochs) and (epochs >= 1 or epochs == -1)):
            problems.append(f"trainer.max_epochs={epochs!r}: a positive integer (-1: until max_steps)")
        steps = trainer.get("max_steps")
        if steps is not None and not (_is_int(steps) and (steps >= 1 or steps == -1)):
            problems.append(f"trainer.max_steps={steps!r}: a positive integer (-1: no limit)")
    method = OmegaConf.select(cfg, "method.name", default=None)
    if method is not None and not is_known("method", str(method)):
        problems.append(f"method.name={method!r}: a registered method (`method=<name>` lists them)")
    return problems


def check_run_config(cfg: DictConfig, where: str = "") -> None:
    """A UserError naming every key of `cfg` whose value no run can use."""
    problems = _rule_violations(cfg)
    if problems:
        raise UserError(
            f"{where}{'; '.join(problems[:3])} is expected" + (" (and more)" * (len(problems) > 3))
        )


def check_writable(folder: Path, what: str, fix: str) -> None:
    """`folder` can be created and written (tried with a temporary file, removed again)."""
    folder = Path(folder)
    created = []
    try:
        for parent in reversed([folder, *folder.parents]):
            if not parent.exists():
                parent.mkdir()
                created.append(parent)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserError(f"cannot write the {what} {folder} ({err.strerror or err}); {fix}") from None
    finally:
        for path in reversed(created):
            try:
                path.rmdir()
            except OSError:
                pass


def check_launcher(launcher: str) -> None:
    if launcher == "slurm" and shutil.which("sbatch") is None:
        raise UserError(
            "LAUNCHER=slurm needs SLURM's sbatch on PATH (run on a cluster's login node); "
            "here use LAUNCHER=local or LAUNCHER=submitit_local"
        )


def check_wandb_credentials(logger: str, env: dict[str, str] | None = None) -> None:
    """Online W&B needs an API key; without one every run would fail in turn, so fail once, up front."""
    env = os.environ if env is None else env
    if logger != "wandb" or env.get("WANDB_MODE", "offline") in WANDB_OFFLINE_MODES:
        return
    if env.get("WANDB_API_KEY"):
        return
    netrc = Path(env.get("NETRC") or Path(env.get("HOME", "~")).expanduser() / ".netrc")
    try:
        if "api.wandb.ai" in netrc.read_text(errors="replace"):
            return
    except OSError:
        pass
    raise UserError(
        f"WANDB_MODE={env.get('WANDB_MODE')} needs W&B credentials: run `wandb login` or set WANDB_API_KEY; "
        "or log offline (WANDB_MODE=offline, then `wandb sync`)"
    )


def one_line(message: str) -> str:
    """A multi-line error (Hydra's lists its options one per line) as one line."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if not lines:
        return str(message)
    head, rest = lines[0], lines[1:]
    if rest and rest[0].startswith("Available options"):
        return f"{head} ({rest[0].rstrip(':').lower()}: {', '.join(rest[1:])})"
    return head if not rest else f"{head} ({'; '.join(rest[:2])})"
