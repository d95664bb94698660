"""Claims, aggregation and tables on hand-made records."""

from __future__ import annotations

import math

import pytest

from common.results.aggregate import TableResult, cell_stats, to_markdown
from common.results.claims import FAILED, HELD, INCONCLUSIVE, NOT_EVALUATED, evaluate_claim
from common.results.paper_spec import Claim, Reported, TableSpec
from common.results.record import RunRecord


def _spec(**extra) -> TableSpec:
    return TableSpec(
        id="t1",
        title="toy",
        experiment="toy/t1",
        metric="test/acc",
        metric_label="accuracy",
        rows={"A": {"method": "a"}, "B": {"method": "b"}},
        columns={"x": {"data.noise_rate": 0.2}, "y": {"data.noise_rate": 0.4}},
        reported=[Reported("A", "x", 91.0, "paper Table 1", 0.5)],
        **extra,
    )


def _records(values: dict[tuple[str, str], list[float]]) -> list[RunRecord]:
    out = []
    for (row, column), accs in values.items():
        for seed, acc in enumerate(accs):
            out.append(
                RunRecord(
                    "toy",
                    "t1",
                    "mini",
                    seed,
                    {"row": row, "column": column},
                    "complete",
                    "h",
                    metrics={"test/acc": acc, "drop": 10 - acc / 10},
                )
            )
    return out


VALUES = {
    ("A", "x"): [90.0, 92.0, 94.0],
    ("B", "x"): [80.0, 81.0, 82.0],
    ("A", "y"): [70.0, 71.0, 72.0],
    ("B", "y"): [71.0, 72.0, 73.0],
}


def test_cell_stats_mean_and_sample_std():
    stats = cell_stats([90.0, 92.0, 94.0])
    assert stats.mean == 92.0 and stats.std == pytest.approx(2.0) and stats.n == 3
    assert cell_stats([5.0]).std == 0.0
    assert cell_stats([]).n == 0 and math.isnan(cell_stats([]).mean)


# Hand-computed: A@x - B@x per seed is [10, 11, 12]: mean 11, sd 1, t(0.975, 2) = 4.3027, so the paired 95%
# interval is 11 ± 2.484 = [8.516, 13.484]. A@y - B@y is -1 at every seed: a zero-width interval at -1.
T2 = 4.302652729911275


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"left": {"row": "A", "column": "x"}, "right": {"row": "B", "column": "x"}, "margin": 5}, HELD),
        (
            {"left": {"row": "A", "column": "x"}, "right": {"row": "B", "column": "x"}, "margin": 12},
            INCONCLUSIVE,
        ),
        ({"left": {"row": "A", "column": "x"}, "right": {"row": "B", "column": "x"}, "margin": 14}, FAILED),
        ({"left": {"row": "A"}, "right": {"row": "B"}, "columns": ["x", "y"]}, FAILED),  # A < B at y
        ({"left": {"row": "A"}, "right": {"row": "B"}, "columns": ["x"]}, HELD),
    ],
)
def test_greater_claims(spec, expected):
    result = TableResult(_spec(), "mini", _records(VALUES))
    claim = Claim("c", "text", "greater", "mini", spec)
    assert evaluate_claim(claim, result).status == expected


def test_greater_claim_reports_the_paired_interval_and_probability_of_improvement():
    result = TableResult(_spec(), "mini", _records(VALUES))
    spec = {"left": {"row": "A", "column": "x"}, "right": {"row": "B", "column": "x"}, "margin": 5}
    outcome = evaluate_claim(Claim("c", "text", "greater", "mini", spec), result)
    (check,) = outcome.checks
    half = T2 * 1 / math.sqrt(3)
    assert check.interval.method == "paired t" and check.interval.n == 3
    assert check.interval.estimate == pytest.approx(11.0)
    assert (check.interval.low, check.interval.high) == pytest.approx((11 - half, 11 + half))
    assert check.probability_of_improvement == 1.0
    assert "+11.00, 95% CI [+8.52, +13.48] (paired t, n=3)" in outcome.detail


