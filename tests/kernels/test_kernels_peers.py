"""Parity of info_nce with peer libraries: open_clip's ClipLoss and pytorch-metric-learning's NTXentLoss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from pytorch_metric_learning.losses import NTXentLoss

from common.kernels import info_nce
from tests.kernels.kernels_testlib import assert_close_rel, make_embeddings


@pytest.mark.parametrize("backend", ["chunked", "reference"])
@pytest.mark.parametrize("batch", [1, 33])
def test_symmetric_matches_open_clip(batch: int, backend: str) -> None:
    """CLIP: logits = logit_scale * image @ text.T, mean of both cross entropies; T = 1/logit_scale."""
    image, text = make_embeddings(batch, batch, 64, seed=batch)
    ours = {
        "image": image.clone().requires_grad_(),
        "text": text.clone().requires_grad_(),
        "scale": torch.tensor(14.3, dtype=torch.float64, requires_grad=True),
    }
    peer = {name: value.detach().clone().requires_grad_() for name, value in ours.items()}
    loss = info_nce(ours["image"], ours["text"], 1.0 / ours["scale"], symmetric=True, backend=backend)
    peer_loss = ClipLoss()(peer["image"], peer["text"], peer["scale"])
    loss.backward()
    peer_loss.backward()
    assert_close_rel(loss, peer_loss, 1e-10, "loss")
    for name in ours:
        assert_close_rel(ours[name].grad, peer[name].grad, 1e-9, f"d loss / d {name}")


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_positive_index_and_labels_match_pml_ntxent(temperature: float) -> None:
    """SimCLR NT-Xent as info_nce: the exact correspondence.

    NTXentLoss(embeddings (2N, d), labels) takes every ordered pair (a, p), a != p, with equal labels as a
    positive, and every b with labels[b] != labels[a] as a negative of anchor a; loss_ap =
    -log(e^{s_ap} / (e^{s_ap} + sum_b e^{s_ab})), averaged over positive pairs, with cosine similarity.
    With two views z1, z2 and labels = [0..N-1, 0..N-1], anchor a has exactly one positive (its other view)
    and 2N - 2 negatives (all rows of other images, both views). In info_nce terms: query = key = the 2N
    normalised rows, positive_index = the other view (i + N mod 2N), and the same labels on both sides, whose
    masking removes the anchor itself (its own label) from the negatives; "mean" over the 2N rows equals
    NTXent's mean over the 2N positive pairs. (PML adds a tiny epsilon inside its log; negligible here.)
    """
    num_pairs, dim = 24, 32
    gen = torch.Generator().manual_seed(0)
    raw = torch.randn(2 * num_pairs, dim, generator=gen, dtype=torch.float64)
    raw[num_pairs:] = raw[:num_pairs] + 0.5 * raw[num_pairs:]  # correlated views
    ours, peer = raw.clone().requires_grad_(), raw.clone().requires_grad_()
    labels = torch.arange(num_pairs).repeat(2)
    other_view = (torch.arange(2 * num_pairs) + num_pairs) % (2 * num_pairs)
    embeddings = F.normalize(ours, dim=1)  # PML's cosine similarity normalises; we normalise explicitly
    loss = info_nce(
        embeddings, embeddings, temperature, positive_index=other_view, query_labels=labels, key_labels=labels
    )
    peer_loss = NTXentLoss(temperature=temperature)(peer, labels)
    loss.backward()
    peer_loss.backward()
    assert_close_rel(loss, peer_loss, 1e-10, "loss")
    assert_close_rel(ours.grad, peer.grad, 1e-8, "d loss / d embeddings")
