"""d-Simplex / IAM-CL2R: simplex geometry, the HOC loss against hand-computed values and an independent loop
implementation (values and gradients), AC / AM / 1:N search on hand-made matrices, the task split and
replay batches, a tiny run of the whole pipeline through the harness, and the pre-trained upstream models
as stages (keyed by what decides them, shared by rows and columns, the same numbers as training directly)."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from common.reproduce import run_overrides
from common.results.paper_spec import load_paper
from common.run import execute
from papers.d_simplex import (
    CompatibleLearner,
    average_compatibility,
    average_multimodel_accuracy,
    class_templates,
    dsimplex_vertices,
    hoc_contrastive_loss,
    hoc_loss,
    identification_accuracy,
    vertex_of_class,
)
from papers.d_simplex.pipeline import (
    UPSTREAM_STAGE,
    IAMCL2RPipeline,
    ReplayBatchSampler,
    Scenario,
    class_incremental_tasks,
    first_per_class,
)
from tests.conftest import compose, context_without_stages


# ---- d-Simplex ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_vertices", [2, 3, 10, 1024])
def test_simplex_vertices_are_unit_equiangular_and_centred(num_vertices: int):
    vertices = dsimplex_vertices(num_vertices, dtype=torch.float64)
    d = num_vertices - 1
    assert vertices.shape == (num_vertices, d)
    assert torch.allclose(vertices.norm(dim=1), torch.ones(num_vertices, dtype=torch.float64), atol=1e-12)
    gram = vertices @ vertices.T
    off_diagonal = gram[~torch.eye(num_vertices, dtype=torch.bool)]
    assert torch.allclose(off_diagonal, torch.full_like(off_diagonal, -1.0 / d), atol=1e-12)
    assert torch.allclose(vertices.sum(dim=0), torch.zeros(d, dtype=torch.float64), atol=1e-12)
    # Gram matrix of a regular simplex: K/(K-1) I - 1/(K-1) 11^T (rank d: the vertices span R^d).
    expected = (num_vertices * torch.eye(num_vertices, dtype=torch.float64) - 1.0) / d
    assert torch.allclose(gram, expected, atol=1e-12)
    if num_vertices <= 16:  # the vertices span R^d (an SVD of the 1024-vertex matrix is slow)
        assert torch.linalg.matrix_rank(vertices) == d


def test_three_vertices_are_an_equilateral_triangle():
    vertices = dsimplex_vertices(3, dtype=torch.float64)
    angles = [math.degrees(math.atan2(float(v[1]), float(v[0]))) % 360 for v in vertices]
    gaps = sorted((b - a) % 360 for a, b in zip(angles, angles[1:] + angles[:1], strict=True))
    assert gaps == pytest.approx([120.0, 120.0, 120.0], abs=1e-9)


def test_classes_are_written_from_the_last_vertex_down():
    assert vertex_of_class(torch.tensor([0, 1, 99]), 1024).tolist() == [1023, 1022, 924]
    with pytest.raises(ValueError, match="preallocated"):
        vertex_of_class(torch.tensor([5]), 5)


# ---- HOC loss ---------------------------------------------------------------------------------------------
def reference_contrastive(new: torch.Tensor, old: torch.Tensor, labels: list[int], mu: float) -> torch.Tensor:
    """Loop version of the official HocLoss: same-class entries are zeroed (so each adds exp(0) = 1)."""
    terms = []
    for i in range(len(labels)):
        exps = []
        for j in range(len(labels)):
            s = mu * torch.dot(old[i], new[j])
            exps.append(torch.exp(s) if labels[i] != labels[j] else torch.exp(s * 0.0))
        terms.append(-mu * torch.dot(old[i], new[i]) + torch.log(torch.stack(exps).sum()))
    return torch.stack(terms).mean()


def test_hoc_contrastive_loss_hand_computed():
    eye = torch.eye(2)
    # Orthogonal features, identical old and new, two classes: -1 + log(exp(0) + exp(0)) per example.
    assert float(hoc_contrastive_loss(eye, eye, torch.tensor([0, 1]), mu=1.0)) == pytest.approx(
        math.log(2) - 1
    )
    # Two examples of the same class: every off-diagonal entry is masked to exp(0), whatever its similarity.
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert float(hoc_contrastive_loss(same, same, torch.tensor([3, 3]), mu=10.0)) == pytest.approx(
        -10.0 + math.log(2.0)
    )
    # Old feature (1, 0) for both; new features (1, 0) and (0, 1); classes differ; mu = 2:
    # i=0: -2*1 + log(e^0 + e^{2*0}) = -2 + log 2;  i=1: -2*0 + log(e^{2*1} + e^0) = log(e^2 + 1).
    old = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    new = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = (-2 + math.log(2) + math.log(math.e**2 + 1)) / 2
    assert float(hoc_contrastive_loss(new, old, torch.tensor([0, 1]), mu=2.0)) == pytest.approx(expected)


def test_hoc_loss_value_and_gradient_match_a_loop_implementation():
    torch.manual_seed(0)
    labels = [0, 1, 1, 2, 0, 3]
    new = torch.nn.functional.normalize(torch.randn(6, 5, dtype=torch.float64), dim=1).requires_grad_(True)
    old = torch.nn.functional.normalize(torch.randn(6, 5, dtype=torch.float64), dim=1)
    ours = hoc_contrastive_loss(new, old, torch.tensor(labels), mu=10.0)
    (grad_ours,) = torch.autograd.grad(ours, new)
    reference = reference_contrastive(new, old, labels, mu=10.0)
    (grad_reference,) = torch.autograd.grad(reference, new)
    assert float(ours.detach()) == pytest.approx(float(reference.detach()), rel=1e-12)
    assert torch.allclose(grad_ours, grad_reference, atol=1e-12)
    # The full loss: lam * CE + (1 - lam) * L_iNCE on normalised features (official train.py line 53).
    logits = torch.randn(6, 4, dtype=torch.float64)
    raw_new, raw_old = 3.0 * new.detach(), 0.5 * old
    total = hoc_loss(logits, torch.tensor([3, 2, 2, 1, 3, 0]), raw_new, raw_old, lam=0.1, mu=10.0)
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([3, 2, 2, 1, 3, 0]))
    inc = reference_contrastive(new.detach(), old, [3, 2, 2, 1, 3, 0], mu=10.0)
    assert float(total) == pytest.approx(float(0.1 * ce + 0.9 * inc), rel=1e-12)


# ---- compatibility metrics ------------------------------------------------------------------------------
MATRIX = np.array([[0.5, 0.0, 0.0], [0.6, 0.7, 0.0], [0.4, 0.8, 0.9]])


def test_average_compatibility_hand_computed():
    # Pairs (1,0): 0.6 > 0.5 yes; (2,0): 0.4 > 0.5 no; (2,1): 0.8 > 0.7 yes.
    assert average_compatibility(MATRIX) == pytest.approx(2 / 3)
    tie = MATRIX.copy()
    tie[1, 0] = 0.5  # equal to the old self-test: a violation (the criterion is strict)
    assert average_compatibility(tie) == pytest.approx(1 / 3)
    assert average_compatibility(np.array([[0.3]])) == 1.0  # the official convention for one model


def test_average_multimodel_accuracy_hand_computed():
    assert average_multimodel_accuracy(MATRIX) == pytest.approx(100 * (0.5 + 0.6 + 0.7 + 0.4 + 0.8 + 0.9) / 6)
    assert average_multimodel_accuracy(MATRIX, per_task=True) == pytest.approx([50.0, 60.0, 65.0])


def test_identification_uses_class_templates():
    gallery = torch.tensor([[1.0, 0.0], [3.0, 0.2], [0.0, 2.0], [0.1, 1.0]])
    templates, classes = class_templates(gallery, torch.tensor([7, 7, 2, 2]))
    assert classes.tolist() == [2, 7]
    assert torch.allclose(templates.norm(dim=1), torch.ones(2))
    queries = torch.tensor([[5.0, 1.0], [0.2, 3.0], [1.0, 0.9]])
    # Nearest templates: class 7, class 2, class 7 (the first template leans to x).
    assert identification_accuracy(templates, classes, queries, torch.tensor([7, 2, 2])) == pytest.approx(
        2 / 3
    )


# ---- sequence ----------------------------------------------------------------------------------------------
def test_class_incremental_tasks_match_the_official_splits():
    seven = class_incremental_tasks(100, 10, 7)
    assert [len(t) for t in seven] == [10] + [15] * 6 and seven[-1].tolist() == list(range(85, 100))
    assert [len(t) for t in class_incremental_tasks(100, 10, 31)] == [10] + [3] * 30
    assert [t.tolist() for t in class_incremental_tasks(10, 4, 7)] == [
        [0, 1, 2, 3],
        [4],
        [5],
        [6],
        [7],
        [8],
        [9],
    ]
    with pytest.raises(Exception, match="equal"):
        class_incremental_tasks(10, 4, 5)


def test_first_per_class_keeps_dataset_order():
    labels = np.array([1, 0, 1, 1, 0, 2])
    assert first_per_class(labels, 2).tolist() == [0, 1, 2, 4, 5]


def test_replay_batches_are_half_memory_half_new():
    sampler = ReplayBatchSampler(
        num_new=40, num_memory=30, batch_size=16, generator=torch.Generator().manual_seed(0)
    )
    batches = list(sampler)
    assert len(batches) == 70 // 16
    for batch in batches:
        assert len(batch) == 16
        assert int((batch >= 40).sum()) == 8 and len(set(batch[:8].tolist())) == 8  # memory part, no repeats
    first_task = list(ReplayBatchSampler(35, 0, 16, torch.Generator().manual_seed(0)))
    assert [len(b) for b in first_task] == [16, 16]  # drop-last permutation
    assert len(set(torch.cat(first_task).tolist())) == 32


def test_learners_fixed_and_learnable_heads():
    from common.backbones import build_backbone

    def learner(**kwargs) -> CompatibleLearner:
        backbone = build_backbone("mlp", num_classes=10, in_features=4, hidden_dims=[8])
        optimizer = lambda params: torch.optim.SGD(params, lr=0.1)  # noqa: E731
        return CompatibleLearner(backbone, 10, 20, optimizer, **kwargs)

    fixed = learner(classifier="dsimplex", preallocated_classes=16)
    assert fixed.embed(torch.randn(3, 4)).shape == (3, 15)
    assert "vertices" in dict(fixed.named_buffers()) and not any(
        "vertices" in n for n, _ in fixed.named_parameters()
    )
    er_old, er_new = (
        learner(classifier="learnable", num_outputs=3),
        learner(classifier="learnable", num_outputs=5),
    )
    er_new.load_weights_from(er_old, keep_classifier=True)
    assert torch.equal(er_new.head.weight[:3], er_old.head.weight)
    assert torch.equal(er_new.backbone.body[0].weight, er_old.backbone.body[0].weight)
    with pytest.raises(ValueError, match="HOC"):
        learner(classifier="learnable", hoc_lambda=0.1)


# ---- the pipeline through the harness --------------------------------------------------------------------
def test_iamcl2r_run_completes(output_root: Path):
    cfg = compose(
        [
            "experiment=d_simplex/iamcl2r",
            "method=d_simplex_hoc",
            "trainer.max_epochs=1",
            "iamcl2r.upstream.epochs=1",
            "runtime.progress=false",
            "logger=none",
            "cell.row=d-Simplex-HOC",
            "cell.column=2 replacements",
            f"runtime.output_root={output_root}",
        ]
    )
    record = execute(cfg)
    assert record.complete, record.reason
    matrix = np.array(record.extra["compatibility_matrix"])
    assert matrix.shape == (5, 5) and np.all(np.triu(matrix, 1) == 0)
    assert np.all(matrix[np.tril_indices(5)] > 0)
    assert record.metrics["test/ac"] == pytest.approx(average_compatibility(matrix))
    assert record.metrics["test/am"] == pytest.approx(average_multimodel_accuracy(matrix))
    # Replacements at tasks 2 and 4 (the mini config): the task-2 model against the task-0 gallery.
    gap = record.metrics["test/replacement_cross_minus_old_self"]
    assert gap == pytest.approx(100 * (matrix[2, 0] - matrix[0, 0]))
    assert len(record.curves["task/acc"]) == 5 and 0 <= record.metrics["test/acc"] <= 100
    assert len(_stored_upstream_models(output_root)) == 3  # the models replacing at tasks 0, 2 and 4


# ---- the upstream models as stages -------------------------------------------------------------------------
def _cell_overrides(row: str, column: str, output_root: Path, **changes: object) -> list[str]:
    """A tiny run of one cell of the iamcl2r table (1 epoch per task and per upstream model), with `changes`
    to its config."""
    spec = load_paper("d_simplex")
    seed = int(changes.pop("seed", 0))
    tiny = {"trainer.max_epochs": 1, "iamcl2r.upstream.epochs": 1, "runtime.progress": "false"}
    tiny |= {"logger": "none", "runtime.output_root": output_root, **changes}
    overrides = run_overrides(spec, spec.tables["iamcl2r"], row, column, seed, "mini")
    return [*overrides, *(f"{key}={value}" for key, value in tiny.items())]


def _stored_upstream_models(output_root: Path) -> dict[Path, int]:
    """The stored upstream-model stages under `output_root`, with their modification times."""
    results = (output_root / "stages" / "d_simplex" / UPSTREAM_STAGE).glob("*/result.pt")
    return {path: path.stat().st_mtime_ns for path in results}


def _upstream_config(overrides: list[str], index: int = 0) -> dict:
    cfg = compose(overrides)
    params = {key: value for key, value in cfg.method.items() if key != "name"}
    return IAMCL2RPipeline(**params).upstream_stage_config(cfg, Scenario.from_cfg(cfg), index)


def test_the_upstream_stage_is_keyed_by_what_decides_the_model(output_root: Path):
    hoc = _cell_overrides("d-Simplex-HOC", "2 replacements", output_root)
    model_0 = _upstream_config(hoc)
    # Shared: both d-Simplex rows, both columns, the fine-tuning's epochs and optimiser, other models' shares.
    for row, column, changes in [
        ("d-Simplex", "no replacement", {}),
        ("d-Simplex-HOC", "2 replacements", {"trainer.max_epochs": 3, "optim.optimizer.lr": 0.5}),
        ("d-Simplex-HOC", "2 replacements", {"iamcl2r.upstream.fractions": "[0.1667,0.4,1.0]"}),
    ]:
        assert _upstream_config(_cell_overrides(row, column, output_root, **changes)) == model_0, changes
    # Not shared: another model, classifier, seed, upstream training, share of the classes or data config.
    assert _upstream_config(hoc, index=1) != model_0
    for row, changes in [
        ("ER", {}),
        ("d-Simplex-HOC", {"seed": 1}),
        ("d-Simplex-HOC", {"iamcl2r.upstream.epochs": 2}),
        ("d-Simplex-HOC", {"iamcl2r.upstream.fractions": "[0.5,0.5,1.0]"}),
        ("d-Simplex-HOC", {"data.batch_size": 16}),
    ]:
        changed = _cell_overrides(row, "2 replacements", output_root, **changes)
        assert _upstream_config(changed) != model_0, (row, changes)


def test_upstream_models_are_trained_once_and_give_the_numbers_of_a_direct_training(output_root: Path):

    execute(compose(_cell_overrides("d-Simplex-HOC", "no replacement", output_root)))
    first = _stored_upstream_models(output_root)
    assert len(first) == 1  # model 0 only: no replacement after task 0
    cfg = compose(_cell_overrides("d-Simplex", "2 replacements", output_root))
    record = execute(cfg)
    stored = _stored_upstream_models(output_root)
    # Model 0 is reused (neither retrained nor rewritten) by another row and column; models 1 and 2 are new.
    assert len(stored) == 3 and first.items() <= stored.items()
    # Called outside the runner (no `context.stages`), the pipeline trains every model itself: same numbers.
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    context = context_without_stages(cfg)
    params = {key: value for key, value in cfg.method.items() if key != "name"}
    assert IAMCL2RPipeline(**params).run(context) == record.metrics
    assert _stored_upstream_models(output_root) == stored
