"""Extreme points -> initial pseudo-mask, after SimPLe's `init_mask/generate_init_mask.py` (2D version).

Official pipeline (Abner228/SmileCode @52b1944, SimPLe/init_mask/generate_init_mask.py), per tumour:
  1. crop the image around the extreme-point box, extended by a margin (20 in-plane pixels there);
  2. foreground scribble: the geodesic (Dijkstra) paths between each pair of opposite extreme points over the
     Sobel gradient magnitude, dilated by one pixel (full 3x3 structuring element);
  3. background seeds: every crop pixel more than 5 pixels outside the box;
  4. random walker (beta 130, on the crop scaled as (x - min) / max), then 7 rounds of re-seeding: pixels with
     foreground probability > 0.8 become foreground seeds, <= 0.1 background seeds, and the walker is rerun;
  5. mask: inside the box, probability > 0.8 -> positive (1), the rest of the box -> unlabeled (2 there,
     ``UNKNOWN`` here); outside the box -> negative (0).
The random walker is skimage's (`random_walker`, mode cg_mg): edge weights ``exp(-beta / (10 std) dI^2)``
between 4-neighbours; the foreground probability solves the Dirichlet problem of the graph Laplacian with
the seeds as boundary values. skimage is not a dependency here, so `random_walker_probability` solves the same
linear system with scipy (exactly, by a sparse direct solve, instead of skimage's multigrid CG).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import dijkstra
from scipy.sparse.linalg import spsolve

from common.data.weak_labels import UNKNOWN

__all__ = [
    "UNKNOWN",
    "ExtremePointBox",
    "extreme_points",
    "geodesic_path",
    "extreme_polygon_mask",
    "initial_pseudo_mask",
    "random_walker_probability",
]


@dataclass(frozen=True)
class ExtremePointBox:
    """The four extreme points (row, col) of a 2D object and the box they span (inclusive bounds)."""

    top: tuple[int, int]
    bottom: tuple[int, int]
    left: tuple[int, int]
    right: tuple[int, int]

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """``(row_min, row_max, col_min, col_max)``, inclusive."""
        return self.top[0], self.bottom[0], self.left[1], self.right[1]

    def inside(self, shape: tuple[int, int]) -> np.ndarray:
        """Boolean mask of the pixels inside the box."""
        r0, r1, c0, c1 = self.bounds
        box = np.zeros(shape, dtype=bool)
        box[r0 : r1 + 1, c0 : c1 + 1] = True
        return box


def extreme_points(mask: np.ndarray) -> ExtremePointBox:
    """Top-, bottom-, left- and right-most pixels of a 2D mask; among tied pixels the middle one (an
    annotator clicks the middle of a flat extreme)."""
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        raise ValueError("extreme points of an empty mask")

    def pick(on_line: np.ndarray, other: np.ndarray) -> int:
        values = np.sort(other[on_line])
        return int(values[(len(values) - 1) // 2])

    top_r, bottom_r, left_c, right_c = rows.min(), rows.max(), cols.min(), cols.max()
    return ExtremePointBox(
        top=(int(top_r), pick(rows == top_r, cols)),
        bottom=(int(bottom_r), pick(rows == bottom_r, cols)),
        left=(pick(cols == left_c, rows), int(left_c)),
        right=(pick(cols == right_c, rows), int(right_c)),
    )


def _grid_edges(shape: tuple[int, int], connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Undirected edges (as index pairs, each once) of the 4- or 8-connected pixel grid."""
    index = np.arange(shape[0] * shape[1]).reshape(shape)
    offsets = [(0, 1), (1, 0)] + ([(1, 1), (1, -1)] if connectivity == 8 else [])
    heads, tails = [], []
    for dr, dc in offsets:
        a = index[max(0, -dr) : shape[0] - max(0, dr), max(0, -dc) : shape[1] - max(0, dc)]
        b = index[max(0, dr) : shape[0] + min(0, dr) or None, max(0, dc) : shape[1] + min(0, dc) or None]
        heads.append(a.ravel())
        tails.append(b.ravel())
    return np.concatenate(heads), np.concatenate(tails)


def geodesic_path(cost: np.ndarray, start: tuple[int, int], end: tuple[int, int]) -> np.ndarray:
    """Pixels ``(K, 2)`` of the cheapest 8-connected path from ``start`` to ``end``, a step into a pixel
    costing that pixel's value (dijkstra3d's convention, as the official code uses)."""
    shape = cost.shape
    heads, tails = _grid_edges(shape, 8)
    flat = cost.ravel().astype(np.float64) + 1e-9  # a zero weight would not be an edge
    n = flat.size
    graph = sparse.csr_matrix(
        (
            np.concatenate([flat[tails], flat[heads]]),
            (np.concatenate([heads, tails]), np.concatenate([tails, heads])),
        ),
        shape=(n, n),
    )
    source = start[0] * shape[1] + start[1]
    target = end[0] * shape[1] + end[1]
    _, predecessors = dijkstra(graph, indices=source, return_predecessors=True)
    path = [target]
    while path[-1] != source:
        path.append(int(predecessors[path[-1]]))
        if path[-1] < 0:
            raise RuntimeError("no path between the extreme points")
    return np.stack(np.unravel_index(np.asarray(path[::-1]), shape), axis=1)


