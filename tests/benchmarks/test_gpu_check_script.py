"""benchmarks/gpu_check.sh runs on a GPU only; these checks keep its commands in step with the code."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from benchmarks.kernels import CUDA_GOAL_D, CUDA_GOAL_N, CUDA_LARGEST, VARIANTS, build_grid, parse_args
from common.config import compose_run_config

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


def _arguments(module: str) -> list[str]:
    """The arguments of `python -m <module>` in the script (continued lines joined, up to the redirect)."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if f"-m {module} " in line)
    return shlex.split(line.split(f"-m {module} ", 1)[1].split("2>&1")[0])


def test_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_benchmark_command_parses_and_covers_every_cuda_goal_cell() -> None:
    argv = _arguments("benchmarks.kernels")
    assert argv[argv.index("--device") + 1] == "cuda"
    argv[argv.index("--device") + 1] = "cpu"  # parse_args refuses cuda without a GPU
    args = parse_args(argv)
    assert args.compile_variants == ["plain", "clip"]
    args.device, args.variants, args.largest = "cuda", list(VARIANTS), True  # the CUDA defaults
    cells = {(c.variant, c.n, c.d) for c in build_grid(args)}
    assert {(v, CUDA_GOAL_N, CUDA_GOAL_D) for v in VARIANTS} <= cells
    assert CUDA_LARGEST in cells


def test_ucl_steps_compose_at_paper_scale() -> None:
    cfg = compose_run_config(_arguments("common.run"))
    assert cfg.paper == "ucl" and cfg.scale.name == "paper" and cfg.data.source == "random"
    assert cfg.trainer.limit_train_batches == 5 and cfg.method.probe_epochs == 2
