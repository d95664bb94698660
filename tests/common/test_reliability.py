"""What a careful user does wrong or to the process: bad inputs fail in one line before anything runs; a
quick look never touches results; a stop reaches every process of a sweep; unreadable records count as
missing; kills at random moments lose nothing. (The process-per-run launcher's cap: test_reproduce_e2e.)"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from common.data import corruptions
from common.kernels import KernelInputError, NonFiniteInputError, info_nce
from common.reproduce import local_parallelism, main, plan
from common.results.paper_spec import load_paper
from common.results.record import read_record
from tests.conftest import REPO_ROOT

ELR = "paper=elr"
A_FILE = REPO_ROOT / "pyproject.toml"  # a path under it cannot be a folder

BAD_INPUTS = [
    ("seeds_word", [ELR, "seeds=abc"], "seeds must be"),
    ("seeds_fraction", [ELR, "seeds=1.5"], "seeds must be"),
    ("seeds_zero", [ELR, "seeds=0"], "seeds must be"),
    ("seeds_negative", [ELR, "seeds=-1"], "seeds must be"),
    ("seeds_repeated", [ELR, "seeds=[1,1]"], "distinct"),
    ("seeds_empty", [ELR, "seeds=[]"], "distinct"),
    ("paper_empty", ["paper="], "choose a paper"),
    ("paper_unknown", ["paper=nope"], "unknown paper 'nope'"),
    ("table_unknown", [ELR, "table=nope"], "has no table 'nope'"),
    ("scale_unknown", [ELR, "scale=big"], "scale must be mini or paper"),
    ("launcher_unknown", [ELR, "launcher=nope"], "launcher must be one of"),
    ("slurm_without_slurm", [ELR, "launcher=slurm"], "needs SLURM's sbatch"),
    ("logger_unknown", [ELR, "logger=nope"], "logger must be one of"),
    ("seed_word", [ELR, "overrides=[seed=abc]"], "seed='abc': an integer"),
    ("batch_size_zero", [ELR, "overrides=[data.batch_size=0]"], "data.batch_size=0"),
    ("batch_size_negative", [ELR, "overrides=[data.batch_size=-8]"], "data.batch_size=-8"),
    ("noise_rate_too_high", [ELR, "overrides=[data.noise_rate=1.5]"], "data.noise_rate=1.5"),
    ("noise_rate_word", [ELR, "overrides=[data.noise_rate=abc]"], "data.noise_rate='abc'"),
    ("epochs_negative", [ELR, "overrides=[trainer.max_epochs=-5]"], "trainer.max_epochs=-5"),
    ("epochs_word", [ELR, "overrides=[trainer.max_epochs=abc]"], "trainer.max_epochs='abc'"),
    ("steps_zero", [ELR, "overrides=[trainer.max_steps=0]"], "trainer.max_steps=0"),
    (
        "override_unknown_key",
        [ELR, "overrides=[data.no_such_key=1]"],
        "Could not override 'data.no_such_key'",
    ),
    ("override_unknown_method", [ELR, "overrides=[method=nope]"], "Could not find 'method/nope'"),
    ("override_not_key_value", [ELR, "overrides=[foo]"], "key=value overrides"),
    ("override_malformed", [ELR, "overrides=['data.noise_rate=[0.4']"], "does not compose"),
    ("column_unknown", [ELR, "columns=[sym-99%]"], "has no column"),
    ("row_unknown", [ELR, "rows=[nope]"], "has no row"),
    ("option_unknown", [ELR, "sedes=3"], "unknown option 'sedes'"),
    ("option_not_key_value", [ELR, "justaword"], "options are key=value"),
    ("force_not_bool", [ELR, "force=maybe"], "force='maybe'"),
    ("min_seeds_word", [ELR, "min_seeds_for_claims=abc"], "min_seeds_for_claims='abc'"),
    ("max_parallel_zero", [ELR, "max_parallel=0"], "max_parallel=0"),
    ("output_not_a_folder", [ELR, f"output_root={A_FILE}/x"], "cannot write the output folder"),
    ("results_not_a_folder", [ELR, f"results_root={A_FILE}/x"], "cannot write the results folder"),
    ("wandb_online_without_key", [ELR, "logger=wandb"], "needs W&B credentials"),
    ("launcher_arg_unknown", [ELR, "hydra_args=[hydra.launcher.nope=1]"], "HYDRA_ARGS: Could not override"),
]


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(("name", "argv", "message"), BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_a_bad_input_fails_in_one_line_before_anything_runs(
    name, argv, message, tmp_path: Path, monkeypatch, capsys
):
    outputs, results = tmp_path / "outputs", tmp_path / "results"
    monkeypatch.setenv("PNU_OUTPUT_ROOT", str(outputs))
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))  # no sbatch here
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_MODE", "online" if name == "wandb_online_without_key" else "offline")
    args = [*argv] if any(a.startswith("results_root=") for a in argv) else [*argv, f"results_root={results}"]
    started = time.perf_counter()
    code = main(args)
    elapsed = time.perf_counter() - started
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, (code, captured.out, captured.err)
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert message in lines[0], lines[0]
    assert captured.out == ""  # nothing announced, nothing started
    assert elapsed < 5, f"{name}: {elapsed:.1f} s"
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no file left behind


@pytest.mark.slow  # one interpreter start
def test_the_command_line_error_is_one_line_on_stderr():
    result = subprocess.run(
        [sys.executable, "-m", "common.reproduce", ELR, "seeds=abc"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: seeds must be")


def test_a_record_of_random_bytes_counts_as_missing_and_is_set_aside(tmp_path: Path):
    paper = load_paper("elr")
    table = paper.tables["table1"]
    common = [f"runtime.output_root={tmp_path}"]
    (run,) = plan(paper, [table], "mini", [0], common, rows=["CE"], columns=["sym-40%"])
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "result.json").write_bytes(random.Random(0).randbytes(300) + b"\xff\xfe")
    assert read_record(run.run_dir) is None
    (again,) = plan(paper, [table], "mini", [0], common, rows=["CE"], columns=["sym-40%"])
    assert again.record is None and not again.done
    assert not (run.run_dir / "result.json").exists()
    assert (run.run_dir / "result.json.unreadable").is_file()


def test_run_folders_are_one_per_config(tmp_path: Path):
    paper = load_paper("elr")
    table = paper.tables["table1"]
    cell = {"rows": ["CE"], "columns": ["sym-40%"]}
    (full,) = plan(paper, [table], "mini", [0], [f"runtime.output_root={tmp_path}"], **cell)
    (short,) = plan(
        paper, [table], "mini", [0], [f"runtime.output_root={tmp_path}", "trainer.max_epochs=1"], **cell
    )
    assert full.run_dir != short.run_dir and full.run_dir.parent == short.run_dir.parent
    assert full.run_dir.name == f"seed_0-{full.config_hash[:8]}"


def test_a_run_recorded_in_a_legacy_folder_is_adopted_not_redone(tmp_path: Path):
    from common.results.record import RunRecord, write_record

    paper = load_paper("elr")
    table = paper.tables["table1"]
    common = [f"runtime.output_root={tmp_path}"]
    cell = {"rows": ["CE"], "columns": ["sym-40%"]}
    (run,) = plan(paper, [table], "mini", [0], common, **cell)
    legacy = run.run_dir.with_name("seed_0")
    fields = {"paper": "elr", "table": "table1", "scale": "mini", "seed": 0, "status": "complete", "cell": {}}
    write_record(RunRecord(**fields, config_hash=run.config_hash, metrics={"test/acc": 1.0}), legacy)
    (again,) = plan(paper, [table], "mini", [0], common, **cell)
    assert again.record is not None and again.record.metrics == {"test/acc": 1.0}
    assert again.run_dir.is_dir() and not legacy.exists()
    other = legacy.with_name("seed_1")  # a record of another config stays where it is
    write_record(RunRecord(**{**fields, "seed": 1}, config_hash="0" * 16, metrics={}), other)
    (fresh,) = plan(paper, [table], "mini", [1], common, **cell)
    assert fresh.record is None and other.is_dir()


def test_the_local_cap_fits_the_machine():
    cap = local_parallelism()
    assert 1 <= cap <= (os.cpu_count() or 1)
    assert local_parallelism(memory_per_run_gb=1e9) == 1  # no memory for more than one


def test_kernel_and_corruption_inputs_are_checked():
    query, key = torch.randn(4, 8), torch.randn(4, 8)
    with pytest.raises(KernelInputError, match="temperature must be a float"):
        info_nce(query, key, temperature="0.1")
    with pytest.raises(KernelInputError, match="temperature must be a float"):
        info_nce(query, key, temperature=True)
    key[2, 3] = float("nan")
    with pytest.raises(NonFiniteInputError, match="key holds NaN or inf"):
        info_nce(query, key, temperature=0.1)
    labels = np.arange(10) % 3
    with pytest.raises(ValueError, match="seed must be an integer"):
        corruptions.inject_symmetric_noise(labels, 0.2, 3, seed=None)
    with pytest.raises(ValueError, match="noise_rate must be a number"):
        corruptions.inject_symmetric_noise(labels, "0.2", 3, seed=0)
    generator = corruptions.inject_symmetric_noise(labels, 0.5, 3, seed=np.random.default_rng(7))
    assert np.array_equal(generator, corruptions.inject_symmetric_noise(labels, 0.5, 3, seed=7))


def _reproduce_command(tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "common.reproduce",
        ELR,
        f"output_root={tmp_path / 'outputs'}",
        f"results_root={tmp_path / 'results'}",
        *extra,
    ]


@pytest.mark.slow  # two short sweeps
def test_a_quick_look_leaves_results_untouched_and_replaces_no_record(tmp_path: Path):
    results = tmp_path / "results" / "elr" / "mini"
    results.mkdir(parents=True)
    for path in (REPO_ROOT / "results" / "elr" / "mini").iterdir():
        (results / path.name).write_bytes(path.read_bytes())
    before = _tree(tmp_path / "results")
    cell = ["columns=[sym-40%]", "rows=[CE]", "seeds=1"]
    for epochs in (1, 2):
        quick = subprocess.run(
            _reproduce_command(tmp_path, *cell, f"overrides=[trainer.max_epochs={epochs}]"),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert quick.returncode == 0, quick.stdout + quick.stderr
        assert "a quick look" in quick.stdout
    assert _tree(tmp_path / "results") == before  # byte for byte
    tables = tmp_path / "outputs" / "tables" / "elr" / "mini"
    written = _tree(tables)
    again = subprocess.run(  # nothing left to run: it only aggregates, and rewrites nothing differently
        _reproduce_command(tmp_path, *cell, "overrides=[trainer.max_epochs=2]"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0 and "1 complete, 0 to run" in again.stdout, again.stdout + again.stderr
    assert _tree(tables) == written
    other_logger = subprocess.run(  # a logger switch does not rerun a run, and says it logged nothing
        _reproduce_command(tmp_path, *cell, "overrides=[trainer.max_epochs=2]", "logger=wandb"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert "1 complete, 0 to run" in other_logger.stdout, other_logger.stdout + other_logger.stderr
    assert "1 complete runs are not logged to W&B now" in " ".join(other_logger.stdout.split())
    attempts = sorted((tmp_path / "outputs" / "attempts").iterdir())
    assert len(attempts) == 2  # the two that ran and all((a / "reproduce.log").is_file() for a in attempts)
    records = sorted((tmp_path / "outputs" / "elr").rglob("result.json"))
    assert len(records) == 2  # one folder per config: the second run replaced nothing
    for path in records:
        assert path.parent.name.endswith("-" + read_record(path.parent).config_hash[:8])


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow  # a sweep stopped while it runs
@pytest.mark.parametrize("launcher", ["local", "submitit_local"])
def test_sigterm_stops_every_process_of_the_sweep(tmp_path: Path, launcher: str):
    command = _reproduce_command(
        tmp_path, "columns=[sym-40%]", "seeds=2", f"launcher={launcher}", "overrides=[trainer.max_epochs=200]"
    )
    child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wanted = 3 if launcher == "submitit_local" else 1  # the sweep, and a worker per run
    deadline, seen = time.time() + 120, []
    while time.time() < deadline and child.poll() is None:
        seen = _descendants(child.pid)
        if len(seen) >= wanted and any("common.run" in " ".join(p.cmdline()) for p in seen):
            break
        time.sleep(0.2)
    time.sleep(1.0)
    seen = _descendants(child.pid)
    assert seen, child.communicate()[0]
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=20)
    time.sleep(0.5)
    alive = [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [p.cmdline() for p in alive]
    assert child.returncode == 130


def _started_runs(root: Path) -> set[Path]:
    """Run folders of `root`'s outputs that a run has entered (it writes its config first)."""
    return {p.parent for p in (root / "outputs").rglob("seed_*/config.yaml")}


