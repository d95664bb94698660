"""upu: one cell of the table through the harness (a few epochs), and the table's cells name the registered
PU methods on the pu_binary data."""

from __future__ import annotations

from pathlib import Path

from common.results.paper_spec import load_paper
from common.run import execute
from tests.conftest import compose


def test_a_cell_runs_through_the_harness_and_records_accuracy_and_auroc(tmp_path: Path):
    record = execute(
        compose(
            [
                "experiment=upu/pu",
                "method=nnpu",
                "data.labeled_fraction=0.1",
                "trainer.max_epochs=5",
                "runtime.progress=false",
                "logger=none",
                "cell.row=nnPU",
                "cell.column=flexible-10",
                f"runtime.output_root={tmp_path}",
            ]
        )
    )
    assert record.complete, record.reason
    assert 50 <= record.metrics["test/acc"] <= 100 and 50 <= record.metrics["test/auroc"] <= 100
    assert len(record.curves["val/acc"]) == 1  # evaluated every 5 epochs


def test_rows_are_the_registered_pu_methods():
    table = load_paper("upu").tables["pu"]
    assert {row: table.rows[row]["method"] for row in table.rows} == {
        "uPU": "upu",
        "nnPU": "nnpu",
        "VPU": "vpu",
        "PU-MLC": "pu_mlc_single_label",
        "PN oracle": "pn_oracle",
    }
    assert load_paper("upu").methods_from == ("pu_mlc",)  # the PU-MLC row's code is part of the table's hash
