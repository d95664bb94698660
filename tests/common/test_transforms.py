"""Tests of common.data.transforms: exact rotations, SLA joint labels, flips, translations, noise."""

from __future__ import annotations

import pytest
import torch

from common.data.transforms import (
    GaussianNoise,
    RandomTranslate,
    aggregate_joint_logits,
    horizontal_flip,
    joint_label,
    random_horizontal_flip,
    rotate_batch,
    rotation_label_augment,
    split_joint_label,
)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.arange(5 * 2 * 4 * 4, dtype=torch.float32).reshape(5, 2, 4, 4)


@pytest.mark.parametrize("k", [0, 1, 2, 3, -1, 5])
def test_rotate_batch_matches_rot90(images: torch.Tensor, k: int) -> None:
    assert torch.equal(rotate_batch(images, k), torch.rot90(images, k, (2, 3)))


def test_rotate_batch_per_image(images: torch.Tensor) -> None:
    k = torch.tensor([0, 1, 2, 3, 5])
    out = rotate_batch(images, k)
    for i in range(len(images)):
        assert torch.equal(out[i], torch.rot90(images[i], int(k[i]), (1, 2)))
    # Four 90-degree turns are the identity; 90 then 270 too.
    assert torch.equal(rotate_batch(rotate_batch(images, 1), 3), images)


def test_rotate_batch_errors(images: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        rotate_batch(images, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rotate_batch(images, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.zeros(2, 1, 3, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        rotate_batch(torch.zeros(4), 1)


def test_rotation_label_augment_layout(images: torch.Tensor) -> None:
    y = torch.tensor([3, 0, 9, 1, 3])
    x_aug, joint, rot = rotation_label_augment(images, y, num_classes=10)
    assert x_aug.shape == (20, 2, 4, 4) and joint.shape == rot.shape == (20,)
    for i in range(5):
        for r in range(4):
            # Example-major layout, as the SLA code: row 4 i + r is image i rotated r times.
            assert torch.equal(x_aug[4 * i + r], torch.rot90(images[i], r, (1, 2)))
            assert int(joint[4 * i + r]) == int(y[i]) * 4 + r
            assert int(rot[4 * i + r]) == r
    assert int(joint.max()) < 40
    y_back, r_back = split_joint_label(joint)
    assert torch.equal(y_back, y.repeat_interleave(4)) and torch.equal(r_back, rot)


def test_joint_label_round_trip() -> None:
    y = torch.arange(7).repeat_interleave(3)
    t = torch.arange(3).repeat(7)
    joint = joint_label(y, t, num_transforms=3)
    assert joint.unique().numel() == 21
    y2, t2 = split_joint_label(joint, num_transforms=3)
    assert torch.equal(y2, y) and torch.equal(t2, t)


def test_rotation_label_augment_errors(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="lie in"):
        rotation_label_augment(images, torch.tensor([0, 1, 2, 3, 10]), num_classes=10)
    with pytest.raises(ValueError):
        rotation_label_augment(images, torch.tensor([0, 1]), num_classes=10)
    with pytest.raises(ValueError):
        rotation_label_augment(images, torch.zeros(5), num_classes=10)
    with pytest.raises(ValueError, match="square"):
        rotation_label_augment(torch.zeros(2, 1, 3, 4), torch.tensor([0, 1]), num_classes=2)


def test_aggregate_joint_logits_matches_sla_loop() -> None:
    n, c, m = 3, 5, 4
    logits = torch.randn(n * m, c * m)
    # The SLA reference: agg = sum_i preds[i::n, i::n] / n with n transforms.
    expected = sum(logits[i::m, i::m] for i in range(m)) / m
    torch.testing.assert_close(aggregate_joint_logits(logits, m), expected)
    # Single (unrotated) prediction is the r = 0 slice; aggregate over one transform is the identity.
    torch.testing.assert_close(aggregate_joint_logits(logits, 1), logits)
    with pytest.raises(ValueError):
        aggregate_joint_logits(torch.randn(6, 20), 4)


def test_flips(images: torch.Tensor) -> None:
    assert torch.equal(horizontal_flip(images), torch.flip(images, (3,)))
    assert torch.equal(random_horizontal_flip(images, p=0.0), images)
    assert torch.equal(random_horizontal_flip(images, p=1.0), torch.flip(images, (3,)))
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a, b = random_horizontal_flip(images, 0.5, g1), random_horizontal_flip(images, 0.5, g2)
    assert torch.equal(a, b)
    for i in range(len(images)):
        assert torch.equal(a[i], images[i]) or torch.equal(a[i], torch.flip(images[i], (2,)))
    with pytest.raises(ValueError):
        random_horizontal_flip(images, p=2.0)


def reference_shift(img: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    h, w = img.shape[-2:]
    out = torch.full_like(img, fill)
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
        ..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def test_random_translate_matches_reference() -> None:
    x = torch.rand(16, 1, 8, 8)
    translate = RandomTranslate(max_shift=2, fill=-1.0)
    out = translate(x, torch.Generator().manual_seed(3))
    shifts = torch.randint(-2, 3, (2, 16), generator=torch.Generator().manual_seed(3))
    assert shifts.abs().max() > 0
    for i in range(16):
        expected = reference_shift(x[i], int(shifts[0, i]), int(shifts[1, i]), -1.0)
        assert torch.equal(out[i], expected)


def test_random_translate_identity_cases() -> None:
    x = torch.rand(4, 3, 8, 8)
    assert torch.equal(RandomTranslate(0)(x), x)
    translate = RandomTranslate(1).eval()
    assert torch.equal(translate(x), x)
    assert not torch.equal(RandomTranslate(1, always=True).eval()(x, torch.Generator().manual_seed(0)), x)
    with pytest.raises(ValueError):
        RandomTranslate(-1)
    with pytest.raises(ValueError):
        RandomTranslate(1)(torch.rand(8, 8))


def test_gaussian_noise() -> None:
    x = torch.zeros(200, 1, 8, 8)
    noise = GaussianNoise(std=0.5)
    a = noise(x, torch.Generator().manual_seed(1))
    b = noise(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert abs(float(a.std()) - 0.5) < 0.02 and abs(float(a.mean())) < 0.02
    clipped = GaussianNoise(std=0.5, clip=(0.0, 1.0))(x)
    assert float(clipped.min()) >= 0.0 and float(clipped.max()) <= 1.0
    assert torch.equal(GaussianNoise(0.5).eval()(x), x)
    with pytest.raises(ValueError):
        GaussianNoise(std=-1.0)
    with pytest.raises(ValueError):
        GaussianNoise(clip=(1.0, 0.0))
    with pytest.raises(ValueError):
        noise(torch.zeros(3, dtype=torch.long))
