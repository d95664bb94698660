"""Vertices of the regular d-Simplex: the fixed (non-learnable) classifier of Biondi et al., CVPR 2024.

K = d + 1 unit vectors in R^d with pairwise cosine -1/d and zero sum (the maximally separated equiangular
configuration). Construction as in the official code, miccunifi/iamcl2r @ 18495ac,
src/iamcl2r/models/__init__.py `dsimplex` (lines 107-119):

    t = [I_d ; ((1 - sqrt(1 + d)) / d) 1^T]      (d + 1) x d: standard basis plus one point on the diagonal
    t = t - mean of the rows                         centre the simplex at the origin
    t = t / ||t_k||                                  project every vertex onto the unit sphere

The official code preallocates K = 1024 vertices (d = 1023, methods/hoc.py line 9) so that future classes
already have their classifier vector; class y is written on vertex K - 1 - y ("from the bottom of the shared
interface", dataset/__init__.py line 42), see `vertex_of_class`.
"""

from __future__ import annotations

import math

import torch


def dsimplex_vertices(num_vertices: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (num_vertices, num_vertices - 1) matrix whose rows are the unit vertices of a regular simplex."""
    if num_vertices < 2:
        raise ValueError(f"a d-Simplex needs at least 2 vertices, got {num_vertices}")
    dim = num_vertices - 1
    # Built in float64 so the cosines are -1/d to ~1e-15 whatever the output dtype.
    vertices = torch.zeros(num_vertices, dim, dtype=torch.float64)
    vertices[:dim] = torch.eye(dim, dtype=torch.float64)
    vertices[dim] = (1.0 - math.sqrt(1.0 + dim)) / dim
    vertices -= vertices.mean(dim=0, keepdim=True)
    # The official code adds 1e-8 to the norm; the rows never have a norm near zero, so it changes nothing.
    vertices /= vertices.norm(dim=1, keepdim=True)
    return vertices.to(dtype)


def vertex_of_class(labels: torch.Tensor, num_vertices: int) -> torch.Tensor:
    """The vertex index of class `labels` (official target transform y -> K - 1 - y)."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_vertices):
        raise ValueError(
            f"class ids must lie in [0, {num_vertices}) to have a d-Simplex vertex; got "
            f"[{int(labels.min())}, {int(labels.max())}]. Raise method.preallocated_classes."
        )
    return num_vertices - 1 - labels
