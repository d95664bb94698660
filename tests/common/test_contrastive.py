"""The contrastive training layer: SupCon, the module's losses against the official DCL/HCL formulas and peer
libraries, and the two-view data module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_metric_learning.losses import NTXentLoss, SupConLoss

from common.data.views import MultiViewDataModule, TensorViewAugment, TwoViewHubDataset
from common.errors import UserError
from common.lit.contrastive import ContrastiveModule, ProjectionHead, gather_with_grad
from common.losses.supcon import supcon_loss


def _embeddings(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def supcon_reference(z: torch.Tensor, keys: torch.Tensor, labels, key_labels, temperature, self_index):
    """Khosla et al. Eq. 2 written as loops over anchors and positives."""
    losses = []
    for i in range(len(z)):
        others = [a for a in range(len(keys)) if a != self_index[i]]
        log_denominator = torch.logsumexp(torch.stack([z[i] @ keys[a] / temperature for a in others]), 0)
        positives = [p for p in others if key_labels[p] == labels[i]]
        if positives:
            terms = [z[i] @ keys[p] / temperature - log_denominator for p in positives]
            losses.append(-torch.stack(terms).mean())
    return torch.stack(losses).mean()


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supcon_matches_the_materialised_formula(temperature: float):
    raw = _embeddings(20, 8, seed=0)
    labels = torch.tensor([0, 1, 2, 3, 4] * 4)
    labels[-1] = 9  # an anchor without positives: left out of the mean
    ours = raw.clone().requires_grad_()
    ref = raw.clone().requires_grad_()
    self_index = torch.arange(20)
    loss = supcon_loss(F.normalize(ours, dim=1), F.normalize(ours, dim=1), labels, labels, temperature,
                       self_index=self_index)  # fmt: skip
    z = F.normalize(ref, dim=1)
    expected = supcon_reference(z, z, labels, labels, temperature, self_index)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-9, atol=1e-12)


def test_supcon_on_a_slice_of_queries_is_those_rows_of_the_full_loss():
    """What one process computes with gathered keys: its rows of the whole-batch loss."""
    z = F.normalize(_embeddings(16, 6, seed=1), dim=1)
    labels = torch.arange(8).repeat(2) % 3
    full = supcon_loss(z, z, labels, labels, 0.5, self_index=torch.arange(16), reduction="none")
    part = supcon_loss(
        z[4:10], z, labels[4:10], labels, 0.5, self_index=torch.arange(4, 10), reduction="none"
    )
    torch.testing.assert_close(part, full[4:10])


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_supcon_matches_pytorch_metric_learning(temperature: float):
    """PML's SupConLoss (cosine similarity, the anchor itself excluded from positives and denominator,
    mean over anchors with a non-zero loss) is the same loss when every anchor has a positive."""
    raw = _embeddings(24, 16, seed=2)
    labels = torch.arange(12).repeat(2) % 5
    ours, peer = raw.clone().requires_grad_(), raw.clone().requires_grad_()
    z = F.normalize(ours, dim=1)
    loss = supcon_loss(z, z, labels, labels, temperature, self_index=torch.arange(24))
    peer_loss = SupConLoss(temperature=temperature)(peer, labels)
    loss.backward()
    peer_loss.backward()
    torch.testing.assert_close(loss, peer_loss, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ours.grad, peer.grad, rtol=1e-7, atol=1e-9)


def test_supcon_rejects_bad_arguments():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="reduction"):
        supcon_loss(z, z, torch.zeros(4), torch.zeros(4), reduction="max")
    with pytest.raises(ValueError, match="one label per row"):
        supcon_loss(z, z, torch.zeros(3), torch.zeros(4))


# ---- the module's losses ----------------------------------------------------------------------------------


class Identity(torch.nn.Identity):
    num_features = 6


def _module(**settings) -> ContrastiveModule:
    torch.manual_seed(0)
    module = ContrastiveModule(
        Identity(), num_classes=3, num_train_examples=8, optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        projection_dims=[6, 5], projection_batch_norm=False, loss_backend="chunked", **settings,
    ).double()  # fmt: skip
    return module


def _batch(size: int = 8) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(size, 6, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (size,), generator=gen)
    return {
        "x1": x + 0.2 * torch.randn(size, 6, generator=gen, dtype=torch.float64),
        "x2": x + 0.2 * torch.randn(size, 6, generator=gen, dtype=torch.float64),
        "y": labels,
        "y_clean": labels,
        "index": torch.arange(size),
    }


def official_hcl_criterion(out_1, out_2, tau_plus, beta, temperature, estimator):
    """`criterion` of joshr17/HCL@7b4647f image/main.py (estimator 'easy' = SimCLR, 'hard' = HCL; beta 0
    with 'hard' is DCL's debiased objective of chingyaoc/DCL main.py), transcribed."""
    batch_size = out_1.shape[0]
    out = torch.cat([out_1, out_2], dim=0)
    neg = torch.exp(torch.mm(out, out.t().contiguous()) / temperature)
    mask = torch.ones((batch_size, 2 * batch_size), dtype=bool)
    for i in range(batch_size):
        mask[i, i] = 0
        mask[i, i + batch_size] = 0
    mask = torch.cat((mask, mask), 0)
    neg = neg.masked_select(mask).view(2 * batch_size, -1)
    pos = torch.exp(torch.sum(out_1 * out_2, dim=-1) / temperature)
    pos = torch.cat([pos, pos], dim=0)
    if estimator == "hard":
        n = batch_size * 2 - 2
        imp = (beta * neg.log()).exp()
        reweight_neg = (imp * neg).sum(dim=-1) / imp.mean(dim=-1)
        ng = (-tau_plus * n * pos + reweight_neg) / (1 - tau_plus)
        ng = torch.clamp(ng, min=n * np.e ** (-1 / temperature))
    else:
        ng = neg.sum(dim=-1)
    return (-torch.log(pos / (pos + ng))).mean()


@pytest.mark.parametrize(
    ("settings", "official"),
    [
        ({}, {"tau_plus": 0.0, "beta": 0.0, "estimator": "easy"}),
        ({"debias_tau_plus": 0.1}, {"tau_plus": 0.1, "beta": 0.0, "estimator": "hard"}),
        (
            {"hard_negative_beta": 1.0, "debias_tau_plus": 0.1},
            {"tau_plus": 0.1, "beta": 1.0, "estimator": "hard"},
        ),
        (
            {"hard_negative_beta": 0.5, "debias_tau_plus": 0.05},
            {"tau_plus": 0.05, "beta": 0.5, "estimator": "hard"},
        ),
    ],
)
@pytest.mark.parametrize("temperature", [0.5, 0.2])
def test_module_loss_matches_the_official_dcl_hcl_objective(settings, official, temperature):
    module = _module(temperature=temperature, **settings)
    batch = _batch()
    loss = module.contrastive_loss(batch)
    (grad,) = torch.autograd.grad(loss, module.projector[0].weight)
    copy = _module(temperature=temperature, **settings)
    expected = official_hcl_criterion(
        copy.project(batch["x1"]), copy.project(batch["x2"]), temperature=temperature, **official
    )
    (expected_grad,) = torch.autograd.grad(expected, copy.projector[0].weight)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-12)


