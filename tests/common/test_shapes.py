"""common.data.shapes: deterministic generation, classes as (shape, texture) pairs, the cache, bad options,
and the headroom the set exists for (a small CNN well above a linear model on raw pixels)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from common.data import shapes
from common.data.datamodule import ClassificationDataModule
from common.data.shapes import MAX_CLASSES, ShapesConfig, class_parts, generate_shapes, load_shapes
from common.errors import UserError

SMALL = ShapesConfig(num_classes=10, num_samples=200, image_size=16)


def test_same_config_same_images_and_balanced_classes():
    images, labels = generate_shapes(SMALL)
    again, again_labels = generate_shapes(SMALL)
    assert np.array_equal(images, again) and np.array_equal(labels, again_labels)
    assert images.shape == (200, 3, 16, 16) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert np.bincount(labels).tolist() == [20] * 10
    other, _ = generate_shapes(replace(SMALL, seed=1))
    assert not np.array_equal(images, other)


def test_every_class_is_its_own_shape_and_texture_pair():
    shape, texture = class_parts(np.arange(MAX_CLASSES))
    assert len(set(zip(shape.tolist(), texture.tolist(), strict=True))) == MAX_CLASSES
    first_ten = class_parts(np.arange(10))
    assert len(set(first_ten[0].tolist())) == 10 and len(set(first_ten[1].tolist())) == 10


def test_nuisances_off_leave_one_clean_drawing_per_class():
    """Without position, rotation, colour, clutter and noise, two images of a class differ only by scale."""
    plain = replace(SMALL, position=0.0, rotation=False, colour=0.0, clutter=0, pixel_noise=0.0)
    plain = replace(plain, scale_range=(0.6, 0.6))
    images, labels = generate_shapes(plain)
    for label in range(10):
        first, second = images[labels == label][:2]
        assert np.allclose(first, second, atol=1e-6)
    assert not np.allclose(images[labels == 0][0], images[labels == 1][0])


def test_generated_once_then_read_from_the_cache(tmp_path, monkeypatch):
    shapes._cached.cache_clear()
    data = load_shapes(num_classes=10, num_samples=200, image_size=16, cache_dir=tmp_path)
    assert len(list((tmp_path / "pnu-shapes").glob("*.npz"))) == 1
    shapes._cached.cache_clear()
    monkeypatch.setattr(shapes, "generate_shapes", lambda config: pytest.fail("generated again"))
    again = load_shapes(num_classes=10, num_samples=200, image_size=16, cache_dir=tmp_path)
    assert np.array_equal(data.x_train, again.x_train) and np.array_equal(data.y_test, again.y_test)
    assert len(data.y_train) == 140 and data.num_classes == 10


def test_bad_options_fail_with_what_to_do(tmp_path):
    with pytest.raises(UserError, match=r"unknown shapes options \['colour_jitter'\]"):
        load_shapes(colour_jitter=1.0, cache_dir=tmp_path)
    with pytest.raises(UserError, match=r"num_classes must be in \[2, 100\]"):
        generate_shapes(replace(SMALL, num_classes=101))


def test_the_datamodule_serves_it_as_a_mini_source(tmp_path):
    module = ClassificationDataModule(
        "shapes",
        source_kwargs={"num_classes": 4, "num_samples": 80, "image_size": 16},
        cache_dir=str(tmp_path),
        noise_type="symmetric",
        noise_rate=0.2,
        batch_size=8,
    )
    module.setup("fit")
    assert module.num_classes == 4 and module.input_shape == (3, 16, 16)
    batch = next(iter(module.train_dataloader()))
    assert batch["x"].shape == (8, 3, 16, 16) and module.num_train == 56
    assert 0 < module.realised_noise_rate < 0.5


@pytest.mark.slow  # two short trainings (about 10 s)
def test_a_small_cnn_learns_what_a_linear_model_on_pixels_cannot():
    """The headroom: on 3,000 training images a linear classifier on raw pixels stays near chance (10%) while
    a small CNN trained for a few epochs is far above it (the full-size figures: benchmarks/shapes_headroom.py
    and its results in benchmarks/results/)."""
    from torch import nn

    from benchmarks.shapes_headroom import small_cnn, train_and_test
    from common.data.sources import stratified_split

    data = stratified_split(*generate_shapes(ShapesConfig(num_samples=4000)), 0.25, 0)
    arrays = (data.x_train, data.y_train, data.x_test, data.y_test)
    linear = train_and_test(
        nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)), *arrays, epochs=5, lr=1e-3
    )
    cnn = train_and_test(small_cnn(10, width=16), *arrays, epochs=6, lr=3e-3)
    assert linear < 20.0, linear
    assert cnn > linear + 15.0, (cnn, linear)
