"""unl: every cell of the table composes to a run of the method its row names (each registered by its own
paper), on one data set, backbone, schedule and seed set; one tiny cell runs through the harness."""

from __future__ import annotations

import ast
from pathlib import Path

from common.config import compose_run_configs
from common.registry import declared
from common.reproduce import run_overrides
from common.results.paper_spec import load_paper
from common.run import execute
from tests.conftest import REPO_ROOT, compose

PAPER = load_paper("unl")
TABLE = PAPER.tables["noisy_labels"]
# The method each row names, and the paper package that registers it (None: common's cross entropy).
METHODS = {
    "CE": ("ce", None),
    "ELR": ("elr", "elr"),
    "Confident Learning": ("confident_learning", "confident_learning"),
    "CPC": ("cpc", "cpc"),
    "DivideMix (loss GMM)": ("cpc", "cpc"),
    "RCAL (DC)": ("rcal", "rcal"),
}
# Keys that may differ between rows: the method and (RCAL's) two-view serving of the same data.
ROW_KEYS = {"method", "data"}


def _cell_configs(table=TABLE):
    cells = [(row, column) for row in table.rows for column in table.columns]
    configs = compose_run_configs([run_overrides(PAPER, table, r, c, 1000, "mini") for r, c in cells])
    return dict(zip(cells, configs, strict=True))


def test_every_cell_composes_to_its_rows_registered_method_on_one_setting():
    configs = _cell_configs()
    assert len(configs) == 36
    for (row, column), cfg in configs.items():
        name, owner = METHODS[row]
        assert cfg.method.name == name, (row, column)
        assert name in declared("method")
        spec = TABLE.columns[column]
        assert (cfg.data.noise_type, cfg.data.noise_rate) == (
            spec["data.noise_type"],
            spec["data.noise_rate"],
        )
        # One data set (the same digits split), backbone and schedule for every row.
        assert (cfg.data.source, cfg.data.split_seed, cfg.data.test_fraction) == ("digits", 0, 0.3)
        assert cfg.data.get("noise_include_true_class", False) is False  # a flip to another class
        assert cfg.model.backbone == "mlp" and list(cfg.model.hidden_dims) == [256, 256]
        assert cfg.trainer.max_epochs == 30 and cfg.optim.scheduler is None
        assert (cfg.optim.optimizer._target_, cfg.optim.optimizer.lr) == ("torch.optim.SGD", 0.1)
    assert configs[("Confident Learning", "sym-40%")].method.filter_by == "prune_by_noise_rate"
    assert configs[("CPC", "sym-40%")].method.cleaner == "cpc"
    assert configs[("DivideMix (loss GMM)", "sym-40%")].method.cleaner == "global_gmm"
    assert configs[("CPC", "pair-40%")].method.confidence_penalty is True
    assert configs[("CPC", "sym-40%")].method.confidence_penalty is False
    assert configs[("RCAL (DC)", "sym-40%")].data.datamodule == "rcal_multiview"
    assert configs[("RCAL (DC)", "sym-40%")].method.individual_calibration is False


def test_the_drop_claims_read_the_second_metric_of_the_same_table():
    drop = [c for c in TABLE.claims if c.metric == "test/acc_drop_from_peak"]
    assert [c.id for c in drop if not c.exploratory] == ["ce_drop_exceeds_elr_sym40"]
    assert set(PAPER.tables) == {"noisy_labels"}


def test_rows_differ_only_in_method_and_views():
    for row, overrides in TABLE.rows.items():
        assert {key.split(".")[0] for key in overrides} <= ROW_KEYS, row


def test_unl_imports_no_paper():
    for path in (REPO_ROOT / "papers" / "unl").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(name.startswith("papers") for name in names), path


def test_a_tiny_cell_runs_through_the_harness(output_root: Path):
    overrides = run_overrides(PAPER, TABLE, "ELR", "sym-40%", 0, "mini")
    tiny = [
        "trainer.max_epochs=3",
        "runtime.progress=false",
        "logger=none",
        f"runtime.output_root={output_root}",
    ]
    record = execute(compose([*overrides, *tiny]))
    assert record.complete, record.reason
    assert len(record.curves["val/acc"]) == 3
    assert 10.0 <= record.metrics["test/acc"] <= 100.0
    # The second metric (drop from the best epoch), which the claims read from the same record.
    assert record.metrics["test/acc_drop_from_peak"] >= 0.0