def test_module_infonce_matches_pml_ntxent():
    module, batch = _module(), _batch()
    z = torch.cat([module.project(batch["x1"]), module.project(batch["x2"])])
    peer = NTXentLoss(temperature=0.5)(z, batch["index"].repeat(2))
    torch.testing.assert_close(module.contrastive_loss(batch), peer, rtol=1e-9, atol=1e-9)


def test_false_negative_masking_drops_same_class_keys():
    module, batch = _module(mask_false_negatives=True), _batch()
    z = torch.cat([module.project(batch["x1"]), module.project(batch["x2"])])
    labels, size = batch["y_clean"].repeat(2), len(batch["x1"])
    losses = []
    for i in range(2 * size):
        positive = (i + size) % (2 * size)
        negatives = [j for j in range(2 * size) if labels[j] != labels[i]]
        logits = z[i] @ z[[positive, *negatives]].T / 0.5
        losses.append(torch.logsumexp(logits, 0) - logits[0])
    torch.testing.assert_close(module.contrastive_loss(batch), torch.stack(losses).mean())


def test_supcon_objective_uses_the_training_labels():
    module, batch = _module(objective="supcon"), _batch()
    z = torch.cat([module.project(batch["x1"]), module.project(batch["x2"])])
    labels = batch["y"].repeat(2)
    expected = supcon_reference(z, z, labels, labels, 0.5, torch.arange(len(z)))
    torch.testing.assert_close(module.contrastive_loss(batch), expected)