def random_walker_probability(image: np.ndarray, seeds: np.ndarray, beta: float = 130.0) -> np.ndarray:
    """Foreground probability of every pixel under the random walker (Grady, 2006) with skimage's weights.

    ``seeds``: 0 unseeded, 1 foreground, 2 background (skimage's label convention). Seeds keep their value."""
    if not (seeds == 1).any() or not (seeds == 2).any():
        raise ValueError("the random walker needs foreground and background seeds")
    data = image.astype(np.float64)
    heads, tails = _grid_edges(data.shape, 4)
    flat = data.ravel()
    std = data.std()
    scale = -beta / (10.0 * std) if std > 0 else 0.0
    weights = np.exp(scale * (flat[heads] - flat[tails]) ** 2) + 1e-10
    n = flat.size
    adjacency = sparse.csr_matrix(
        (
            np.concatenate([weights, weights]),
            (np.concatenate([heads, tails]), np.concatenate([tails, heads])),
        ),
        shape=(n, n),
    )
    laplacian = sparse.diags(np.asarray(adjacency.sum(axis=1)).ravel()) - adjacency
    labels = seeds.ravel()
    free = labels == 0
    prob = (labels == 1).astype(np.float64)
    if free.any():
        laplacian = laplacian.tocsr()
        l_free = laplacian[free][:, free].tocsc()
        rhs = -laplacian[free][:, ~free] @ prob[~free]
        prob[free] = np.clip(spsolve(l_free, rhs), 0.0, 1.0)
    return prob.reshape(data.shape)


def initial_pseudo_mask(
    image: np.ndarray,
    points: ExtremePointBox,
    *,
    crop_margin: int = 20,
    background_margin: int = 5,
    beta: float = 130.0,
    rounds: int = 7,
    foreground_threshold: float = 0.8,
    background_threshold: float = 0.1,
) -> np.ndarray:
    """The official initial mask of one object: int8 with 1 (positive), 0 (negative) and ``UNKNOWN``."""
    height, width = image.shape
    r0, r1, c0, c1 = points.bounds
    cr0, cr1 = max(r0 - crop_margin, 0), min(r1 + crop_margin, height - 1)
    cc0, cc1 = max(c0 - crop_margin, 0), min(c1 + crop_margin, width - 1)
    # The official crop is img[mn_extend:mx_extend] (exclusive end).
    crop = image[cr0:cr1, cc0:cc1].astype(np.float64)
    local = ExtremePointBox(
        *[(p[0] - cr0, p[1] - cc0) for p in (points.top, points.bottom, points.left, points.right)]
    )
    lr0, lr1, lc0, lc1 = local.bounds

    gradient = np.hypot(ndimage.sobel(crop, axis=0), ndimage.sobel(crop, axis=1))
    scribble = np.zeros(crop.shape, dtype=np.int8)
    for start, end in ((local.top, local.bottom), (local.left, local.right)):
        path = geodesic_path(gradient, start, end)
        scribble[path[:, 0], path[:, 1]] = 1
    scribble = ndimage.binary_dilation(scribble, structure=np.ones((3, 3), bool)).astype(np.int8)
    outside = np.ones(crop.shape, dtype=bool)
    outside[
        max(lr0 - background_margin, 0) : lr1 + background_margin,
        max(lc0 - background_margin, 0) : lc1 + background_margin,
    ] = False
    scribble[outside] = 2

    top = crop.max()
    normalised = (crop - crop.min()) / top if top > 0 else crop - crop.min()
    prob = random_walker_probability(normalised, scribble, beta)
    for _ in range(rounds):
        seeds = np.zeros(crop.shape, dtype=np.int8)
        seeds[prob > foreground_threshold] = 1
        seeds[prob <= background_threshold] = 2
        if not (seeds == 1).any() or not (seeds == 2).any():
            break
        prob = random_walker_probability(normalised, seeds, beta)

    crop_mask = np.zeros(crop.shape, dtype=np.int8)
    box = local.inside(crop.shape)
    crop_mask[box] = np.where(prob[box] > foreground_threshold, 1, UNKNOWN)
    mask = np.zeros(image.shape, dtype=np.int8)
    mask[cr0:cr1, cc0:cc1] = crop_mask
    return mask


def extreme_polygon_mask(shape: tuple[int, int], points: ExtremePointBox, scale: float = 1.0) -> np.ndarray:
    """The simplest initial mask from extreme points (not the official one): positives = the quadrilateral
    spanned by the four extreme points (inside the object when it is convex), shrunk by ``scale`` towards
    the mean of its corners (``scale < 1``: an inner core, a less complete mask), negatives outside the box,
    the rest of the box ``UNKNOWN``. int8, as `initial_pseudo_mask`."""
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    vertices = np.array([points.top, points.right, points.bottom, points.left], dtype=np.float64)
    centre = vertices.mean(axis=0)
    # Clockwise in (row, col); scaling about the centre keeps the order.
    corners = [tuple(centre + scale * (v - centre)) for v in vertices]
    inside = np.ones(shape, dtype=bool)
    for (r0, c0), (r1, c1) in zip(corners, corners[1:] + corners[:1], strict=True):
        # Clockwise polygon in image coordinates: the interior lies on one side of every edge.
        cross = (c1 - c0) * (rows - r0) - (r1 - r0) * (cols - c0)
        inside &= cross >= -1e-9
    box = points.inside(shape)
    mask = np.where(box, UNKNOWN, 0).astype(np.int8)
    mask[box & inside] = 1
    return mask
