"""Procedurally generated colour images with headroom: a class is a (shape, texture) pair, drawn under
nuisance factors (position, scale, rotation, colours, background clutter, pixel noise) that a linear model on
raw pixels cannot undo but a small CNN can.

Ten shapes (signed-distance masks) times ten textures (patterns in the object's own frame, so they turn and
scale with it) give up to 100 classes; class c is shape c % 10 with texture (c // 10 + c) % 10, so the first
ten classes differ in both. Everything is vectorised over images (20k 32x32 images take a few seconds),
deterministic from `seed`, and cached as one `.npz` per configuration."""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common.data.sources import ArrayData, stratified_split
from common.errors import UserError
from common.results.cache import atomic_write, cache_key

NUM_SHAPES = NUM_TEXTURES = 10
MAX_CLASSES = NUM_SHAPES * NUM_TEXTURES


@dataclass(frozen=True)
class ShapesConfig:
    """What decides the images (and the cache key). Nuisance strengths are in [0, 1] unless stated."""

    num_classes: int = 10
    num_samples: int = 12000  # train + test
    image_size: int = 32
    position: float = 0.35  # largest shift of the centre, as a fraction of the half-width
    scale_range: tuple[float, float] = (0.45, 0.75)  # object radius, as a fraction of the half-width
    rotation: bool = True  # uniform rotation in [0, 2 pi)
    colour: float = 1.0  # 0: one fixed palette; 1: random foreground, pattern and background colours
    clutter: int = 3  # distractor strokes on the background per image
    pixel_noise: float = 0.08  # std of additive Gaussian noise
    seed: int = 0