def test_gather_without_a_process_group_is_the_identity():
    x = torch.randn(3, 2)
    gathered, offset = gather_with_grad(x)
    assert gathered is x and offset == 0


def test_module_rejects_inconsistent_settings():
    with pytest.raises(UserError, match="supcon"):
        _module(objective="supcon", hard_negative_beta=1.0)
    with pytest.raises(UserError, match="objective"):
        _module(objective="triplet")
    with pytest.raises(UserError, match="eval_protocol"):
        _module(eval_protocol="finetune")


def test_projection_head_is_the_dcl_hcl_head():
    head = ProjectionHead(2048, [512, 128])
    linear1, norm, act, linear2 = head
    assert (linear1.in_features, linear1.out_features, linear1.bias) == (2048, 512, None)
    assert isinstance(norm, torch.nn.BatchNorm1d) and isinstance(act, torch.nn.ReLU)
    assert (linear2.in_features, linear2.out_features) == (512, 128) and linear2.bias is not None


# ---- the two-view data module -----------------------------------------------------------------------------


def _digits(seed: int = 0, **overrides) -> MultiViewDataModule:
    options = dict(seed=seed, batch_size=128, max_rotation=15.0, noise_std=0.05, erase_prob=0.5,
                   crop_scale=(0.5, 1.0), flip_prob=0.0)  # fmt: skip
    datamodule = MultiViewDataModule("digits", **{**options, **overrides})
    datamodule.setup("fit")
    return datamodule


def test_views_batches_are_full_two_view_batches_of_training_examples():
    datamodule = _digits()
    batches = list(datamodule.train_dataloader())
    assert len(batches) == datamodule.num_train // 128  # the short last batch is dropped
    batch = batches[0]
    assert set(batch) == {"x1", "x2", "y", "y_clean", "index"}
    assert batch["x1"].shape == batch["x2"].shape == (128, 1, 8, 8)
    assert not torch.equal(batch["x1"], batch["x2"])
    raw = datamodule.train_x[batch["index"]]
    assert not torch.equal(batch["x1"], raw)
    assert torch.equal(batch["y"], torch.as_tensor(datamodule.train_labels[batch["index"].numpy()]))
    seen = torch.cat([b["index"] for b in batches])
    assert len(seen.unique()) == len(seen)


def test_views_are_seeded():
    first = next(iter(_digits(seed=3).train_dataloader()))
    again = next(iter(_digits(seed=3).train_dataloader()))
    other = next(iter(_digits(seed=4).train_dataloader()))
    assert torch.equal(first["x1"], again["x1"]) and torch.equal(first["index"], again["index"])
    assert not torch.equal(first["x1"], other["x1"])