def test_within_reported_order_and_bounds():
    result = TableResult(_spec(), "mini", _records(VALUES))

    def status(kind, spec, metric=None):
        return evaluate_claim(Claim("c", "t", kind, "mini", spec, metric), result).status

    # A@x: mean 92, sd 2 -> 92 ± 4.968; B@x: mean 81, sd 1 -> 81 ± 2.484.
    assert status(
        "within", {"cell": {"row": "A", "column": "x"}, "target": "reported", "tolerance": 1.0}
    ) == (INCONCLUSIVE)
    assert status("within", {"cell": {"row": "B", "column": "x"}, "target": 81, "tolerance": 3}) == HELD
    assert status("within", {"cell": {"row": "A", "column": "x"}, "target": 50, "tolerance": 1}) == FAILED
    assert (
        status("within", {"cell": {"row": "B", "column": "x"}, "target": "reported", "tolerance": 1.0})
        == NOT_EVALUATED
    )
    order = {"cells": [{"row": "A", "column": "x"}, {"row": "B", "column": "x"}, {"row": "A", "column": "y"}]}
    assert status("order", order) == HELD
    reversed_order = {"cells": list(reversed(order["cells"]))}
    assert status("order", reversed_order) == FAILED
    # drop = 10 - acc / 10 at A@x: [1.0, 0.8, 0.6], mean 0.8 ± 0.497.
    cell = {"cell": {"row": "A", "column": "x"}}
    assert status("at_most", {**cell, "value": 1.5}, "drop") == HELD
    assert status("at_most", {**cell, "value": 0.9}, "drop") == INCONCLUSIVE
    assert status("at_most", {**cell, "value": 0.2}, "drop") == FAILED
    assert status("at_least", {**cell, "value": 0.2}, "drop") == HELD
    assert status("at_least", {**cell, "value": 1.5}, "drop") == FAILED


def test_unshared_seeds_use_welch_and_match_scipy():
    from scipy import stats

    from common.results.intervals import contrast_interval

    a = {0: 90.0, 1: 92.0, 2: 95.0}
    b = {5: 80.0, 6: 84.0, 7: 81.0, 8: 83.0}
    welch = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False).confidence_interval()
    two = contrast_interval([(1.0, a), (-1.0, b)])
    assert two.method == "Welch t" and (two.low, two.high) == pytest.approx((welch.low, welch.high))
    # The Welch-Satterthwaite path for other contrasts: twice the difference has twice the interval.
    doubled = contrast_interval([(2.0, a), (-2.0, b)])
    assert (doubled.low, doubled.high) == pytest.approx((2 * welch.low, 2 * welch.high))
    paired = contrast_interval([(1.0, a), (-1.0, {0: 80.0, 1: 84.0, 2: 81.0})])
    rel = stats.ttest_rel([90.0, 92.0, 95.0], [80.0, 84.0, 81.0]).confidence_interval()
    assert paired.method == "paired t" and (paired.low, paired.high) == pytest.approx((rel.low, rel.high))


def test_confirmatory_claims_are_counted_and_exploratory_ones_shown_apart():
    from common.results.claims import CONFIRMATORY_HEADING, claims_markdown, tally

    result = TableResult(_spec(), "mini", _records(VALUES))
    spec = {"left": {"row": "A", "column": "x"}, "right": {"row": "B", "column": "x"}, "margin": 5}
    confirmatory = evaluate_claim(Claim("c1", "A beats B", "greater", "mini", spec), result)
    exploratory = evaluate_claim(
        Claim(
            "c2",
            "B beats A",
            "greater",
            "mini",
            {**spec, "left": spec["right"], "right": spec["left"]},
            exploratory=True,
        ),
        result,
    )
    skipped = evaluate_claim(
        Claim("c3", "needs paper data", None, "mini", {}, not_evaluated="needs ImageNet"), result
    )
    assert skipped.status == NOT_EVALUATED and skipped.detail == "needs ImageNet"
    counts = tally([confirmatory, exploratory, skipped])
    assert counts == {HELD: 1, NOT_EVALUATED: 1}
    text = claims_markdown("Toy", "mini", [confirmatory, exploratory, skipped])
    confirmed_part, exploratory_part = text.split("## Exploratory claims")
    assert CONFIRMATORY_HEADING in confirmed_part and "`c1`" in confirmed_part and "`c3`" in confirmed_part
    assert "`c2`" in exploratory_part and "**failed**" in exploratory_part
    assert "Confirmatory: 1 held, 0 failed, 0 inconclusive, 1 not evaluated." in text


