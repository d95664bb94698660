"""Sum-product loopy belief propagation on binary pairwise Markov random fields, vectorised over an edge list.

The model is log p(y) = sum_i y_i h_i + sum_(i,j) y_i y_j w_ij + const for y in {0, 1}^N: unary
log-potentials h (the log-potential of state 1, state 0 has 0) and pairwise log-potentials w on the (1, 1)
entry of each edge's 2x2 table (the other entries 0), which is how the LLP-BP Gibbs distribution is written
(paper Section 3; the official network.py builds the same tables for PGMax).

Messages are kept as log-odds: m_{i->j} = log mu_{i->j}(1) - log mu_{i->j}(0). Normalising a log-message
shifts both entries by one constant, so damping the log-messages (as PGMax does) is damping their log-odds.
The schedule is PGMax's flooding one: every message is recomputed from the previous iteration's messages, the
unary factors' messages included (they start at zero and are damped like the others, so they reach h
geometrically). PGMax (google-deepmind/PGMax @741d532, pgmax/infer/bp.py `run_with_diffs`) has no other
schedule; its `damping` defaults to 0.5 and the official network.py (@5bca483) calls `run(num_iters=100,
damping=0.5)`. `loopy_bp` also returns the largest message change of the last iteration, as PGMax's
`run_with_diffs` does, to tell a converged run from an oscillating one.

On a lone bag clique of size k under a strong bag term (bag_lambda = 10) the flooding update has one symmetric
fixed point, whose slope is about -(k - 2): the damped update is stable only for damping > (k - 3) / (k - 1)
(0.71 at k = 8, 0.94 at k = 32, 0.98 at k = 128), and that fixed point puts every member of a bag with a
positive count near 0.5 (the Bethe approximation of a dense frustrated clique), not at the exact count / k.
The tests show both, and that weak kNN edges between bags keep even damping 0.9 from converging.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "BPResult",
    "BinaryPairwiseMRF",
    "brute_force_marginals",
    "log_score",
    "loopy_bp",
    "loopy_bp_marginals",
]


@dataclass(frozen=True)
class BinaryPairwiseMRF:
    """Unary log-potentials (N,), undirected edges (E, 2), i != j, and their (1, 1) log-potentials (E,)."""

    unary: torch.Tensor
    edges: torch.Tensor
    weights: torch.Tensor

    def __post_init__(self) -> None:
        if self.unary.ndim != 1 or self.edges.ndim != 2 or self.edges.shape[1] != 2:
            raise ValueError("unary must be (N,) and edges (E, 2)")
        if self.weights.shape != (self.edges.shape[0],):
            raise ValueError(f"weights must be ({self.edges.shape[0]},), got {tuple(self.weights.shape)}")
        if self.edges.numel() and bool((self.edges[:, 0] == self.edges[:, 1]).any()):
            raise ValueError("self-loops are not pairwise factors")

    @property
    def num_variables(self) -> int:
        return int(self.unary.shape[0])


@dataclass(frozen=True)
class BPResult:
    """Marginals P(y_i = 1) (N,), the iterations run, the last iteration's largest message change (log-odds,
    as PGMax's `run_with_diffs` monitors it) and whether it fell below the tolerance."""

    marginals: torch.Tensor
    iterations: int
    final_delta: float
    converged: bool


def loopy_bp(
    mrf: BinaryPairwiseMRF,
    *,
    num_iters: int = 100,
    damping: float = 0.5,
    temperature: float = 1.0,
    tol: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> BPResult:
    """Synchronous (flooding) damped sum-product iterations, at most `num_iters`; with `tol`, stop at the
    first iteration whose largest message change is below it (a fixed point: more iterations change nothing).
    Without `tol` every iteration runs (PGMax's `run`). float32 as PGMax."""
    if not 0.0 <= damping < 1.0:
        raise ValueError(f"damping must lie in [0, 1), got {damping}")
    unary = mrf.unary.to(dtype) / temperature
    weights = mrf.weights.to(dtype) / temperature
    n, num_edges = mrf.num_variables, mrf.edges.shape[0]
    # Directed copies: message k goes source[k] -> target[k]; reverse[k] is the opposite message.
    source = torch.cat([mrf.edges[:, 0], mrf.edges[:, 1]]).long()
    target = torch.cat([mrf.edges[:, 1], mrf.edges[:, 0]]).long()
    coupling = torch.cat([weights, weights])
    reverse = torch.cat([torch.arange(num_edges) + num_edges, torch.arange(num_edges)])
    messages = torch.zeros(2 * num_edges, dtype=dtype)
    unary_messages = torch.zeros(n, dtype=dtype)
    delta, iterations = float("inf"), 0
    for iterations in range(1, num_iters + 1):
        field = unary_messages.index_add(0, target, messages)
        cavity = field[source] - messages[reverse]
        # log sum_{y_i} exp(y_i cavity + y_i y_j w) for y_j = 1 minus the same for y_j = 0.
        fresh = F.softplus(cavity + coupling) - F.softplus(cavity)
        new_messages = damping * messages + (1.0 - damping) * fresh
        new_unary = damping * unary_messages + (1.0 - damping) * unary
        if tol is not None or iterations == num_iters:
            delta = max(
                float((new_messages - messages).abs().max()) if len(messages) else 0.0,
                float((new_unary - unary_messages).abs().max()) if n else 0.0,
            )
        messages, unary_messages = new_messages, new_unary
        if tol is not None and delta < tol:
            break
    field = unary_messages.index_add(0, target, messages)
    converged = tol is not None and delta < tol
    return BPResult(torch.sigmoid(field), iterations, delta, converged)


def loopy_bp_marginals(
    mrf: BinaryPairwiseMRF,
    *,
    num_iters: int = 100,
    damping: float = 0.5,
    temperature: float = 1.0,
    tol: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """P(y_i = 1) for every variable after `num_iters` synchronous damped sum-product iterations, or fewer
    when `tol` is given and reached (`loopy_bp`; exact on a tree once `num_iters` exceeds its diameter and the
    damping has died out)."""
    result = loopy_bp(
        mrf, num_iters=num_iters, damping=damping, temperature=temperature, tol=tol, dtype=dtype
    )
    return result.marginals


def log_score(mrf: BinaryPairwiseMRF, labels: torch.Tensor) -> torch.Tensor:
    """Unnormalised log-probability of labelings (..., N) in {0, 1}."""
    y = labels.double()
    i, j = mrf.edges[:, 0].long(), mrf.edges[:, 1].long()
    return (y * mrf.unary.double()).sum(-1) + (y[..., i] * y[..., j] * mrf.weights.double()).sum(-1)


def brute_force_marginals(mrf: BinaryPairwiseMRF) -> torch.Tensor:
    """Exact P(y_i = 1) by enumerating all 2^N labelings (N <= 20)."""
    n = mrf.num_variables
    if n > 20:
        raise ValueError(f"enumeration of 2^{n} labelings is too large")
    labelings = torch.tensor(list(itertools.product((0, 1), repeat=n)), dtype=torch.float64)
    probabilities = torch.softmax(log_score(mrf, labelings), dim=0)
    return probabilities @ labelings


def as_mrf(unary: np.ndarray, edges: np.ndarray, weights: np.ndarray) -> BinaryPairwiseMRF:
    """A BinaryPairwiseMRF from numpy arrays."""
    return BinaryPairwiseMRF(
        unary=torch.as_tensor(np.asarray(unary, dtype=np.float64)),
        edges=torch.as_tensor(np.asarray(edges, dtype=np.int64).reshape(-1, 2)),
        weights=torch.as_tensor(np.asarray(weights, dtype=np.float64)),
    )
