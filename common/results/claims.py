"""Evaluate a paper's claims over measured tables, with uncertainty.

Each comparison a claim makes (one cell against a bound, two cells, two gaps, a fitted slope) gets a 95%
confidence interval over seeds (`common.results.intervals`) and a three-valued verdict: `held` when the
interval clears the threshold, `failed` when it lies wholly on the wrong side, `inconclusive` otherwise. A
claim of several comparisons (several columns, an ordering) holds when all of them hold and fails when any
fails. A claim whose cells are missing is `not evaluated`, never silently held. Confirmatory claims (the
pre-registered ones) count in the totals; exploratory ones are shown apart."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from common.results.aggregate import CellStats, TableResult, cell_stats
from common.results.intervals import (
    FAILED,
    HELD,
    INCONCLUSIVE,
    Interval,
    combine,
    contrast_interval,
    probability_of_improvement,
    verdict_above,
    verdict_below,
    verdict_within,
)
from common.results.paper_spec import Claim

NOT_EVALUATED = "not evaluated"
VERDICTS = (HELD, FAILED, INCONCLUSIVE, NOT_EVALUATED)
# The heading that marks a claims file of this format; the pre-registration check looks for it.
CONFIRMATORY_HEADING = "## Confirmatory claims"

__all__ = ["FAILED", "HELD", "INCONCLUSIVE", "NOT_EVALUATED", "ClaimResult", "Check", "evaluate_claim"]


@dataclass(frozen=True)
class Check:
    """One comparison of a claim: what was compared, its interval, what it needs, and the verdict."""

    what: str
    interval: Interval
    needs: str
    verdict: str
    probability_of_improvement: float | None = None

    def text(self, digits: int) -> str:
        pi = self.probability_of_improvement
        better = "" if pi is None else f"; P(improvement) {pi:.2f}"
        measured = self.interval.text(digits, signed=True)
        return f"{self.what}: {measured}{better}; needs {self.needs}: {self.verdict}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            **self.interval.as_dict(),
            "needs": self.needs,
            "verdict": self.verdict,
            "probability_of_improvement": self.probability_of_improvement,
        }


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    table: str
    status: str
    detail: str
    checks: tuple[Check, ...] = field(default=())

    @property
    def confirmatory(self) -> bool:
        return self.claim.confirmatory

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.claim.id,
            "text": self.claim.text,
            "table": self.table,
            "confirmatory": self.confirmatory,
            "status": self.status,
            "detail": self.detail,
            "checks": [c.as_dict() for c in self.checks],
        }


def _label(ref: dict[str, Any]) -> str:
    return f"{ref['row']} @ {ref['column']}"


def _describe(stats: CellStats, digits: int = 2) -> str:
    return f"{stats.text(digits).removesuffix(' (n=1)')} (n={stats.n})" if stats.n else "no runs"


def evaluate_claim(claim: Claim, result: TableResult, min_seeds: int = 1) -> ClaimResult:
    """One claim against one table's measured cells."""
    table_id = result.spec.id
    if claim.not_evaluated:
        return ClaimResult(claim, table_id, NOT_EVALUATED, claim.not_evaluated)
    if claim.scale != result.scale:
        return ClaimResult(claim, table_id, NOT_EVALUATED, f"claim is for scale {claim.scale}")
    metric = claim.metric or result.spec.metric
    spec = claim.spec
    d = result.spec.digits

    def cell(ref: dict[str, Any]) -> dict[int, float]:
        return result.by_seed(ref["row"], ref["column"], metric)

    def described(ref: dict[str, Any]) -> str:
        return f"{_label(ref)} {_describe(cell_stats(cell(ref).values()), d)}"

    checks: list[Check] = []
    refs: list[dict[str, Any]] = []

    def greater(left: dict[str, Any], right: dict[str, Any], margin: float) -> None:
        refs.extend([left, right])
        a, b = cell(left), cell(right)
        interval = contrast_interval([(1.0, a), (-1.0, b)])
        checks.append(
            Check(
                f"{described(left)} − {described(right)}",
                interval,
                f"> {margin:g}",
                verdict_above(interval, margin),
                probability_of_improvement(a, b),
            )
        )

    def bound(ref: dict[str, Any], value: float, at_most: bool) -> None:
        refs.append(ref)
        interval = contrast_interval([(1.0, cell(ref))])
        verdict = verdict_below(interval, value) if at_most else verdict_above(interval, value, strict=False)
        checks.append(Check(_label(ref), interval, f"{'<=' if at_most else '>='} {value:g}", verdict))

    if claim.kind == "greater":
        margin = float(spec.get("margin", 0.0))
        for column in spec.get("columns") or [None]:
            with_column = {"column": column} if column else {}
            greater({**spec["left"], **with_column}, {**spec["right"], **with_column}, margin)
    elif claim.kind == "order":
        cells = spec["cells"]
        for upper, lower in zip(cells, cells[1:], strict=False):
            greater(upper, lower, 0.0)
    elif claim.kind in ("at_most", "at_least"):
        for column in spec.get("columns") or [None]:
            bound(
                {**spec["cell"], **({"column": column} if column else {})},
                float(spec["value"]),
                claim.kind == "at_most",
            )
    elif claim.kind == "within":
        ref = spec["cell"]
        refs.append(ref)
        target = spec["target"]
        if target == "reported":
            reported = result.spec.reported_for(ref["row"], ref["column"], metric)
            if reported is None:
                return ClaimResult(claim, table_id, NOT_EVALUATED, f"no reported number for {_label(ref)}")
            target = reported.value
        target, tolerance = float(target), float(spec["tolerance"])
        interval = contrast_interval([(1.0, cell(ref))])
        checks.append(
            Check(
                described(ref),
                interval,
                f"within {target:g} ± {tolerance:g}",
                verdict_within(interval, target - tolerance, target + tolerance),
            )
        )
    elif claim.kind == "gap_greater":
        # (minuend - subtrahend) at the first column exceeds the same gap at the second: "the gain shrinks".
        margin = float(spec.get("margin", 0.0))
        (first, second) = spec["columns"]
        row_a, row_b = spec["minuend"]["row"], spec["subtrahend"]["row"]
        four = [
            {"row": row_a, "column": first},
            {"row": row_b, "column": first},
            {"row": row_a, "column": second},
            {"row": row_b, "column": second},
        ]
        refs.extend(four)
        interval = contrast_interval(
            [(c, cell(r)) for c, r in zip((1.0, -1.0, -1.0, 1.0), four, strict=True)]
        )
        checks.append(
            Check(
                f"({row_a} − {row_b}) @ {first} minus the same @ {second}",
                interval,
                f"> {margin:g}",
                verdict_above(interval, margin),
            )
        )
    elif claim.kind == "slope":
        row = spec["row"]
        slopes = result.slopes_by_seed(row, metric)
        if len(slopes) < min_seeds:
            return ClaimResult(
                claim, table_id, NOT_EVALUATED, f"fewer than {min_seeds} seeds with a slope for {row}"
            )
        interval = contrast_interval([(1.0, slopes)])
        what = f"log-log slope of {row}"
        if "target" in spec:
            target, tolerance = float(spec["target"]), float(spec["tolerance"])
            verdict = verdict_within(interval, target - tolerance, target + tolerance)
            checks.append(Check(what, interval, f"within {target:g} ± {tolerance:g}", verdict))
        if "min" in spec:
            checks.append(
                Check(
                    what, interval, f">= {spec['min']:g}", verdict_above(interval, float(spec["min"]), False)
                )
            )
        if "max" in spec:
            checks.append(
                Check(what, interval, f"<= {spec['max']:g}", verdict_below(interval, float(spec["max"])))
            )
    missing = [r for r in refs if len(cell(r)) < min_seeds]
    if missing:
        return ClaimResult(
            claim,
            table_id,
            NOT_EVALUATED,
            f"fewer than {min_seeds} seeds for {', '.join(_label(r) for r in missing)}",
        )
    digits = max(d, 2)
    detail = "; ".join(c.text(digits) for c in checks)
    return ClaimResult(claim, table_id, combine([c.verdict for c in checks]), detail, tuple(checks))