def test_evaluation_loaders_are_unaugmented_and_ordered():
    datamodule = _digits()
    train = list(datamodule.eval_train_dataloader())
    assert torch.equal(torch.cat([b["x"] for b in train]), datamodule.train_x)
    test = list(datamodule.test_dataloader())
    assert torch.equal(torch.cat([b["x"] for b in test]), datamodule.test_x)
    probe = next(iter(datamodule.probe_train_dataloader(batch_size=64)))
    assert probe["x"].shape == (64, 1, 8, 8)
    assert not torch.equal(probe["x"], datamodule.train_x[probe["index"]])


def test_tensor_augment_without_randomness_is_the_identity():
    augment = TensorViewAugment(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), max_rotation=0.0, flip_prob=0.0,
                                intensity_jitter=0.0, noise_std=0.0, erase_prob=0.0)  # fmt: skip
    x = torch.rand(5, 3, 8, 8)
    torch.testing.assert_close(augment(x, torch.Generator().manual_seed(0)), x)
    flipped = TensorViewAugment(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), max_rotation=0.0, flip_prob=1.0,
                                intensity_jitter=0.0, noise_std=0.0, erase_prob=0.0)  # fmt: skip
    torch.testing.assert_close(flipped(x, torch.Generator().manual_seed(0)), x.flip(-1))


def test_tensor_augment_erases_a_rectangle():
    augment = TensorViewAugment(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), max_rotation=0.0,
                                intensity_jitter=0.0, noise_std=0.0, erase_prob=1.0,
                                erase_scale=(0.25, 0.25))  # fmt: skip
    out = augment(torch.ones(4, 1, 8, 8), torch.Generator().manual_seed(0))
    assert torch.equal((out == 0).sum(dim=(1, 2, 3)), torch.full((4,), 16))  # a 4x4 square each


def test_tensor_colour_jitter_matches_torchvision_and_keeps_luma():
    from torchvision.transforms.v2 import functional as TF

    from common.data.views import _saturate_and_rotate_hue

    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    factors = torch.tensor([0.5, 0.7, 0.9, 1.0], dtype=torch.float64)
    desaturated = _saturate_and_rotate_hue(x, factors, torch.zeros(4, dtype=torch.float64))
    for image, factor, ours in zip(x, factors, desaturated, strict=True):  # toward grey: no clamping
        torch.testing.assert_close(ours, TF.adjust_saturation(image, float(factor)), atol=2e-3, rtol=0)
    ones = torch.ones(4, dtype=torch.float64)
    turned = _saturate_and_rotate_hue(x, ones, torch.full((4,), 1.3, dtype=torch.float64))
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close((turned * luma).sum(1), (x * luma).sum(1))  # a hue turn keeps brightness
    assert not torch.allclose(turned, x)
    full_turn = _saturate_and_rotate_hue(x, ones, torch.full((4,), 2 * torch.pi, dtype=torch.float64))
    torch.testing.assert_close(full_turn, x)
    grey = TensorViewAugment(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), max_rotation=0.0,
                             intensity_jitter=0.0, noise_std=0.0, erase_prob=0.0,
                             grayscale_prob=1.0)  # fmt: skip
    out = grey(x.float(), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, TF.rgb_to_grayscale(x.float(), num_output_channels=3), atol=2e-3, rtol=0)


def test_hub_views_use_simclr_augmentations():
    datamodule = MultiViewDataModule("hub", hub_id="unused", image_size=32, blur_prob=0.5)
    transform = datamodule.simclr_transform()
    names = [type(t).__name__ for t in transform.transforms]
    assert names[:4] == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomApply", "RandomGrayscale"]
    assert "Normalize" in names and names.count("RandomApply") == 2  # colour jitter and blur
    rng = np.random.default_rng(0)
    split = [{"img": Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))} for _ in range(3)]
    dataset = TwoViewHubDataset(split, "img", np.array([0, 1, 2]), np.array([0, 1, 2]), transform)
    item = dataset[1]
    assert item["x1"].shape == item["x2"].shape == (3, 32, 32)
    assert not torch.equal(item["x1"], item["x2"]) and int(item["index"]) == 1