@pytest.mark.slow  # two kills during a sweep, its resumption, and an uninterrupted sweep to compare with
def test_kill_9_during_a_sweep_loses_nothing_and_resumes_to_the_same_table(tmp_path: Path):
    """Four runs of the elr table. SIGKILL to the process group (a preemption: no clean-up at all), once
    just after the first run finished and once at a random moment of a run in progress; then the same
    command resumes: no finished run is redone, no partial record is left, nothing is aggregated from a
    partial sweep, and the table equals the one of an uninterrupted sweep byte for byte."""
    args = ["seeds=1", "columns=[sym-20%,sym-40%]", "overrides=[trainer.max_epochs=3]"]
    killed, rng = tmp_path / "killed", random.Random(13)
    started: dict[Path, str] = {}
    for kill in range(2):
        known = _started_runs(killed)
        finished = set((killed / "outputs").rglob("result.json"))
        child = subprocess.Popen(
            _reproduce_command(killed, *args),
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline and child.poll() is None:
            if kill == 0 and set((killed / "outputs").rglob("result.json")) - finished:
                break  # a run has just finished: the next one is starting
            if kill == 1 and _started_runs(killed) - known:
                time.sleep(rng.uniform(0.0, 1.5))  # somewhere inside a run
                break
            time.sleep(0.1)
        assert child.poll() is None, "the sweep ended before it could be killed"
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        for path in (killed / "outputs").rglob("result.json"):
            record = read_record(path.parent)
            assert record is not None and record.complete  # a record is whole or absent
            assert started.setdefault(path.parent, record.started_at) == record.started_at  # not redone
    assert 1 <= len(started) < 4, started
    assert not (killed / "outputs" / "tables").exists()  # nothing aggregated from a partial sweep
    resumed = subprocess.run(
        _reproduce_command(killed, *args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{len(started)} complete, {4 - len(started)} to run" in resumed.stdout
    for folder, when in started.items():
        assert read_record(folder).started_at == when
    clean = tmp_path / "clean"
    reference = subprocess.run(
        _reproduce_command(clean, *args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert reference.returncode == 0, reference.stdout + reference.stderr
    table = Path("outputs/tables/elr/mini/table1.csv")
    assert (killed / table).read_bytes() == (clean / table).read_bytes()


def test_reproduce_processes_started_in_one_second_get_their_own_attempt_folders(tmp_path):
    from common.reproduce import new_attempt_dir

    first, second = new_attempt_dir(tmp_path, "toy-mini"), new_attempt_dir(tmp_path, "toy-mini")
    assert first != second and first.is_dir() and second.is_dir()
    stamp = first.name.removeprefix("toy-mini-")
    (tmp_path / "attempts" / f"toy-mini-{stamp}-2").mkdir(exist_ok=True)  # taken: the next free counter
    assert new_attempt_dir(tmp_path, "toy-mini").name != f"toy-mini-{stamp}-2"