def test_missing_cells_and_other_scale_are_not_evaluated():
    records = _records({("A", "x"): [90.0]})
    result = TableResult(_spec(), "mini", records)
    claim = Claim(
        "c",
        "t",
        "greater",
        "mini",
        {"left": {"row": "A", "column": "x"}, "right": {"row": "B", "column": "x"}},
    )
    assert evaluate_claim(claim, result).status == NOT_EVALUATED
    paper_claim = Claim("c", "t", "greater", "paper", claim.spec)
    assert evaluate_claim(paper_claim, TableResult(_spec(), "mini", _records(VALUES))).status == NOT_EVALUATED
    assert (
        evaluate_claim(claim, TableResult(_spec(), "mini", _records(VALUES)), min_seeds=4).status
        == NOT_EVALUATED
    )


def test_failed_runs_are_excluded_and_marked():
    records = _records(VALUES)
    records.append(
        RunRecord("toy", "t1", "mini", 9, {"row": "A", "column": "x"}, "failed", "h", reason="nan")
    )
    result = TableResult(_spec(), "mini", records)
    assert result.stats("A", "x").n == 3
    markdown = to_markdown(result)
    assert "92.00 ± 2.00 (1 failed) / 91 ± 0.5" in markdown and "Paper numbers: paper Table 1." in markdown


def _rate_result(exponents: dict[str, float]) -> TableResult:
    """Errors that follow err = 3 * n^slope exactly, with a seed-dependent constant factor."""
    from common.results.paper_spec import RateSpec

    sizes = {"n=10": 10.0, "n=100": 100.0, "n=1000": 1000.0}
    spec = TableSpec(
        id="rates",
        title="rates",
        experiment="toy/rates",
        metric="excess_risk",
        metric_label="excess risk",
        rows={row: {"method": row} for row in exponents},
        columns={c: {"n": x} for c, x in sizes.items()},
        rate=RateSpec(x=sizes, xlabel="n", theory={"A": -0.5}),
    )
    records = [
        RunRecord(
            "toy",
            "rates",
            "mini",
            seed,
            {"row": row, "column": column},
            "complete",
            "h",
            metrics={"excess_risk": (3.0 + seed) * x**slope},
        )
        for row, slope in exponents.items()
        for column, x in sizes.items()
        for seed in range(3)
    ]
    return TableResult(spec, "mini", records)


def test_rate_table_fits_loglog_slope_per_seed(tmp_path):
    from common.results.aggregate import write_csv
    from common.results.plots import plot_table

    result = _rate_result({"A": -0.5, "B": -1.0})
    slope = result.slope("A")
    assert slope.n == 3 and slope.mean == pytest.approx(-0.5) and slope.std == pytest.approx(0.0, abs=1e-9)
    assert result.slope("B").mean == pytest.approx(-1.0)
    text = to_markdown(result)
    assert "log-log slope (fit)" in text and "-0.50 ± 0.00" in text and "| -0.5 |" in text
    write_csv(result, tmp_path / "rates.csv")
    assert "log-log slope" in (tmp_path / "rates.csv").read_text()
    plot_table(result, tmp_path / "rates.png")
    assert (tmp_path / "rates.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"row": "A", "target": -0.5, "tolerance": 0.05}, HELD),
        ({"row": "B", "target": -0.5, "tolerance": 0.05}, FAILED),
        ({"row": "B", "max": -0.9}, HELD),
        ({"row": "A", "min": -0.4}, FAILED),
    ],
)
def test_slope_claims(spec, expected):
    result = _rate_result({"A": -0.5, "B": -1.0})
    assert evaluate_claim(Claim("s", "text", "slope", "mini", spec), result).status == expected


