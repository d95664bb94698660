"""Pre-registration, checked in the git history: a paper's confirmatory claims are fixed before its results.

The anchor is the first commit that added claims of the current format for the paper (a
`results/<key>/<scale>/claims.md` with a confirmatory section). The confirmatory claims registered are those
of the paper's config in that commit's parent. From the anchor on, in the anchor itself and in the working
tree, every registered claim must keep its text, kind, cells, metric and thresholds and stay confirmatory,
and no confirmatory claim may be added (a claim written after results were seen is exploratory)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.config import REPO_ROOT
from common.results.claims import CONFIRMATORY_HEADING
from common.results.paper_spec import _parse_paper

# Where a paper's config has lived; the first that exists in a commit is read.
PAPER_CONFIG_PATHS = ("conf/papers/{key}/paper.yaml", "conf/paper/{key}.yaml")


@dataclass
class PreregistrationReport:
    key: str
    anchor: str | None = None
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=60
    ).stdout


def _config_at(repo: Path, commit: str | None, key: str) -> str | None:
    """The paper config's text at `commit` (None: the working tree), or None where it does not exist."""
    for pattern in PAPER_CONFIG_PATHS:
        path = pattern.format(key=key)
        if commit is None:
            if (repo / path).is_file():
                return (repo / path).read_text()
            continue
        try:
            return _git(repo, "show", f"{commit}:{path}")
        except subprocess.CalledProcessError:
            continue
    return None


def confirmatory_claims(text: str, key: str) -> dict[str, dict[str, Any]]:
    """{table/claim id: what pre-registration fixes} for the confirmatory claims in a paper config."""
    paper = _parse_paper(key, yaml.safe_load(text), key)
    return {
        f"{table.id}/{claim.id}": claim.registration()
        for table in paper.tables.values()
        for claim in table.claims
        if claim.confirmatory
    }


def first_results_commit(repo: Path, key: str) -> str | None:
    """The first commit whose tree has current-format claims for the paper, or None."""
    for commit in _git(repo, "log", "--reverse", "--format=%H", "--", f"results/{key}/").split():
        try:
            _git(repo, "grep", "-q", "-F", CONFIRMATORY_HEADING, commit, "--", f"results/{key}/")
            return commit
        except subprocess.CalledProcessError:
            continue
    return None


def check_preregistration(key: str, repo: Path = REPO_ROOT) -> PreregistrationReport:
    report = PreregistrationReport(key)
    try:
        if _git(repo, "rev-parse", "--is-shallow-repository").strip() == "true":
            report.skipped = "shallow clone: the history that shows when claims were registered is missing"
            return report
        anchor = first_results_commit(repo, key)
    except (OSError, subprocess.SubprocessError) as err:
        report.skipped = f"no git history here ({err})"
        return report
    if anchor is None:
        return report  # no results yet: nothing is fixed
    report.anchor = anchor
    before = _config_at(repo, f"{anchor}^", key)
    if before is None:
        report.problems.append(
            f"{key}: its config did not exist before its first results ({anchor[:10]}): "
            "commit the paper's confirmatory claims first, then its results"
        )
        return report
    registered = confirmatory_claims(before, key)
    for where, commit in ((f"commit {anchor[:10]}", anchor), ("the working tree", None)):
        text = _config_at(repo, commit, key)
        current = confirmatory_claims(text, key) if text is not None else {}
        for claim_id, fixed in registered.items():
            if claim_id not in current:
                report.problems.append(
                    f"{key}: confirmatory claim {claim_id} was removed or made exploratory in {where}"
                )
            elif current[claim_id] != fixed:
                changed = sorted(
                    k for k in {*fixed, *current[claim_id]} if fixed.get(k) != current[claim_id].get(k)
                )
                report.problems.append(
                    f"{key}: confirmatory claim {claim_id} changed ({', '.join(changed)}) in {where}, "
                    f"after it was registered before {anchor[:10]}; registered: {fixed}"
                )
        for claim_id in sorted(set(current) - set(registered)):
            report.problems.append(
                f"{key}: claim {claim_id} was added as confirmatory in {where}, after results were "
                "committed: mark it `exploratory: true`"
            )
    return report
