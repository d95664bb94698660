"""Every config under conf/ composes and instantiates: every paper, table, scale and cell. At paper scale a
real training step (random inputs of the paper's shapes) runs once per distinct backbone and input shape in
the whole suite, not per table, so the suite's cost grows with the backbones, not the tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from common.config import CONFIG_DIR, compose_run_configs
from common.experiment import build_datamodule, build_module
from common.lit import Pipeline
from common.registry import lookup
from common.reproduce import run_overrides
from common.results.paper_spec import available_papers, load_paper
from common.run import execute
from tests.conftest import compose

TABLES = [
    (key, table.id, scale)
    for key in available_papers()
    for table in load_paper(key).tables.values()
    for scale in table.scales
]


def test_every_table_is_one_file_with_a_section_per_scale():
    """Every table of every paper is conf/papers/<paper>/<table>.yaml, with a config for each scale it runs at
    (its own `<scale>:` section or the one of the table it shares trainings with); every such file is a table
    of the paper's paper.yaml."""
    from hydra_plugins.pnu_repro_tables.paper_tables import PaperTablesSource

    source = PaperTablesSource("test", str(CONFIG_DIR / "papers"))
    assert available_papers(), "no paper configs found"
    for key in available_papers():
        spec = load_paper(key)
        files = {p.stem for p in (CONFIG_DIR / "papers" / key).glob("*.yaml") if p.name != "paper.yaml"}
        assert files == set(spec.tables), (key, sorted(files ^ set(spec.tables)))
        for table in spec.tables.values():
            assert table.experiment == f"{key}/{table.id}"
            for scale in table.scales:
                assert source.is_config(f"table_scale/{key}/{table.id}/{scale}"), (key, table.id, scale)


def test_every_paper_names_its_family():
    from common.results.paper_spec import FAMILIES

    assert {key: load_paper(key).family in FAMILIES for key in available_papers()} == {
        key: True for key in available_papers()
    }


def test_every_config_file_sets_something():
    """No yaml file under conf/ is empty or holds only a Hydra package header and comments."""
    empty = []
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
        if not lines:
            empty.append(str(path.relative_to(CONFIG_DIR)))
    assert not empty, f"config files that set nothing: {empty}"


def test_no_method_file_only_names_its_method():
    """`method=<name>` composes to `{name: <name>}` without a file; a method file sets something more."""
    only_named = []
    for path in sorted(CONFIG_DIR.rglob("method/*.yaml")):
        loaded = OmegaConf.load(path)
        if set(loaded) == {"name"}:
            only_named.append(str(path.relative_to(CONFIG_DIR)))
    assert not only_named, f"method files that only name their method (delete them): {only_named}"


def _shape_key(cfg, datamodule) -> str:
    """What a network's cost and shapes depend on: the method, the model config and the input shape."""
    model = cfg.get("model")
    model = OmegaConf.to_container(model, resolve=True) if OmegaConf.is_config(model) else model
    shape = list(getattr(datamodule, "input_shape", None) or [])
    classes = getattr(datamodule, "num_classes", None)
    return json.dumps([cfg.method.name, model, shape, classes], sort_keys=True, default=str)


@pytest.mark.parametrize(("paper", "table_id", "scale"), TABLES)
def test_every_cell_composes_and_instantiates(paper: str, table_id: str, scale: str, first_in_session):
    """Every cell composes; its data module sets up (random data of the paper's shapes at paper scale) and its
    module is built once per distinct method, model and shape in the session."""
    spec = load_paper(paper)
    table = spec.tables[table_id]
    overrides = [run_overrides(spec, table, row, column, 0, scale) for row, column in table.cells()]
    for cell_overrides, cfg in zip(overrides, compose_run_configs(overrides), strict=True):
        assert cfg.paper == paper and cfg.table == table_id and cfg.scale.name == scale
        datamodule = build_datamodule(cfg)
        method = lookup("method", cfg.method.name)
        source = method.__module__.split(".")
        assert source[0] == "common" or source[1] in (paper, *spec.methods_from), (
            f"{paper}/{table_id}: method {cfg.method.name!r} comes from papers/{source[1]}/; a table may run"
            f" its own paper's methods, common's, or those of the papers listed in `methods_from`"
        )
        if isinstance(method, type) and issubclass(method, Pipeline):
            continue
        if scale == "paper":  # paper data is not here: instantiate the model against the paper's shapes
            datamodule = build_datamodule(compose_run_configs([[*cell_overrides, "data.source=random"]])[0])
        datamodule.setup("fit")
        if not first_in_session("instantiate " + _shape_key(cfg, datamodule)):
            continue
        module = build_module(cfg, datamodule)
        assert sum(p.numel() for p in module.parameters()) > 0


PAPER_TABLES = [(p, t) for p, t, s in TABLES if s == "paper"]
# Two samples keep a paper-scale step on the CPU cheap (ResNet-101 at 448 px: ~4x faster than 8). These
# need more: replay splits its batch (BatchNorm sees one sample), cross-validation folds and the diffusion
# head diverge on two-sample batches.
ONE_STEP_BATCH_SIZE = {"d_simplex": 8, "confident_learning": 8, "diffusion_cls": 8}


@pytest.mark.slow
@pytest.mark.parametrize(("paper", "table_id"), PAPER_TABLES)
def test_paper_scale_one_training_step(paper: str, table_id: str, tmp_path: Path, first_in_session):
    """One real step (forward, backward, optimiser) per distinct backbone and data setup of the session:
    cells that differ only in their method or in the table's swept data settings (noise rates, priors) share
    the network and its shapes, and a table whose networks another table already stepped only composes."""
    spec = load_paper(paper)
    table = spec.tables[table_id]
    batch = ONE_STEP_BATCH_SIZE.get(paper, 2)
    random_data = ["data.source=random", f"data.batch_size={batch}", "data.num_workers=0"]
    overrides = [
        [*run_overrides(spec, table, row, column, 0, "paper"), *random_data] for row, column in table.cells()
    ]
    composed = compose_run_configs(overrides)
    for (row, column), cell_overrides, key in zip(
        table.cells(), overrides, _network_keys(composed), strict=True
    ):
        if not first_in_session("step " + key):
            continue
        cfg = compose(
            [
                *cell_overrides,
                "trainer.max_epochs=1",
                "+trainer.limit_train_batches=1",
                "+trainer.limit_val_batches=1",
                "trainer.accelerator=cpu",
                "trainer.precision=32-true",
                "runtime.checkpoint=false",
                "runtime.progress=false",
                "logger=none",
                f"runtime.output_root={tmp_path}",
            ]
        )
        record = execute(cfg)
        assert record.complete, (row, column, record.reason)


def _network_keys(configs: list) -> list[str]:
    """Per cell: the backbone (the model config; the method where the method holds its own network) and the
    data settings the table does not sweep (what decides the input shapes). Methods on one backbone differ
    in their loss, which the mini smoke runs step through; the paper-scale step is about the network."""
    data = [OmegaConf.to_container(cfg.data, resolve=True) for cfg in configs]
    swept = {k for d in data for k in d if any(other.get(k) != d.get(k) for other in data)}
    return [
        json.dumps(
            [
                OmegaConf.to_container(cfg.model, resolve=True) if "model" in cfg else cfg.method.name,
                {k: v for k, v in d.items() if k not in swept},
            ],
            sort_keys=True,
            default=str,
        )
        for cfg, d in zip(configs, data, strict=True)
    ]
