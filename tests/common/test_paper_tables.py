"""The config source behind `conf/papers/<key>/`: a table file becomes the `experiment` and `table_scale`
configs, `shares_training_with` composes the base table first, and mistakes in a table file are named."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.plugins.config_source import ConfigLoadError
from omegaconf import OmegaConf

from hydra_plugins.pnu_repro_tables import paper_tables
from hydra_plugins.pnu_repro_tables.paper_tables import PaperTablesSource
from tests.conftest import compose


def _source(tmp_path: Path, files: dict[str, str]) -> PaperTablesSource:
    root = tmp_path / "conf" / "papers"
    for name, text in {"toy/paper.yaml": "title: Toy\n", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return PaperTablesSource("test", str(root))


BASE = """\
objective: test/acc
protocol: {kind: curve, report: null}
mini:
  data: {n: 10}
paper:
  data: {n: 1000}
"""


def test_a_table_file_is_its_experiment_and_one_config_per_scale(tmp_path: Path):
    source = _source(tmp_path, {"toy/base.yaml": BASE})
    experiment = source.load_config("experiment/toy/base")
    assert experiment.header["package"] == "_global_"
    assert OmegaConf.to_container(experiment.config) == {
        "objective": "test/acc",
        "protocol": {"kind": "curve", "report": None},
        "paper": "toy",
        "table": "base",
    }
    assert OmegaConf.to_container(source.load_config("table_scale/toy/base/paper").config) == {
        "data": {"n": 1000}
    }
    assert source.is_config("table_scale/toy/base/mini") and not source.is_config("table_scale/toy/base/huge")
    assert source.list("experiment/toy", None) == ["base"]
    assert source.list("table_scale/toy/base", None) == ["mini", "paper"]


def test_shares_training_with_composes_the_base_table_first(tmp_path: Path):
    source = _source(
        tmp_path,
        {"toy/base.yaml": BASE, "toy/report.yaml": "shares_training_with: base\nprotocol: {report: f1}\n"},
    )
    experiment = OmegaConf.to_container(source.load_config("experiment/toy/report").config)
    assert experiment == {
        "protocol": {"report": "f1"},
        "defaults": ["/experiment/toy/base", "_self_"],
        "paper": "toy",
        "table": "report",
    }
    assert source.is_config("table_scale/toy/report/mini")  # the base's scales
    scale = OmegaConf.to_container(source.load_config("table_scale/toy/report/mini").config)
    assert scale == {"defaults": ["/table_scale/toy/base/mini", "_self_"]}


def test_a_shared_table_composes_as_its_base_with_its_own_report():
    """Through Hydra, on the repo's configs: nbpo's flip_model reads the top_k trainings."""
    base, shared = compose(["experiment=nbpo/top_k"]), compose(["experiment=nbpo/flip_model"])
    assert shared.table == "flip_model" and shared.protocol.report == "flip/voted_mean"
    for key in ("data", "model", "method", "trainer"):
        assert OmegaConf.to_container(shared[key]) == OmegaConf.to_container(base[key]), key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("shares_training_with: nope\n", "names no other table"),
        ("shares_training_with: bad\n", "names no other table"),  # itself
        ("table: bad\nmini: {}\n", "is set by the file's path"),
        ("paper: toy\n", "is set by the file's path"),
        ("mini: [1, 2]\n", "`mini:` holds the table's mini-scale settings"),
    ],
)
def test_mistakes_in_a_table_file_are_named(tmp_path: Path, text: str, message: str):
    source = _source(tmp_path, {"toy/base.yaml": BASE, "toy/bad.yaml": text})
    with pytest.raises(ConfigLoadError, match=message):
        source.load_config("experiment/toy/bad")


def test_a_paper_owns_options_of_its_groups_under_unique_names(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(paper_tables, "declared", lambda kind: set())
    source = _source(tmp_path, {"toy/method/toy_fast.yaml": "name: toy_fast\nlr: 0.1\n"})
    assert source.is_group("method") and source.list("method", None) == ["toy_fast"]
    assert OmegaConf.to_container(source.load_config("method/toy_fast").config) == {
        "name": "toy_fast",
        "lr": 0.1,
    }

    clash = _source(
        tmp_path, {"other/paper.yaml": "title: Other\n", "other/method/toy_fast.yaml": "name: x\n"}
    )
    with pytest.raises(ConfigLoadError, match="defined twice"):
        clash.list("method", None)

    (tmp_path / "conf" / "method").mkdir()
    (tmp_path / "conf" / "method" / "ce.yaml").write_text("name: ce\n")
    shadow = _source(tmp_path, {"toy/method/ce.yaml": "name: ce\n"})
    (tmp_path / "conf" / "papers" / "other" / "method" / "toy_fast.yaml").unlink()
    with pytest.raises(ConfigLoadError, match="defined twice"):
        shadow.is_config("method/ce")


def test_a_registered_method_with_no_file_is_its_name_alone(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(paper_tables, "declared", lambda kind: {"toy_plain", "toy_fast", "shared"})
    source = _source(tmp_path, {"toy/method/toy_fast.yaml": "name: toy_fast\nlr: 0.1\n"})
    assert source.is_config("method/toy_plain") and not source.is_config("data/toy_plain")
    assert OmegaConf.to_container(source.load_config("method/toy_plain").config) == {"name": "toy_plain"}
    assert source.load_config("method/toy_fast").config.lr == 0.1  # a file wins
    assert not source.is_config("method/toy_typo")  # not registered: Hydra names the options
    (tmp_path / "conf" / "method").mkdir()
    (tmp_path / "conf" / "method" / "shared.yaml").write_text("name: shared\nlr: 1\n")
    assert not source.is_config("method/shared")  # the shared file serves it
    assert source.list("method", None) == ["toy_fast", "toy_plain"]


def test_the_declared_names_are_the_registered_ones():
    """`declared` reads the registrations from the source; importing every paper gives the same names."""
    from common.registry import KINDS, available, declared, lookup

    for kind in KINDS:
        # Tests register their own toy methods at run time; those are not in the source tree.
        registered = {
            name for name in available(kind) if not lookup(kind, name).__module__.startswith("tests")
        }
        assert declared(kind) == registered, kind


def test_a_registered_method_composes_without_a_file():
    from common.config import CONFIG_DIR
    from common.registry import lookup

    assert not list(CONFIG_DIR.rglob("method/llp_bp_dllp.yaml"))
    cfg = compose(["method=llp_bp_dllp"])
    assert OmegaConf.to_container(cfg.method) == {"name": "llp_bp_dllp"}
    assert lookup("method", cfg.method.name).__name__ == "DLLPPipeline"
    assert OmegaConf.to_container(compose([]).method) == {"name": "ce"}  # the default, no file either
    with pytest.raises(Exception, match="Could not find 'method/llp_bp_dlp'"):
        compose(["method=llp_bp_dlp"])
