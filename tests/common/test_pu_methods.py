"""PU binary data (`pu_binary`) and the PU methods (`upu`, `nnpu`, `vpu`, `pn_oracle`): labels hidden as
specified, the class prior of the unlabelled set, each method's loss equal to its formula in common.losses,
and the AUROC equal to scikit-learn's."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from common.data.pu import PUBinaryDataModule
from common.errors import UserError
from common.lit.pu import NNPUModule, PNOracleModule, UPUModule, VPUModule
from common.losses.pu import nnpu_risk, upu_risk, vpu_loss

MIXTURE = {"num_classes": 4, "num_features": 5, "num_samples": 400}


def _data(**kwargs) -> PUBinaryDataModule:
    module = PUBinaryDataModule(
        "gaussian_mixture", source_kwargs=MIXTURE, positive_classes=[0, 2], batch_size=32, **kwargs
    )
    module.setup("fit")
    return module


def test_labels_are_hidden_as_specified_and_the_prior_is_that_of_the_unlabelled_set():
    data = _data(labeled_fraction=0.25, seed=3)
    clean, observed = data.train_labels_clean, data.train_labels
    assert data.num_classes == 2 and set(np.unique(clean)) == {0, 1}
    assert set(np.unique(data.test_labels)) == {0, 1}
    positives = int(clean.sum())
    assert observed.sum() == round(0.25 * positives) and np.all(clean[observed == 1] == 1)
    unlabeled = observed == 0
    assert data.unlabeled_prior == pytest.approx(clean[unlabeled].sum() / unlabeled.sum())
    other_seed = _data(labeled_fraction=0.25, seed=4)
    assert not np.array_equal(observed, other_seed.train_labels)  # which positives are labelled: per seed
    assert np.array_equal(clean, other_seed.train_labels_clean) and data.split_hash != other_seed.split_hash


def test_bad_pu_data_settings_fail_with_what_to_do():
    with pytest.raises(UserError, match="labeled_fraction must be in"):
        PUBinaryDataModule("gaussian_mixture", labeled_fraction=1.0)
    with pytest.raises(UserError, match="leave data.noise_type at none"):
        PUBinaryDataModule("gaussian_mixture", noise_type="symmetric", noise_rate=0.2)
    with pytest.raises(UserError, match=r"positive_classes \[7\] must be non-empty classes"):
        PUBinaryDataModule("gaussian_mixture", source_kwargs=MIXTURE, positive_classes=[7]).setup("fit")


def _module(cls, **kwargs):
    return cls(
        backbone=torch.nn.Linear(3, 2),
        num_classes=2,
        num_train_examples=8,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        **kwargs,
    )


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(8, 3, generator=g),
        "y": torch.tensor([1, 0, 1, 0, 0, 0, 1, 0]),
        "y_clean": torch.tensor([1, 0, 1, 1, 0, 0, 1, 1]),
    }


def test_each_method_minimises_its_formula():
    batch = _batch()
    logits = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    score = logits[:, 1] - logits[:, 0]
    upu = _module(UPUModule, prior=0.4)
    assert torch.equal(upu.compute_loss(logits, batch), upu_risk(score, batch["y"], 0.4).loss)
    nnpu = _module(NNPUModule, prior=0.4, beta=0.1, gamma=0.5)
    expected = nnpu_risk(score, batch["y"], 0.4, beta=0.1, gamma=0.5).loss
    assert torch.equal(nnpu.compute_loss(logits, batch), expected)
    vpu = _module(VPUModule, mix_weight=0.0)
    log_phi = F.log_softmax(logits, 1)[:, 1]
    assert torch.equal(vpu.compute_loss(logits, batch), vpu_loss(log_phi, log_phi[batch["y"] == 1]))
    oracle = _module(PNOracleModule)
    assert torch.equal(oracle.compute_loss(logits, batch), F.cross_entropy(logits, batch["y_clean"]))
    mixed = _module(VPUModule)  # the MixUp term is added and differentiable through the network
    torch.manual_seed(0)
    loss = mixed.compute_loss(mixed(batch["x"]), batch)
    loss.backward()
    assert mixed.backbone.weight.grad is not None and torch.isfinite(loss)


def test_the_prior_comes_from_the_data_or_must_be_given():
    upu = _module(UPUModule)
    upu._trainer = SimpleNamespace(datamodule=SimpleNamespace(unlabeled_prior=0.3))
    UPUModule.on_fit_start(upu)
    assert upu.prior == 0.3
    lost = _module(NNPUModule)
    lost._trainer = SimpleNamespace(datamodule=SimpleNamespace())
    with pytest.raises(UserError, match="needs method.prior in"):
        NNPUModule.on_fit_start(lost)
    with pytest.raises(UserError, match="binary classifier"):
        UPUModule(
            backbone=torch.nn.Linear(3, 3), num_classes=3, num_train_examples=8, optimizer=torch.optim.SGD
        )


def test_auroc_equals_scikit_learn():
    module = _module(UPUModule, prior=0.5)
    module._trainer = SimpleNamespace(sanity_checking=False, loggers=[])
    batches = [_batch(seed) for seed in (0, 1)]
    for index, batch in enumerate(batches):
        module.validation_step(batch, index)
    module.on_validation_epoch_end()
    with torch.no_grad():
        scores = torch.cat([module.score(module(b["x"])) for b in batches]).numpy()
    labels = torch.cat([b["y_clean"] for b in batches]).numpy()
    assert module.curves["val/auroc"][-1] == pytest.approx(100 * roc_auc_score(labels, scores))