def test_rate_section_is_validated():
    from common.results.paper_spec import _parse_table

    base = {
        "title": "t",
        "experiment": "e",
        "metric": "m",
        "rows": {"A": {}},
        "columns": {"c1": {}, "c2": {}},
    }
    with pytest.raises(ValueError, match="every column"):
        _parse_table("toy", "t", {**base, "rate": {"x": {"c1": 1}}}, "here")
    with pytest.raises(ValueError, match="needs a `rate`"):
        _parse_table(
            "toy",
            "t",
            {**base, "claims": [{"id": "s", "text": "t", "kind": "slope", "row": "A", "max": 0}]},
            "h",
        )
    table = _parse_table("toy", "t", {**base, "rate": {"x": {"c1": 1, "c2": 10}, "theory": -0.5}}, "here")
    assert table.rate.theory == {"A": -0.5}


def test_gap_greater_claim():
    result = TableResult(_spec(), "mini", _records(VALUES))
    # A - B: +11 at x, -1 at y.
    # Per seed (A - B)@x - (A - B)@y = [11, 12, 13]: 12 ± 2.484.
    spec = {"minuend": {"row": "A"}, "subtrahend": {"row": "B"}, "columns": ["x", "y"], "margin": 5}
    assert evaluate_claim(Claim("g", "t", "gap_greater", "mini", spec), result).status == HELD
    spec = {**spec, "columns": ["y", "x"]}
    assert evaluate_claim(Claim("g", "t", "gap_greater", "mini", spec), result).status == FAILED


def test_paper_default_seeds_are_parsed_and_validated():
    from common.reproduce import DEFAULT_SEEDS, parse_seeds
    from common.results.paper_spec import _parse_paper, load_paper

    assert isinstance(load_paper("provable_pretrain").seeds, int)  # its yaml sets a count
    table = {"title": "t", "experiment": "e", "metric": "m", "rows": {"A": {}}, "columns": {"c": {}}}
    unset = _parse_paper("toy", {"title": "toy", "tables": {"t": table}}, "here").seeds
    assert unset is None and parse_seeds(unset or DEFAULT_SEEDS) == [0, 1, 2]
    with pytest.raises(ValueError, match="seeds"):
        _parse_paper("toy", {"title": "toy", "tables": {"t": table}, "seeds": 0}, "here")


def test_table_digits_set_the_decimals_of_cells_and_claims():
    from common.results.paper_spec import _parse_table

    base = {"title": "t", "experiment": "e", "metric": "m", "rows": {"A": {}}, "columns": {"c": {}}}
    assert _parse_table("toy", "t", base, "here").digits == 2
    assert _parse_table("toy", "t", {**base, "digits": 4}, "here").digits == 4
    for bad in (-1, 9, 2.5, True):
        with pytest.raises(ValueError, match="digits"):
            _parse_table("toy", "t", {**base, "digits": bad}, "here")
    small = {("A", "x"): [0.0012, 0.0014], ("B", "x"): [0.0010, 0.0010]}
    result = TableResult(_spec(digits=4), "mini", _records(small))
    assert "| **A** | 0.0013 ± 0.0001 / 91 ± 0.5 |" in to_markdown(result)
    spec = {"left": {"row": "A"}, "right": {"row": "B"}, "columns": ["x"]}
    claim = Claim("g", "t", "greater", "mini", spec)
    outcome = evaluate_claim(claim, result)
    # Two seeds: per-seed differences [0.0002, 0.0004], t(0.975, 1) = 12.71, so the interval spans zero.
    assert outcome.status == INCONCLUSIVE and "+0.0003, 95% CI [-0.0010, +0.0016]" in outcome.detail


