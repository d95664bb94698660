"""SimPLe: losses against hand-computed cases and autograd, the initial masks, the U-Net, a smoke run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from scipy import ndimage

from common.data.weak_labels import UNKNOWN
from common.run import execute
from papers.simple_seg import (
    SegUNet,
    SimPLePipeline,
    dice_percent,
    extreme_points,
    initial_pseudo_mask,
    pairwise_contrastive_bce,
    partial_cross_entropy,
    random_walker_probability,
    similarity_propagation,
)
from papers.simple_seg.data import LesionSpec, synthesize_lesion_image
from papers.simple_seg.pipeline import STAGES
from papers.simple_seg.weak_labels import extreme_polygon_mask, geodesic_path
from tests.conftest import compose, context_without_stages


def _official_contrastive(pos: torch.Tensor, neg: torch.Tensor, temperature: float) -> torch.Tensor:
    """stage1/train.py, verbatim in substance (sigmoid + BCELoss over the masked upper triangle)."""
    samples = torch.cat([pos, neg])
    n_pos = len(pos)
    sim = torch.sigmoid(F.cosine_similarity(samples[None, :, :], samples[:, None, :], dim=-1) / temperature)
    mask = torch.triu(torch.ones_like(sim), diagonal=1)
    mask[n_pos:, n_pos:] = 0
    label = torch.triu(torch.ones_like(sim), diagonal=1)
    label[:n_pos, n_pos:] = 0
    return F.binary_cross_entropy(sim[mask == 1], label[mask == 1])


def test_contrastive_matches_official_formula_and_gradients():
    torch.manual_seed(0)
    feats = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[[1, 1, 0], [0, UNKNOWN, 0], [1, 0, 0]]])
    # num_samples >= counts: every positive and negative is used, so the sampling order does not matter.
    ours = pairwise_contrastive_bce(feats, targets, num_samples=100, temperature=0.1)
    flat = feats.movedim(1, -1).reshape(-1, 4)
    labels = targets.reshape(-1)
    ref = _official_contrastive(flat[labels == 1], flat[labels == 0], 0.1)
    assert torch.allclose(ours, ref.float(), atol=1e-6)
    (g_ours,) = torch.autograd.grad(ours, feats)
    (g_ref,) = torch.autograd.grad(_official_contrastive(flat[labels == 1], flat[labels == 0], 0.1), feats)
    assert torch.allclose(g_ours.double(), g_ref, atol=1e-5)


def test_contrastive_hand_case():
    # Two positives along x, one negative along -x: pos-pos cos 1, pos-neg cos -1 (T = 1).
    feats = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0]]).T.reshape(1, 2, 1, 3)
    targets = torch.tensor([[[1, 1, 0]]])
    loss = pairwise_contrastive_bce(feats, targets, temperature=1.0)
    expected = -(np.log(1 / (1 + np.exp(-1))) + 2 * np.log(1 - 1 / (1 + np.exp(1)))) / 3
    assert abs(loss.item() - expected) < 1e-6


def test_partial_cross_entropy_ignores_unlabeled():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2 classes, 1, 2)
    targets = torch.tensor([[[0, UNKNOWN]]])
    assert abs(partial_cross_entropy(logits, targets).item() - np.log(1 + np.exp(-2.0))) < 1e-6
    assert partial_cross_entropy(logits, torch.full_like(targets, UNKNOWN)).item() == 0.0


def test_similarity_propagation_votes():
    # 3 positives along e1; unlabeled: one along e1 (cos 1), one at 45 degrees (cos 0.71), one along e2.
    vecs = torch.tensor([[1, 0], [1, 0], [1, 0], [1, 0], [1, 1], [0, 1], [0, 1]], dtype=torch.float32)
    feats = vecs.T.reshape(1, 2, 1, 7)
    targets = torch.tensor([[[1, 1, 1, UNKNOWN, UNKNOWN, UNKNOWN, 0]]])
    pseudo = similarity_propagation(
        feats, targets, num_anchors=3, similarity_threshold=0.96, vote_fraction=0.5
    )
    assert pseudo.tolist() == [[[UNKNOWN, UNKNOWN, UNKNOWN, 1, UNKNOWN, UNKNOWN, UNKNOWN]]]
    low = similarity_propagation(feats, targets, num_anchors=3, similarity_threshold=0.7, vote_fraction=0.5)
    assert low.reshape(-1)[3:6].tolist() == [1, 1, UNKNOWN]


def test_extreme_points_and_polygon_of_a_disc():
    yy, xx = np.mgrid[:11, :11]
    disc = (yy - 5) ** 2 + (xx - 5) ** 2 <= 16
    points = extreme_points(disc)
    assert points.bounds == (1, 9, 1, 9) and points.top == (1, 5) and points.left == (5, 1)
    mask = extreme_polygon_mask(disc.shape, points)
    assert (mask[~points.inside(disc.shape)] == 0).all()
    assert ((mask == 1) <= disc).all()  # the quadrilateral of a convex object lies inside it
    assert (mask == UNKNOWN).sum() > 0
    # Shrunk towards its centre: a smaller core inside the whole quadrilateral, the box unchanged.
    core = extreme_polygon_mask(disc.shape, points, scale=0.5)
    assert ((core == 1) <= (mask == 1)).all() and 0 < (core == 1).sum() < (mask == 1).sum()
    assert core[5, 5] == 1 and ((core == 0) == (mask == 0)).all()


def test_faint_margin_keeps_the_lesion_and_dims_its_boundary():
    spec = dict(num_distractors=0, noise_std=0.0, blur_sigma=0.01, heterogeneity=0.0, rim_probability=0.0)
    plain = synthesize_lesion_image(np.random.default_rng(3), 32, LesionSpec(**spec))
    faint = synthesize_lesion_image(np.random.default_rng(3), 32, LesionSpec(**spec, margin_level=0.2))
    assert (plain[1] == faint[1]).all()  # same draws: same lesion mask
    boundary = faint[1] & ~ndimage.binary_erosion(faint[1])
    background = np.median(plain[0][~plain[1]])
    assert (faint[0] - background)[boundary].mean() < 0.5 * (plain[0] - background)[boundary].mean()


def test_random_walker_two_regions_and_geodesic_path():
    image = np.zeros((6, 8))
    image[:, 4:] = 1.0
    seeds = np.zeros((6, 8), dtype=np.int8)
    seeds[0, 0], seeds[0, 7] = 1, 2
    prob = random_walker_probability(image, seeds, beta=130)
    assert prob[:, :4].min() > 0.9 and prob[:, 4:].max() < 0.1
    cost = np.ones((5, 5))
    cost[2, :] = 0.0
    path = geodesic_path(cost, (2, 0), (2, 4))
    assert [tuple(p) for p in path] == [(2, c) for c in range(5)]


def test_initial_mask_labels_a_bright_disc():
    yy, xx = np.mgrid[:40, :40]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 <= 36
    rng = np.random.default_rng(0)
    image = 0.2 + 0.8 * disc + 0.02 * rng.standard_normal(disc.shape)
    mask = initial_pseudo_mask(image, extreme_points(disc), crop_margin=8, background_margin=3)
    # The dilated scribble reaches one pixel past each extreme point, so a little leaks (as officially).
    assert ((mask == 1) & ~disc).sum() < 0.3 * disc.sum()
    assert ((mask == 1) & disc).sum() >= 0.9 * disc.sum()
    assert set(np.unique(mask)) <= {0, 1, UNKNOWN}


def test_unet_shapes_and_dice():
    net = SegUNet(channels=(4, 8, 16))
    logits, feats = net(torch.randn(2, 1, 16, 16))
    assert logits.shape == (2, 2, 16, 16) and feats.shape == (2, 4, 16, 16)
    net3d = SegUNet(channels=(2, 4), spatial_dims=3)
    assert net3d(torch.randn(1, 1, 4, 8, 8))[0].shape == (1, 2, 4, 8, 8)
    pred = np.zeros((1, 4, 4), dtype=int)
    truth = np.zeros((1, 4, 4), dtype=int)
    pred[0, :2, :2] = 1  # 4 pixels
    truth[0, :2, :] = 1  # 8 pixels, 4 shared: Dice = 8 / 12
    assert abs(dice_percent(pred, truth).item() - 100 * 8 / 12) < 1e-4


def _stored(output_root: Path, stage: str) -> dict[Path, int]:
    """The stored results of stage `stage` and when each was written."""
    results = output_root.glob(f"stages/simple_seg/{stage}/*/result.pt")
    return {path: path.stat().st_mtime_ns for path in results}


def test_pipeline_runs_every_stage(output_root: Path):
    overrides = [
        "experiment=simple_seg/stage_ablation",
        "method.stop_after=retrain",
        "data.num_train=16",
        "data.num_test=8",
        "data.image_size=32",
        "method.finetune_iters=3",
        "trainer.max_epochs=2",
        "runtime.progress=false",
        "logger=none",
        f"runtime.output_root={output_root}",
    ]
    record = execute(compose(overrides))
    assert record.complete, record.reason
    for key in (
        "stage1/test_dice",
        "finetune/test_dice",
        "retrain/test_dice",
        "train/initial_dice",
        "finetune/propagated_fraction",
    ):
        assert 0.0 <= record.metrics[key] <= 100.0
    assert record.metrics["test/dice"] == record.metrics["retrain/test_dice"]
    assert {stage: len(_stored(output_root, stage)) for stage in STAGES} == dict.fromkeys(STAGES, 1)
    stage1 = _stored(output_root, "stage1")

    # The stage-1 row reuses the stored stage-1 network (not retrained): same score.
    stage1_row = [*overrides[:1], "method.stop_after=stage1", *overrides[2:], "seed=0"]
    again = execute(compose(stage1_row))
    assert again.metrics["test/dice"] == record.metrics["stage1/test_dice"]
    assert _stored(output_root, "stage1") == stage1

    # Without the run's stages the pipeline trains its stages itself, to the same network.
    cfg = compose(stage1_row)
    context = context_without_stages(cfg)
    fresh = SimPLePipeline(**_method_params(cfg)).run(context)
    assert fresh["test/dice"] == again.metrics["test/dice"]

    # A stage-1 setting is part of its key: a new stage-1 network, the stored one kept.
    execute(compose([*stage1_row, "method.contrastive_weight=0.0"]))
    both = _stored(output_root, "stage1")
    assert len(both) == 2 and stage1.items() <= both.items()


def _method_params(cfg) -> dict:
    return {k: v for k, v in OmegaConf.to_container(cfg.method, resolve=True).items() if k != "name"}
