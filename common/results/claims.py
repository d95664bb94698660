"""Evaluate a paper's claims over measured tables: comparisons between cells, tolerance to a reported number,
orderings and bounds. A claim whose cells are missing is `not evaluated`, never silently held."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.results.aggregate import CellStats, TableResult
from common.results.paper_spec import Claim

HELD, FAILED, NOT_EVALUATED = "held", "failed", "not evaluated"


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    table: str
    status: str
    detail: str


def _label(ref: dict[str, Any]) -> str:
    return f"{ref['row']} @ {ref['column']}"


def _describe(stats: CellStats, digits: int = 2) -> str:
    return f"{stats.text(digits).removesuffix(' (n=1)')} (n={stats.n})" if stats.n else "no runs"


def evaluate_claim(claim: Claim, result: TableResult, min_seeds: int = 1) -> ClaimResult:
    """One claim against one table's measured cells (means over seeds)."""
    if claim.scale != result.scale:
        return ClaimResult(claim, result.spec.id, NOT_EVALUATED, f"claim is for scale {claim.scale}")
    metric = claim.metric or result.spec.metric
    spec = claim.spec
    d = result.spec.digits

    def stats(ref: dict[str, Any]) -> CellStats:
        return result.stats(ref["row"], ref["column"], metric)

    checks: list[tuple[bool, str]] = []
    refs: list[dict[str, Any]] = []
    if claim.kind == "greater":
        margin = float(spec.get("margin", 0.0))
        columns = spec.get("columns") or [None]
        for column in columns:
            left = {**spec["left"], **({"column": column} if column else {})}
            right = {**spec["right"], **({"column": column} if column else {})}
            refs += [left, right]
            a, b = stats(left), stats(right)
            ok = a.mean > b.mean + margin
            checks.append(
                (
                    ok,
                    f"{_label(left)} {_describe(a, d)} vs {_label(right)} {_describe(b, d)}: "
                    f"difference {a.mean - b.mean:+.{d}f} (needs > {margin:g})",
                )
            )
    elif claim.kind == "within":
        ref = spec["cell"]
        refs.append(ref)
        target = spec["target"]
        if target == "reported":
            reported = result.spec.reported_for(ref["row"], ref["column"], metric)
            if reported is None:
                return ClaimResult(
                    claim, result.spec.id, NOT_EVALUATED, f"no reported number for {_label(ref)}"
                )
            target = reported.value
        a = stats(ref)
        tolerance = float(spec["tolerance"])
        checks.append(
            (
                abs(a.mean - float(target)) <= tolerance,
                f"{_label(ref)} {_describe(a, d)} vs {float(target):g}: "
                f"|diff| {abs(a.mean - float(target)):.{d}f} "
                f"(needs <= {tolerance:g})",
            )
        )
    elif claim.kind == "order":
        cells = spec["cells"]
        refs += cells
        values = [stats(ref) for ref in cells]
        ok = all(x.mean > y.mean for x, y in zip(values, values[1:], strict=False))
        chain = " > ".join(f"{_label(ref)} {_describe(v, d)}" for ref, v in zip(cells, values, strict=True))
        checks.append((ok, f"needs {chain}"))
    elif claim.kind in ("at_most", "at_least"):
        columns = spec.get("columns") or [None]
        bound = float(spec["value"])
        for column in columns:
            ref = {**spec["cell"], **({"column": column} if column else {})}
            refs.append(ref)
            a = stats(ref)
            ok = a.mean <= bound if claim.kind == "at_most" else a.mean >= bound
            sign = "<=" if claim.kind == "at_most" else ">="
            checks.append((ok, f"{_label(ref)} {_describe(a, d)} (needs {sign} {bound:g})"))
    elif claim.kind == "gap_greater":
        # (minuend - subtrahend) at the first column exceeds the same gap at the second: "the gain shrinks".
        margin = float(spec.get("margin", 0.0))
        gaps = []
        for column in spec["columns"]:
            top, bottom = {**spec["minuend"], "column": column}, {**spec["subtrahend"], "column": column}
            refs += [top, bottom]
            gaps.append((column, stats(top).mean - stats(bottom).mean))
        (first, a), (second, b) = gaps
        row_a, row_b = spec["minuend"]["row"], spec["subtrahend"]["row"]
        checks.append(
            (
                a > b + margin,
                f"{row_a} − {row_b}: {a:+.{d}f} @ {first} vs {b:+.{d}f} @ {second} "
                f"(needs the first larger by > {margin:g})",
            )
        )
    elif claim.kind == "slope":
        row = spec["row"]
        slope = result.slope(row, metric)
        if slope.n < min_seeds:
            return ClaimResult(
                claim, result.spec.id, NOT_EVALUATED, f"fewer than {min_seeds} seeds with a slope for {row}"
            )
        bounds = []
        if "target" in spec:
            target, tolerance = float(spec["target"]), float(spec["tolerance"])
            bounds.append((abs(slope.mean - target) <= tolerance, f"|slope - {target:g}| <= {tolerance:g}"))
        if "min" in spec:
            bounds.append((slope.mean >= float(spec["min"]), f">= {float(spec['min']):g}"))
        if "max" in spec:
            bounds.append((slope.mean <= float(spec["max"]), f"<= {float(spec['max']):g}"))
        needs = " and ".join(text for _, text in bounds)
        detail = f"log-log slope of {row} {_describe(slope, max(d, 2))} (needs {needs})"
        checks.append((all(ok for ok, _ in bounds), detail))
    missing = [r for r in refs if stats(r).n < min_seeds]
    detail = "; ".join(text for _, text in checks)
    if missing:
        return ClaimResult(
            claim,
            result.spec.id,
            NOT_EVALUATED,
            f"fewer than {min_seeds} seeds for {', '.join(_label(r) for r in missing)}",
        )
    return ClaimResult(claim, result.spec.id, HELD if all(ok for ok, _ in checks) else FAILED, detail)


def claims_markdown(paper_title: str, scale: str, results: list[ClaimResult]) -> str:
    mark = {HELD: "held", FAILED: "**failed**", NOT_EVALUATED: "not evaluated"}
    lines = [
        f"# Claims: {paper_title} (scale `{scale}`)",
        "",
        "Each claim is evaluated on the mean over seeds of the cells it names.",
        "",
        "| claim | table | status | measured |",
        "|---|---|---|---|",
    ]
    for item in results:
        lines.append(
            f"| {item.claim.text} (`{item.claim.id}`) | {item.table} | {mark[item.status]} | {item.detail} |"
        )
    held = sum(r.status == HELD for r in results)
    failed = sum(r.status == FAILED for r in results)
    lines += ["", f"{held} held, {failed} failed, {len(results) - held - failed} not evaluated."]
    return "\n".join(lines) + "\n"