def test_changed_values_compare_runs_of_the_same_config_only():
    from common.reproduce import changed_values

    def manifest(*runs):
        keys = ("table", "row", "column", "seed", "config_hash", "value")
        return {"runs": [dict(zip(keys, run, strict=True)) for run in runs]}

    before = manifest(
        ("t", "A", "x", 0, "h1", 90.0),
        ("t", "A", "x", 1, "h1", 91.0),
        ("t", "B", "x", 0, "h2", 80.0),
        ("t", "B", "y", 0, "h3", float("nan")),
    )
    after = manifest(
        ("t", "A", "x", 0, "h1", 90.0),  # unchanged
        ("t", "A", "x", 1, "h1", 91.5),  # same config, new number: reported
        ("t", "B", "x", 0, "h9", 70.0),  # config changed: not comparable
        ("t", "B", "y", 0, "h3", float("nan")),  # NaN both times: unchanged
        ("t", "C", "x", 0, "h4", 1.0),  # new run
    )
    assert changed_values(before, after) == [(("t", "A", "x", 1), 91.0, 91.5)]
    assert changed_values({"runs": [{"table": "t", "row": "A", "column": "x", "seed": 0}]}, after) == []


def test_only_a_full_run_at_the_confirmatory_seeds_writes_committed_results():
    from pathlib import Path

    from common.reproduce import PlannedRun, confirmatory_seeds, quick_look_reason
    from common.results.paper_spec import _parse_paper

    table = {"title": "t", "experiment": "e", "metric": "m", "rows": {"A": {}}, "columns": {"c": {}}}
    paper = _parse_paper("toy", {"title": "toy", "tables": {"t": table}, "seeds": 2}, "here")
    assert confirmatory_seeds(paper) == [1000, 1001]
    record = RunRecord("toy", "t", "mini", 1000, {}, "complete", "h", paper_code_hash="p")
    done = PlannedRun("t", "A", "c", 1000, [], Path("."), "h", "p", record)
    seeds = [1000, 1001]
    assert (
        quick_look_reason(paper, seeds, ["runtime.num_threads=1", "logger=none"], None, None, [done]) is None
    )
    assert "overrides" in quick_look_reason(paper, seeds, ["trainer.max_epochs=2"], None, None, [done])
    assert "subset" in quick_look_reason(paper, seeds, [], None, ["c"], [done])
    assert "seeds [0, 1]" in quick_look_reason(paper, [0, 1], [], None, None, [done])
    stale = PlannedRun("t", "A", "c", 1000, [], Path("."), "h", "new paper code", record)
    assert "1 of 1 runs" in quick_look_reason(paper, seeds, [], None, None, [stale])


@pytest.mark.parametrize("bad", ["abc", 1.5, "1.5", 0, -8, True, [1, "x"], [3, 3], "1,,x", []])
def test_bad_seeds_get_one_clear_error(bad):
    from common.errors import UserError
    from common.reproduce import parse_seeds

    with pytest.raises(UserError, match="seeds must be"):
        parse_seeds(bad)


def test_seeds_as_counts_lists_and_comma_strings():
    from common.reproduce import parse_seeds

    assert parse_seeds(3) == [0, 1, 2] and parse_seeds("2") == [0, 1]
    assert parse_seeds([1000, 1001]) == [1000, 1001] and parse_seeds("5, 7") == [5, 7]


@pytest.mark.parametrize("argv", [["paper="], ["paper=null"], []])
def test_a_missing_paper_says_which_to_choose(argv):
    from common.errors import UserError
    from common.reproduce import parse_options

    with pytest.raises(UserError, match="choose a paper: .*papers: .*elr"):
        parse_options(argv)