def tally(results: list[ClaimResult]) -> Counter:
    """Verdict counts of the confirmatory claims."""
    return Counter(r.status for r in results if r.confirmatory)


def tally_text(counts: Counter) -> str:
    return ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS)


_MARK = {HELD: "held", FAILED: "**failed**", INCONCLUSIVE: "*inconclusive*", NOT_EVALUATED: "not evaluated"}


def _claim_rows(results: list[ClaimResult]) -> list[str]:
    if not results:
        return ["None."]
    lines = [
        "| claim | table | verdict | measured (difference or value, 95% CI, test, seeds; threshold) |",
        "|---|---|---|---|",
    ]
    for item in results:
        lines.append(
            f"| {item.claim.text} (`{item.claim.id}`) | {item.table} | {_MARK[item.status]} | {item.detail} |"
        )
    return lines


def claims_markdown(paper_title: str, scale: str, results: list[ClaimResult]) -> str:
    confirmatory = [r for r in results if r.confirmatory]
    exploratory = [r for r in results if not r.confirmatory]
    lines = [
        f"# Claims: {paper_title} (scale `{scale}`)",
        "",
        "Each comparison gives the difference (or value) with its 95% confidence interval over seeds: "
        "paired t where the cells share seeds, Welch otherwise. `held`: the interval clears the threshold; "
        "`failed`: it lies wholly on the wrong side; `inconclusive`: otherwise. A claim of several "
        "comparisons holds when all hold and fails when any fails. P(improvement) is the chance that a run "
        "of the left cell beats a run of the right one.",
        "",
        CONFIRMATORY_HEADING,
        "",
        "Pre-registered (the catalog's claim for this paper), committed before these results.",
        "",
        *_claim_rows(confirmatory),
        "",
        f"Confirmatory: {tally_text(tally(results))}.",
        "",
        "## Exploratory claims",
        "",
        "Added after results were seen: shown, not counted.",
        "",
        *_claim_rows(exploratory),
    ]
    return "\n".join(lines) + "\n"
