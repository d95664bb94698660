"""A paper's tables, reported numbers and claims, read from `conf/papers/<key>/paper.yaml` and validated."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from common.config import CONFIG_DIR
from common.errors import UserError

CLAIM_KINDS = ("greater", "within", "order", "at_most", "at_least", "slope", "gap_greater")


@dataclass(frozen=True)
class Reported:
    row: str
    column: str
    value: float
    source: str
    std: float | None = None
    metric: str | None = None


@dataclass(frozen=True)
class Claim:
    """A claim over a table's cells. Confirmatory claims are the catalog's pre-registered ones and count in
    the totals; `exploratory` ones (added after seeing results) are shown but not counted. A claim with
    `not_evaluated` (the reason) cannot be evaluated at its scale and is listed with that reason."""

    id: str
    text: str
    kind: str | None
    scale: str
    spec: dict[str, Any]
    metric: str | None = None
    exploratory: bool = False
    not_evaluated: str | None = None

    @property
    def confirmatory(self) -> bool:
        return not self.exploratory

    def registration(self) -> dict[str, Any]:
        """What pre-registration fixes: the text, kind, scale, metric and every threshold and cell."""
        return {
            "text": self.text,
            "kind": self.kind,
            "scale": self.scale,
            "metric": self.metric,
            "not_evaluated": self.not_evaluated,
            **self.spec,
        }


@dataclass(frozen=True)
class CellOverride:
    row: str
    column: str
    scale: str | None
    overrides: dict[str, Any]


@dataclass(frozen=True)
class RateSpec:
    """A table whose columns are sample sizes: the metric is fitted as a power law of `x` per row (log-log
    slope per seed) and plotted on log-log axes beside the theorem's slopes."""

    x: dict[str, float]
    xlabel: str
    theory: dict[str, float]
    theory_label: str = "theorem"


@dataclass
class TableSpec:
    id: str
    title: str
    experiment: str
    metric: str
    metric_label: str
    rows: dict[str, dict[str, Any]]
    columns: dict[str, dict[str, Any]]
    scales: tuple[str, ...] = ("mini", "paper")
    higher_is_better: bool = True
    reported: list[Reported] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    cell_overrides: list[CellOverride] = field(default_factory=list)
    curves: dict[str, Any] | None = None
    rate: RateSpec | None = None
    notes: str = ""
    digits: int = 2

    def cells(self) -> list[tuple[str, str]]:
        return [(row, column) for row in self.rows for column in self.columns]

    def cell_overrides_for(self, row: str, column: str, scale: str) -> dict[str, Any]:
        """Row overrides, then column overrides, then any overrides of this one cell at this scale."""
        merged = {**self.rows[row], **self.columns[column]}
        for extra in self.cell_overrides:
            if extra.row == row and extra.column == column and extra.scale in (None, scale):
                merged.update(extra.overrides)
        return merged

    def reported_for(self, row: str, column: str, metric: str | None = None) -> Reported | None:
        for item in self.reported:
            if (
                item.row == row
                and item.column == column
                and (item.metric or self.metric) == (metric or self.metric)
            ):
                return item
        return None


@dataclass
class PaperSpec:
    key: str
    title: str
    arxiv: str | None
    venue: str | None
    code: str | None
    tables: dict[str, TableSpec]
    seeds: int | list[int] | None = None  # default seeds of `make reproduce` for this paper
    family: str = ""  # one of FAMILIES: `make list`, `make reproduce PAPER=all FAMILY=<family>`
    # A cross-paper table's sources: the papers whose registered methods its cells name. Their code is part
    # of this paper's code hash (common/results/provenance.py), so a change there marks its results stale.
    methods_from: tuple[str, ...] = ()

    def tables_at(self, scale: str, only: str | None = None) -> list[TableSpec]:
        if only is not None and only not in self.tables:
            raise UserError(f"paper {self.key!r} has no table {only!r}; its tables: {', '.join(self.tables)}")
        chosen = [self.tables[only]] if only else list(self.tables.values())
        at_scale = [t for t in chosen if scale in t.scales]
        if not at_scale:
            raise UserError(
                f"no table of {self.key!r} ({', '.join(t.id for t in chosen)}) runs at scale {scale!r}"
            )
        return at_scale


#: The families of papers the project reproduces.
FAMILIES = (
    "noisy_longtail",  # noisy labels, long tails, classification losses
    "pu_weak_theory",  # positive-unlabeled, missing-not-at-random feedback, weak supervision, theory
    "contrastive_ssl",  # hard and false negatives in contrastive and self-supervised learning
    "semisup_gcd",  # semi-supervised learning, category discovery
    "unlearning",  # machine unlearning
    "embeddings",  # embedding models, retrieval
    "llm_training",  # LLM training with negative examples
)


