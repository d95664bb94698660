"""What a user sees of the whole project: `make list`, `make report`, `make reproduce PAPER=all`."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from rich.console import Console

from common import reproduce as reproduce_module
from common.results import listing, report
from common.results.paper_spec import FAMILIES, available_papers, load_paper
from tests.conftest import REPO_ROOT


def test_the_list_shows_every_paper_with_its_committed_verdicts():
    entries = listing.collect(REPO_ROOT / "results", compose_paper_scale=False)
    assert [e.paper.key for e in entries] == available_papers()
    console = Console(record=True, width=200)
    listing.render(entries, console)
    text = console.export_text()
    for entry in entries:
        assert entry.paper.key in text and entry.paper.family in text
        assert entry.run_seconds and entry.run_seconds > 0  # every paper has committed mini results
    assert sum(e.verdicts["held"] for e in entries) > 0


def test_paper_scale_needs_name_hub_data_weights_and_inputs_made_by_hand():
    cfg = OmegaConf.create(
        {
            "trainer": {"devices": 2, "num_nodes": 2},
            "data": {"hub_id": "org/images", "runs": {"bm25": None}, "csv_dir": "data/x", "noise_rate": 0.2},
            "model": {"pretrained": "org/weights", "backbone": "resnet18"},
        }
    )
    assert listing.paper_scale_needs(cfg) == (4, {"org/images", "org/weights"}, {"data.runs"})
    (cet,) = listing.collect(REPO_ROOT / "results", keys=["cet"])
    assert cet.gpus == 1 and "microsoft/ms_marco" in cet.hub and cet.hand_made == {"data.runs"}


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[name] for name in ("href", "src") if name in attrs]
        if "id" in attrs:
            self.ids.add(attrs["id"])


def test_the_report_links_every_committed_table_and_plot(tmp_path: Path):
    results = tmp_path / "results"
    shutil.copytree(REPO_ROOT / "results", results, ignore=shutil.ignore_patterns("index.html"))
    out = results / "index.html"
    report.build(results, out)
    parser = _Links()
    parser.feed(out.read_text(encoding="utf-8"))
    for link in parser.links:
        if link.startswith("#"):
            assert link[1:] in parser.ids, link
        elif link.startswith("../papers/"):
            assert (REPO_ROOT / link.removeprefix("../")).is_file(), link
        else:
            assert "://" not in link and (out.parent / link).is_file(), link
    committed = sorted(results.glob("*/*/*.csv"))
    assert committed
    for csv_path in committed:
        key, table = csv_path.parent.parent.name, csv_path.stem
        assert f"{key}-{table}" in parser.ids, csv_path
        if csv_path.with_suffix(".png").is_file():
            assert csv_path.with_suffix(".png").relative_to(results).as_posix() in parser.links
    for family in {load_paper(key).family for key in available_papers()}:
        assert family in parser.ids


def test_paper_all_runs_each_paper_of_a_family_and_reports_the_worst_exit(monkeypatch, capsys):
    seen = []

    def fake(cfg):
        seen.append(cfg.paper)
        return 1 if cfg.paper == "rcal" else 0

    monkeypatch.setattr(reproduce_module, "reproduce", fake)
    code = reproduce_module.main(["paper=all", "family=noisy_longtail", "seeds=2"])
    family = [key for key in available_papers() if load_paper(key).family == "noisy_longtail"]
    assert seen == family and code == 1
    assert "exit 1" in capsys.readouterr().out
    seen.clear()
    assert reproduce_module.main(["paper=all"]) == 1 and seen == available_papers()
    capsys.readouterr()
    assert reproduce_module.main(["paper=all", "family=nope"]) == 2
    assert f"family must be one of {FAMILIES}" in capsys.readouterr().err


def test_fetch_loads_exactly_what_a_paper_scale_table_reads(monkeypatch, capsys):
    """With a fake hub that records each request and has nothing, `make fetch` asks for the table's data
    sets (once per distinct setup, not per noise rate) and says what it could not fetch."""
    import datasets

    from common import fetch

    requested = []

    def fake_hub(path, name=None, split=None, **kwargs):
        requested.append((path, name, split))
        raise ConnectionError("the fake hub has nothing")

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    assert fetch.main(["paper=elr", "table=table1"]) == 1
    assert requested == [("uoft-cs/cifar10", None, None)]
    out = " ".join(capsys.readouterr().out.split())
    assert "not fetched" in out and "0 of 1 setups cached" in out
    assert fetch.main(["paper=cet", "dry_run=true"]) == 0
    assert "bert-base-uncased, microsoft/ms_marco" in " ".join(capsys.readouterr().out.split())


def test_an_aggregated_table_is_logged_to_its_wandb_group(tmp_path: Path, monkeypatch):
    from common.results.aggregate import write_csv
    from common.results.plots import plot_table
    from common.results.wandb_tables import log_tables
    from tests.conftest import committed_table_result

    monkeypatch.setenv("WANDB_MODE", "offline")
    result, claims = committed_table_result("elr", "table1")
    write_csv(result, tmp_path / "table1.csv")
    plot_table(result, tmp_path / "table1.png", claims)
    assert log_tables("elr", "mini", [result], claims, tmp_path, tmp_path / "wandb") == [
        "elr-mini-table1-table"
    ]
    (run_dir,) = (tmp_path / "wandb").rglob("offline-run-*-elr-mini-table1-table")
    (logged_table,) = run_dir.rglob("table_*.table.json")
    (logged_claims,) = run_dir.rglob("claims_*.table.json")
    columns = json.loads(logged_table.read_text())["columns"]
    assert columns[:4] == ["paper_table", "scale", "row", "column"]
    assert "elr_beats_ce_sym40" in logged_claims.read_text()
    assert list(run_dir.rglob("figure_*.png"))


def test_the_report_renders_in_headless_chromium(tmp_path: Path):
    """Where a Chromium is installed: it loads the page from the file system and builds its DOM."""
    import subprocess

    browser = next(
        (
            found
            for name in ("chromium", "chromium-browser", "google-chrome")
            if (found := shutil.which(name))
        ),
        None,
    )
    if browser is None:
        pytest.skip("no Chromium installed")
    results = tmp_path / "results"
    shutil.copytree(REPO_ROOT / "results", results, ignore=shutil.ignore_patterns("index.html"))
    report.build(results, results / "index.html")
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            (results / "index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0 and "PNU-Repro results" in dom.stdout and "<img" in dom.stdout


def test_a_fresh_clone_aggregates_the_committed_runs_instead_of_rerunning(tmp_path: Path, capsys):
    results = tmp_path / "results"
    shutil.copytree(REPO_ROOT / "results" / "elr", results / "elr")
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    code = reproduce_module.main(
        ["paper=elr", f"output_root={tmp_path / 'outputs'}", f"results_root={results}"]
    )
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0, out
    assert "30 runs are complete in the committed results" in out and "30 complete, 0 to run" in out
    assert "are current; nothing written" in out and "confirmatory: 3 held" in out
    assert {p: p.read_bytes() for p in results.rglob("*") if p.is_file()} == before
    assert not list((tmp_path / "outputs").rglob("result.json"))  # nothing ran