def class_parts(label: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """(shape index, texture index) of each class label."""
    label = np.asarray(label)
    return label % NUM_SHAPES, (label // NUM_SHAPES + label) % NUM_TEXTURES


def _polar(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.sqrt(u**2 + v**2), np.arctan2(v, u)


# Shapes: a field < 0 inside, about -1..1 across the object, in its own frame (radius 1).
SHAPES = (
    lambda u, v: _polar(u, v)[0] - 1.0,  # disk
    lambda u, v: np.maximum(np.abs(u), np.abs(v)) - 0.8,  # square
    lambda u, v: np.maximum(np.abs(u) * 0.866 + v * 0.5, -v) - 0.5,  # triangle
    lambda u, v: np.minimum(  # plus
        np.maximum(np.abs(u) - 0.3, np.abs(v) - 1.0), np.maximum(np.abs(u) - 1.0, np.abs(v) - 0.3)
    ),
    lambda u, v: np.abs(_polar(u, v)[0] - 0.72) - 0.28,  # ring
    lambda u, v: np.abs(u) + np.abs(v) - 1.0,  # diamond
    lambda u, v: _polar(u, v)[0] - (0.65 + 0.35 * np.cos(5 * _polar(u, v)[1])),  # star
    lambda u, v: np.maximum(_polar(u, v)[0] - 1.0, -v - 0.1),  # half disk
    lambda u, v: np.sqrt(u**2 + (v / 0.5) ** 2) - 1.0,  # ellipse
    lambda u, v: np.maximum(
        np.maximum(np.abs(u) * 0.866 + np.abs(v) * 0.5, np.abs(v)) - 0.85, 0.4 - np.abs(u)
    ),  # split hexagon
)
_K = 3.0 * np.pi
# Textures: 1 where the pattern colour shows, in the object's frame (so they turn and scale with it).
TEXTURES = (
    lambda u, v: np.zeros_like(u),  # solid
    lambda u, v: np.sin(_K * u) > 0,  # stripes
    lambda u, v: np.sin(_K * v) > 0,  # stripes across
    lambda u, v: np.sin(_K * (u + v) / 1.4) > 0,  # diagonal stripes
    lambda u, v: np.sin(_K * u) * np.sin(_K * v) > 0,  # checker
    lambda u, v: np.sin(_K * u) ** 2 * np.sin(_K * v) ** 2 > 0.35,  # dots
    lambda u, v: np.sin(2 * _K * _polar(u, v)[0]) > 0,  # concentric rings
    lambda u, v: np.maximum(np.abs(np.sin(_K * u)), np.abs(np.sin(_K * v))) > 0.92,  # grid lines
    lambda u, v: np.sin(_K * (u - v) / 1.4) > 0,  # other diagonal
    lambda u, v: u > 0,  # two halves
)


def _per_kind(kinds: np.ndarray, functions: tuple, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """functions[kinds[i]](u[i], v[i]) for every image i, evaluating each function on its images only."""
    out = np.empty_like(u)
    for index, function in enumerate(functions):
        chosen = kinds == index
        if chosen.any():
            out[chosen] = function(u[chosen], v[chosen])
    return out


def _render(labels: np.ndarray, config: ShapesConfig, rng: np.random.Generator) -> np.ndarray:
    n, size = len(labels), config.image_size
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    ys, xs = np.meshgrid(grid, grid, indexing="ij")
    shape, texture = class_parts(labels)

    centre = rng.uniform(-config.position, config.position, (n, 2)).astype(np.float32)
    radius = rng.uniform(*config.scale_range, n).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi, n).astype(np.float32) if config.rotation else np.zeros(n, np.float32)
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    dx = (xs[None] - centre[:, 0, None, None]) / radius[:, None, None]
    dy = (ys[None] - centre[:, 1, None, None]) / radius[:, None, None]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    # Soft edges about one pixel wide: the field is in object units, a pixel is 2 / (size * radius) of them.
    edge = _per_kind(shape, SHAPES, u, v) * (size * radius[:, None, None] / 2)
    inside = (1 / (1 + np.exp(np.clip(edge, -30, 30))))[:, None]
    pattern = _per_kind(texture, TEXTURES, u, v)[:, None]

    def colours() -> np.ndarray:
        fixed = rng.uniform(0.2, 0.8, (1, 3))
        return ((1 - config.colour) * fixed + config.colour * rng.uniform(0, 1, (n, 3))).astype(np.float32)

    foreground, pattern_colour, background = colours(), colours(), colours()
    # The pattern keeps a visible contrast with the foreground whatever colours were drawn.
    too_close = np.abs(pattern_colour - foreground).sum(1, keepdims=True) < 0.6
    pattern_colour = np.where(too_close, 1 - foreground, pattern_colour)
    image = np.empty((n, 3, size, size), np.float32)
    image[:] = background[:, :, None, None]
    _add_clutter(image, config, rng)
    fg, pc = foreground[:, :, None, None], pattern_colour[:, :, None, None]
    object_colour = fg * (1 - pattern) + pc * pattern
    image = image * (1 - inside) + object_colour * inside
    image = image + np.float32(config.pixel_noise) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0, 1)


def _add_clutter(image: np.ndarray, config: ShapesConfig, rng: np.random.Generator) -> None:
    """Draws thin strokes of random colour, place and direction into `image`: edges that belong to no
    class."""
    n, _, size, _ = image.shape
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    ys, xs = np.meshgrid(grid, grid, indexing="ij")
    for _ in range(config.clutter):
        angle = rng.uniform(0, np.pi, n).astype(np.float32)[:, None, None]
        half_length = rng.uniform(0.3, 0.9, n).astype(np.float32)[:, None, None]
        centre = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
        x, y = xs - centre[:, 0, None, None], ys - centre[:, 1, None, None]
        along = x * np.cos(angle) + y * np.sin(angle)
        across = -x * np.sin(angle) + y * np.cos(angle)
        stroke = (np.abs(across) < 1.2 / size) & (np.abs(along) < half_length)
        colour = rng.uniform(0, 1, (n, 3)).astype(np.float32)[:, :, None, None]
        np.copyto(image, colour, where=stroke[:, None])
    return image


def generate_shapes(config: ShapesConfig, chunk: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 3 x S x S in [0, 1], labels N), balanced over classes, deterministic from the config."""
    if not 2 <= config.num_classes <= MAX_CLASSES:
        raise UserError(f"shapes: num_classes must be in [2, {MAX_CLASSES}], got {config.num_classes}")
    if config.num_samples < 2 * config.num_classes:
        raise UserError(f"shapes: num_samples must be at least 2 x num_classes, got {config.num_samples}")
    rng = np.random.default_rng(config.seed)
    labels = rng.permutation(np.arange(config.num_samples) % config.num_classes)
    images = np.empty((config.num_samples, 3, config.image_size, config.image_size), np.float32)
    for start in range(0, config.num_samples, chunk):
        block = slice(start, start + chunk)
        images[block] = _render(labels[block], config, np.random.default_rng([config.seed, start]))
    return images, labels.astype(np.int64)


def shapes_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Where generated sets are kept: `<cache_dir>/pnu-shapes` when given, else $PNU_DATA_CACHE or
    ~/.cache/pnu-repro, under `shapes/`."""
    if cache_dir:
        return Path(cache_dir) / "pnu-shapes"
    return Path(os.environ.get("PNU_DATA_CACHE", Path.home() / ".cache" / "pnu-repro")) / "shapes"


@functools.cache
def _cached(config: ShapesConfig, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    path = folder / f"{cache_key(asdict(config))}.npz"
    try:
        with np.load(path) as stored:
            return stored["images"], stored["labels"]
    except (OSError, ValueError, KeyError):  # absent or unreadable: generate it again
        pass
    images, labels = generate_shapes(config)

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.savez(handle, images=images, labels=labels)

    atomic_write(path, write)
    return images, labels


def load_shapes(
    *,
    test_fraction: float = 0.3,
    split_seed: int = 0,
    cache_dir: str | Path | None = None,
    **options,
) -> ArrayData:
    """The generated set of `ShapesConfig(**options, seed=split_seed)`, split into train and test (stratified,
    by `split_seed`); generated once per configuration and then read from the cache."""
    known = set(ShapesConfig.__dataclass_fields__) - {"seed"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"data.source_kwargs has unknown shapes options {unknown}; known: {sorted(known)}")
    if "scale_range" in options:
        options["scale_range"] = tuple(options["scale_range"])
    config = ShapesConfig(**options, seed=split_seed)
    images, labels = _cached(config, shapes_cache_dir(cache_dir))
    return stratified_split(images, labels, test_fraction, split_seed)