def paper_config_path(key: str, config_dir: Path = CONFIG_DIR) -> Path:
    """`conf/papers/<key>/paper.yaml`: the paper's tables, reported numbers and claims."""
    return config_dir / "papers" / key / "paper.yaml"


def available_papers(config_dir: Path = CONFIG_DIR) -> list[str]:
    return sorted(p.parent.name for p in (config_dir / "papers").glob("*/paper.yaml"))


def load_paper(key: str, config_dir: Path = CONFIG_DIR) -> PaperSpec:
    path = paper_config_path(key, config_dir)
    if not path.exists():
        raise UserError(
            f"unknown paper {key!r}; available: {', '.join(available_papers(config_dir)) or '(none)'}"
        )
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    where = f"{path.relative_to(config_dir.parent) if config_dir.parent in path.parents else path}"
    try:
        return _parse_paper(key, raw, where)
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{where} is malformed: {err}") from err


def _parse_paper(key: str, raw: dict[str, Any], where: str) -> PaperSpec:
    _only_keys(
        raw,
        {"key", "title", "arxiv", "venue", "code", "family", "tables", "notes", "seeds", "methods_from"},
        where,
    )
    if "family" in raw and raw["family"] not in FAMILIES:  # texts from before families may lack one
        raise ValueError(f"family must be one of {FAMILIES}, got {raw['family']!r}")
    if raw.get("key", key) != key:
        raise ValueError(f"key {raw['key']!r} differs from the file name {key!r}")
    tables = {
        tid: _parse_table(key, tid, spec, f"{where}: tables.{tid}") for tid, spec in raw["tables"].items()
    }
    seeds = raw.get("seeds")
    if seeds is not None and not (
        (isinstance(seeds, int) and seeds > 0)
        or (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds))
    ):
        raise ValueError(f"seeds must be a positive count or a list of seeds, got {seeds!r}")
    methods_from = raw.get("methods_from") or []
    if not (isinstance(methods_from, list) and all(isinstance(m, str) for m in methods_from)):
        raise ValueError(f"methods_from must be a list of paper keys, got {methods_from!r}")
    if key in methods_from:
        raise ValueError("methods_from lists the paper itself; list only the other papers it runs methods of")
    return PaperSpec(
        key,
        raw["title"],
        raw.get("arxiv"),
        raw.get("venue"),
        raw.get("code"),
        tables,
        seeds,
        raw.get("family", ""),
        tuple(methods_from),
    )


def _parse_table(key: str, tid: str, raw: dict[str, Any], where: str) -> TableSpec:
    allowed = {
        "title",
        "experiment",
        "metric",
        "metric_label",
        "rows",
        "columns",
        "scales",
        "higher_is_better",
        "reported",
        "claims",
        "cell_overrides",
        "curves",
        "rate",
        "notes",
        "digits",
    }
    _only_keys(raw, allowed, where)
    digits = raw.get("digits", 2)
    if not isinstance(digits, int) or isinstance(digits, bool) or not 0 <= digits <= 8:
        raise ValueError(f"{where}.digits must be an integer from 0 to 8 (decimals shown), got {digits!r}")
    rows, columns = raw["rows"], raw["columns"]
    if not rows or not columns:
        raise ValueError(f"{where} needs at least one row and one column")
    for label, overrides in [*rows.items(), *columns.items()]:
        if not isinstance(overrides, dict):
            raise ValueError(f"{where}: row/column {label!r} must map config keys to values")
    reported = [Reported(**item) for item in raw.get("reported") or []]
    for item in reported:
        if item.row not in rows or item.column not in columns:
            raise ValueError(f"{where}: reported value for unknown cell ({item.row!r}, {item.column!r})")
        if not item.source:
            raise ValueError(f"{where}: reported value for ({item.row}, {item.column}) has no source")
    claims = [_parse_claim(item, rows, columns, where) for item in raw.get("claims") or []]
    rate = _parse_rate(raw["rate"], rows, columns, f"{where}.rate") if raw.get("rate") else None
    for claim in claims:
        if claim.kind == "slope" and rate is None:
            raise ValueError(f"{where}: slope claim {claim.id!r} needs a `rate` section in its table")
    cell_overrides = [
        CellOverride(item["row"], item["column"], item.get("scale"), dict(item["overrides"]))
        for item in raw.get("cell_overrides") or []
    ]
    return TableSpec(
        id=tid,
        title=raw["title"],
        experiment=raw.get("experiment", f"{key}/{tid}"),
        metric=raw["metric"],
        metric_label=raw.get("metric_label", raw["metric"]),
        rows=rows,
        columns=columns,
        scales=tuple(raw.get("scales", ("mini", "paper"))),
        higher_is_better=raw.get("higher_is_better", True),
        reported=reported,
        claims=claims,
        cell_overrides=cell_overrides,
        curves=raw.get("curves"),
        rate=rate,
        notes=raw.get("notes", ""),
        digits=digits,
    )


