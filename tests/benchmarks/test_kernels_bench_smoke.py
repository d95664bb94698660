"""Smoke test of benchmarks/kernels.py: a tiny CPU grid runs end to end and writes its md/csv; a provider
that computes the wrong loss is reported as FAIL (and not timed) while the correct ones are timed."""

from __future__ import annotations

import csv
import platform
import subprocess
import sys
from pathlib import Path

from benchmarks.kernels import TEMPERATURE, Provider, Variant
from common.kernels import info_nce

REPO_ROOT = Path(__file__).resolve().parents[2]


def _wrong_temperature(variant: Variant):
    """The chunked op with a 5% temperature error: plausible numbers, wrong loss and gradients."""
    return lambda x: info_nce(x.query, x.key, TEMPERATURE * 1.05, backend="chunked", **variant.options)


# Loaded by the benchmark through --providers module:attribute.
WRONG_TEMPERATURE = Provider(
    "wrong_temperature", _wrong_temperature, ("plain",), "chunked with a 5% temperature error (self-test)"
)


def test_tiny_cpu_run_reports_wrong_provider_as_fail(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "benchmarks.kernels",
        "--device=cpu",
        "--n=96",
        "--d=16",
        "--variants",
        "plain",
        "plain_fwd",
        "topk16",
        "--providers",
        "chunked",
        "eager",
        f"{__name__}:WRONG_TEMPERATURE",
        "--no-goal",
        "--small-n=0",
        "--check-n=40",
        "--budget-s=0.2",
        "--max-repeats=2",
        "--threads=1",
        f"--out={tmp_path}",
    ]
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / f"kernels_cpu-{platform.machine()}.csv").open()))
    by_key = {(r["variant"], r["provider"]): r for r in rows}

    wrong = by_key[("plain", "wrong_temperature")]
    assert wrong["status"] == "FAIL", wrong
    assert wrong["time_median_ms"] == "", "a FAIL cell must not be timed"
    assert float(wrong["check_error"]) > 1e-3

    for variant in ("plain", "plain_fwd", "topk16"):
        for provider in ("chunked", "eager"):
            row = by_key[(variant, provider)]
            assert row["status"] == "ok", row
            assert float(row["check_error"]) < 1e-4
            assert float(row["time_median_ms"]) > 0
            assert float(row["mem_extra_mb"]) >= 0
    for variant in ("plain_fwd", "topk16"):  # the provider has neither
        assert by_key[(variant, "wrong_temperature")]["status"] == "n/a"

    markdown = (tmp_path / f"kernels_cpu-{platform.machine()}.md").read_text()
    assert "FAIL wrong at N=40" in markdown
    assert "CUDA goals: not measured: no GPU in this run." in markdown


def test_interrupted_run_writes_what_it_measured(tmp_path: Path, monkeypatch) -> None:
    import pytest

    from benchmarks import kernels

    def measure_one_then_stop(cells, providers, args, results):
        results.append(kernels.Result("plain", 64, 16, "chunked", "ok", time_median_ms=1.0, mem_extra_mb=0.0))
        raise KeyboardInterrupt  # what SIGTERM from `timeout` becomes

    monkeypatch.setattr(kernels, "run_cpu", measure_one_then_stop)
    monkeypatch.setattr(kernels, "preimport", lambda providers, variants: None)
    argv = ["--device=cpu", "--n=64", "--d=16", "--variants", "plain", "clip", "--providers", "chunked"]
    with pytest.raises(SystemExit) as stopped:
        kernels.main([*argv, "--no-goal", "--small-n=0", f"--out={tmp_path}"])
    assert stopped.value.code == 1
    rows = list(csv.DictReader((tmp_path / f"kernels_cpu-{platform.machine()}.csv").open()))
    assert [(r["variant"], r["provider"], r["status"]) for r in rows] == [("plain", "chunked", "ok")]
    assert "**Interrupted**" in (tmp_path / f"kernels_cpu-{platform.machine()}.md").read_text()
