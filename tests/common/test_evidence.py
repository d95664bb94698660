"""Evidence: pre-registration in the git history, provenance of runs (dirty flag, code hashes), manifests
that keep every run's value, and the summary of verdicts. Each check is shown to fail on a purpose-made
counter-example."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from common.results.preregistration import check_preregistration
from common.results.provenance import CodeHashes, code_hashes, manifest_problems
from common.results.record import git_state, read_record
from tests.conftest import REPO_ROOT

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=GIT_ENV
    ).stdout


def _paper(margin: float, extra_claims: list[dict] | None = None) -> str:
    claims = [
        {
            "id": "a_beats_b",
            "text": "A beats B by 5 (catalog)",
            "kind": "greater",
            "left": {"row": "A", "column": "x"},
            "right": {"row": "B", "column": "x"},
            "margin": margin,
        },
        *(extra_claims or []),
    ]
    table = {
        "title": "t",
        "experiment": "toy/t",
        "metric": "acc",
        "rows": {"A": {"method": "a"}, "B": {"method": "b"}},
        "columns": {"x": {}},
        "claims": claims,
    }
    return yaml.safe_dump({"key": "toy", "title": "Toy", "tables": {"t": table}})


def _commit(repo: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)


CLAIMS_MD = "# Claims\n\n## Confirmatory claims\n\nNone.\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    _git(tmp_path, "init", "-q")
    return tmp_path


def test_preregistered_claims_pass_and_exploratory_additions_are_allowed(repo: Path):
    _commit(repo, {"conf/paper/toy.yaml": _paper(5)}, "claims")
    _commit(repo, {"results/toy/mini/claims.md": CLAIMS_MD}, "results")
    later = {"id": "later", "text": "seen later", "kind": "greater", "exploratory": True, "margin": 0,
             "left": {"row": "B", "column": "x"}, "right": {"row": "A", "column": "x"}}  # fmt: skip
    _commit(repo, {"conf/paper/toy.yaml": _paper(5, [later])}, "an exploratory claim")
    report = check_preregistration("toy", repo)
    assert report.anchor is not None and report.problems == [] and report.skipped is None


def test_a_loosened_confirmatory_claim_fails(repo: Path):
    _commit(repo, {"conf/paper/toy.yaml": _paper(5)}, "claims")
    _commit(repo, {"results/toy/mini/claims.md": CLAIMS_MD}, "results")
    (repo / "conf/paper/toy.yaml").write_text(_paper(2))  # loosened, not even committed
    (problem,) = check_preregistration("toy", repo).problems
    assert "a_beats_b changed (margin)" in problem and "working tree" in problem


def test_claims_committed_with_their_first_results_fail(repo: Path):
    _commit(repo, {"conf/paper/toy.yaml": _paper(5), "results/toy/mini/claims.md": CLAIMS_MD}, "together")
    (problem,) = check_preregistration("toy", repo).problems
    assert "did not exist before its first results" in problem


def test_changed_in_the_results_commit_or_added_later_as_confirmatory_fails(repo: Path):
    _commit(repo, {"conf/paper/toy.yaml": _paper(5)}, "claims")
    new = {"id": "new", "text": "t", "kind": "greater", "margin": 0,
           "left": {"row": "B", "column": "x"}, "right": {"row": "A", "column": "x"}}  # fmt: skip
    _commit(repo, {"results/toy/mini/claims.md": CLAIMS_MD, "conf/paper/toy.yaml": _paper(4, [new])}, "r")
    problems = check_preregistration("toy", repo).problems
    assert any("a_beats_b changed (margin) in commit" in p for p in problems)
    assert any("t/new was added as confirmatory" in p for p in problems)


def test_old_format_results_do_not_anchor_registration(repo: Path):
    _commit(repo, {"conf/paper/toy.yaml": _paper(1), "results/toy/mini/claims.md": "# old claims\n"}, "old")
    _commit(repo, {"conf/paper/toy.yaml": _paper(5)}, "registered")
    _commit(repo, {"results/toy/mini/claims.md": CLAIMS_MD}, "confirmatory results")
    report = check_preregistration("toy", repo)
    assert report.problems == [] and report.anchor == _git(repo, "rev-parse", "HEAD").strip()


def test_shallow_clone_is_skipped_with_a_reason(repo: Path, tmp_path_factory):
    _commit(repo, {"conf/paper/toy.yaml": _paper(5)}, "claims")
    _commit(repo, {"results/toy/mini/claims.md": CLAIMS_MD}, "results")
    shallow = tmp_path_factory.mktemp("shallow") / "clone"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{repo}", str(shallow)], check=True)
    assert "shallow" in check_preregistration("toy", shallow).skipped


PAPERS_WITH_RESULTS = sorted(p.name for p in (REPO_ROOT / "results").iterdir() if p.is_dir())


@pytest.mark.parametrize("key", PAPERS_WITH_RESULTS)
def test_committed_confirmatory_claims_were_preregistered(key: str):
    report = check_preregistration(key)
    if report.skipped:
        pytest.skip(report.skipped)
    assert not report.problems, "\n".join(report.problems)


def test_git_dirty_counts_untracked_files_under_code_paths(repo: Path):
    _commit(repo, {"papers/toy/__init__.py": "", "README.md": "x"}, "init")
    assert git_state(repo)[1] is False
    (repo / "README.md").write_text("changed")  # not code
    (repo / "notes.txt").write_text("untracked, not code")
    assert git_state(repo)[1] is False
    (repo / "papers/toy/new_module.py").write_text("X = 1\n")
    assert git_state(repo)[1] is True


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_code_hash_covers_the_paper_and_the_common_files_it_imports(tmp_path: Path):
    _tree(
        tmp_path,
        {
            "common/__init__.py": "",
            "common/losses/__init__.py": "",
            "common/losses/bpr.py": "from common.util import helper\n",
            "common/util.py": "def helper(): ...\n",
            "common/unused.py": "X = 1\n",
            "papers/toy/__init__.py": "from papers.toy import method\n",
            "papers/toy/method.py": "def f():\n    from common.losses import bpr\n",
        },
    )
    first = code_hashes("toy", tmp_path)
    assert {"common/losses/bpr.py", "common/util.py", "common/__init__.py"} <= set(first.common_files)
    assert "common/unused.py" not in first.common_files
    (tmp_path / "common/unused.py").write_text("X = 2\n")
    assert code_hashes("toy", tmp_path) == first
    (tmp_path / "common/util.py").write_text("def helper(): return 1\n")
    second = code_hashes("toy", tmp_path)
    assert second.paper == first.paper and second.common != first.common
    (tmp_path / "papers/toy/method.py").write_text("def f(): ...\n")
    assert code_hashes("toy", tmp_path).paper != second.paper


def test_code_hash_of_a_cross_paper_table_covers_the_papers_it_takes_methods_from(tmp_path: Path):
    _tree(
        tmp_path,
        {
            "common/__init__.py": "",
            "common/util.py": "X = 1\n",
            "papers/source/__init__.py": "from common.util import X\n",
            "papers/other/__init__.py": "",
            "papers/table/__init__.py": "",
            "conf/papers/table/paper.yaml": "key: table\nmethods_from: [source]\n",
        },
    )
    first = code_hashes("table", tmp_path)
    assert "common/util.py" in first.common_files  # reached from the source paper's files
    (tmp_path / "papers/other/__init__.py").write_text("Y = 2\n")
    assert code_hashes("table", tmp_path) == first
    (tmp_path / "papers/source/__init__.py").write_text("from common.util import X\nZ = 3\n")
    assert code_hashes("table", tmp_path).paper != first.paper
    run = {**_manifest()["runs"][0], "paper_code_hash": first.paper}
    manifest = {"paper": "table", "scale": "mini", "runs": [run]}
    errors, _ = manifest_problems(manifest, code_hashes("table", tmp_path))
    assert any("papers/table/" in e for e in errors)


def _manifest(**run_changes) -> dict:
    run = {
        "table": "t",
        "row": "A",
        "column": "x",
        "seed": 1000,
        "value": 91.0,
        "metrics": {"acc": 91.0},
        "status": "complete",
        "config_hash": "c",
        "paper_code_hash": "p",
        "common_code_hash": "k",
        "git_dirty": False,
        **run_changes,
    }
    return {"paper": "toy", "scale": "mini", "runs": [{k: v for k, v in run.items() if v is not ...}]}


CURRENT = CodeHashes(paper="p", common="k", common_files=())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"value": ...}, "lacks ['value']"),
        ({"value": None}, "numeric value"),
        ({"paper_code_hash": ...}, "lacks ['paper_code_hash']"),
        ({"status": "failed"}, "is failed"),
        ({"git_dirty": True}, "dirty tree"),
        ({"paper_code_hash": "old"}, "papers/toy/ changed"),
    ],
)
def test_manifest_problems_catch_missing_values_and_stale_code(change, message):
    errors, _ = manifest_problems(_manifest(**change), CURRENT)
    assert any(message in e for e in errors), errors


def test_manifest_with_changed_common_code_is_reported_not_failed():
    assert manifest_problems(_manifest(), CURRENT) == ([], [])
    errors, notes = manifest_problems(_manifest(common_code_hash="old"), CURRENT)
    assert errors == [] and notes == [
        "toy (mini): files of common/ it runs changed since its results; re-run tables ['t']"
    ]


def test_a_record_of_random_bytes_is_missing(tmp_path: Path):
    (tmp_path / "result.json").write_bytes(os.urandom(256) + b"\xff\xfe")
    assert read_record(tmp_path) is None


def test_summary_totals_confirmatory_verdicts(tmp_path: Path, capsys):
    from common.results.summary import main

    claims = [
        {"status": "held", "confirmatory": True},
        {"status": "inconclusive", "confirmatory": True},
        {"status": "failed", "confirmatory": False},
    ]
    folder = tmp_path / "toy" / "mini"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"paper": "toy", "scale": "mini", "claims": claims}))
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    total = next(line for line in out.splitlines() if "total" in line)
    assert [s for s in total.replace("│", " ").split() if s.isdigit()] == ["1", "0", "1", "0"]
    assert "0 / 1 / 0 / 0" in out  # the exploratory one, shown apart