def _parse_claim(raw: dict[str, Any], rows: dict, columns: dict, where: str) -> Claim:
    _only_keys(
        raw,
        {
            "id",
            "text",
            "kind",
            "scale",
            "metric",
            "left",
            "right",
            "columns",
            "margin",
            "cell",
            "target",
            "tolerance",
            "cells",
            "value",
            "row",
            "min",
            "max",
            "minuend",
            "subtrahend",
            "exploratory",
            "not_evaluated",
        },
        where,
    )
    reason = raw.get("not_evaluated")
    if reason is not None and not (isinstance(reason, str) and reason.strip()):
        raise ValueError(f"{where}: claim {raw.get('id')!r}: not_evaluated must be the reason, as text")
    if not isinstance(raw.get("exploratory", False), bool):
        raise ValueError(f"{where}: claim {raw.get('id')!r}: exploratory must be true or false")
    if reason is not None and "kind" not in raw:
        return Claim(
            raw["id"],
            raw["text"],
            None,
            raw.get("scale", "mini"),
            {},
            None,
            raw.get("exploratory", False),
            reason,
        )
    if raw.get("kind") not in CLAIM_KINDS:
        raise ValueError(
            f"{where}: claim {raw.get('id')!r} has kind {raw['kind']!r}; use one of {CLAIM_KINDS}"
        )
    for ref in _claim_refs(raw):
        if ref.get("row") is not None and ref["row"] not in rows:
            raise ValueError(f"{where}: claim {raw['id']!r} names unknown row {ref['row']!r}")
        if ref.get("column") is not None and ref["column"] not in columns:
            raise ValueError(f"{where}: claim {raw['id']!r} names unknown column {ref['column']!r}")
    for column in raw.get("columns") or []:
        if column not in columns:
            raise ValueError(f"{where}: claim {raw['id']!r} names unknown column {column!r}")
    if raw["kind"] == "gap_greater" and (
        not all(isinstance(raw.get(k), dict) for k in ("minuend", "subtrahend"))
        or len(raw.get("columns") or []) != 2
    ):
        raise ValueError(
            f"{where}: gap_greater claim {raw['id']!r} needs minuend and subtrahend rows and two columns"
        )
    if raw["kind"] == "slope":
        if not isinstance(raw.get("row"), str):
            raise ValueError(f"{where}: slope claim {raw['id']!r} needs `row`")
        has_target = "target" in raw and "tolerance" in raw
        if not (has_target or "min" in raw or "max" in raw):
            raise ValueError(f"{where}: slope claim {raw['id']!r} needs target+tolerance, min or max")
    meta = ("id", "text", "kind", "scale", "metric", "exploratory", "not_evaluated")
    spec = {k: v for k, v in raw.items() if k not in meta}
    return Claim(
        raw["id"],
        raw["text"],
        raw["kind"],
        raw.get("scale", "mini"),
        spec,
        raw.get("metric"),
        raw.get("exploratory", False),
        reason,
    )


def _claim_refs(raw: dict[str, Any]) -> list[dict[str, Any]]:
    refs = [
        raw[k] for k in ("left", "right", "cell", "minuend", "subtrahend") if isinstance(raw.get(k), dict)
    ]
    if isinstance(raw.get("row"), str):
        refs.append({"row": raw["row"]})
    return refs + list(raw.get("cells") or [])


def _parse_rate(raw: dict[str, Any], rows: dict, columns: dict, where: str) -> RateSpec:
    _only_keys(raw, {"x", "xlabel", "theory", "theory_label"}, where)
    x = {str(k): float(v) for k, v in raw["x"].items()}
    if set(x) != set(columns):
        raise ValueError(f"{where}.x must give a positive number for every column {list(columns)}")
    if any(v <= 0 for v in x.values()):
        raise ValueError(f"{where}.x values must be positive (they are plotted on a log axis)")
    theory = raw.get("theory") or {}
    if not isinstance(theory, dict):
        theory = dict.fromkeys(rows, theory)
    unknown = set(theory) - set(rows)
    if unknown:
        raise ValueError(f"{where}.theory names unknown rows {sorted(unknown)}")
    return RateSpec(
        x=x,
        xlabel=str(raw.get("xlabel", "n")),
        theory={str(k): float(v) for k, v in theory.items()},
        theory_label=str(raw.get("theory_label", "theorem")),
    )


def _only_keys(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(raw) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
