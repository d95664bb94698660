"""Rel-MF: the inverse-propensity pointwise loss (hand-computed values, unbiasedness, gradients), the
batch sampler, and a tiny run of each method through the harness, its training a stage shared by the cells of
one training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.reproduce import run_overrides
from common.results.paper_spec import load_paper
from common.run import execute
from papers.rel_mf import PairBatchSampler, RelMF, rel_mf_loss, relevance_log_loss
from tests.conftest import compose, context_without_stages


def test_squared_loss_matches_hand_computation():
    logits = torch.tensor([0.0, 0.0, 0.0])  # p = 0.5 everywhere: l+ = l- = 0.25
    clicks = torch.tensor([1.0, 1.0, 0.0])
    theta = torch.tensor([0.5, 0.25, 0.1])
    # weights Y/theta = 2, 4, 0 -> per pair 2*.25 + (1-2)*.25 = .25, 4*.25 - 3*.25 = .25, 0 + 1*.25 = .25
    assert rel_mf_loss(logits, clicks, theta).item() == pytest.approx(0.25)
    # clipping theta at 0.5: weights 2, 2 -> still .25 each (l+ = l-); use p != 0.5 to see the clip
    logits = torch.tensor([1.0, 1.0, -1.0])
    p = torch.sigmoid(logits)
    lpos, lneg = (1 - p) ** 2, p**2
    expected_unclipped = (2 * lpos[0] - lneg[0] + 4 * lpos[1] - 3 * lneg[1] + lneg[2]) / 3
    expected_clipped = (2 * lpos[0] - lneg[0] + 2 * lpos[1] - lneg[1] + lneg[2]) / 3
    assert rel_mf_loss(logits, clicks, theta).item() == pytest.approx(expected_unclipped.item())
    assert rel_mf_loss(logits, clicks, theta, clip=0.5).item() == pytest.approx(expected_clipped.item())


def test_naive_and_weighted_losses_match_the_official_normaliser():
    logits = torch.tensor([0.3, -0.2, 1.1, -0.7])
    clicks = torch.tensor([1.0, 0.0, 1.0, 0.0])
    p = torch.sigmoid(logits)
    naive = ((clicks * (1 - p) ** 2 + (1 - clicks) * p**2).sum() / 4).item()
    assert rel_mf_loss(logits, clicks).item() == pytest.approx(naive)
    w = 0.5  # official WMF: sum(Y (1-p)^2 + w (1-Y) p^2) / sum(Y + w (1-Y))
    wmf = ((clicks * (1 - p) ** 2 + w * (1 - clicks) * p**2).sum() / (clicks + w * (1 - clicks)).sum()).item()
    assert rel_mf_loss(logits, clicks, negative_weight=w).item() == pytest.approx(wmf)
    log = -(clicks * torch.log(p) + (1 - clicks) * torch.log(1 - p)).mean().item()
    assert rel_mf_loss(logits, clicks, kind="log").item() == pytest.approx(log, rel=1e-6)


def test_estimator_is_unbiased_for_the_ideal_loss():
    """E_O[ L_IPS ] = sum [gamma l+ + (1 - gamma) l-] when Y = O R with O ~ Bern(theta): Monte Carlo check."""
    gen = torch.Generator().manual_seed(0)
    n = 400
    logits = 2.0 + torch.randn(n, generator=gen)  # p ~ 0.9: l- >> l+, so naive's bias shows
    gamma = torch.rand(n, generator=gen)
    theta = 0.05 + 0.95 * torch.rand(n, generator=gen)
    p = torch.sigmoid(logits)
    ideal = (gamma * (1 - p) ** 2 + (1 - gamma) * p**2).mean().item()
    draws, naive = [], []
    for _ in range(1500):
        clicks = ((torch.rand(n, generator=gen) < theta) & (torch.rand(n, generator=gen) < gamma)).float()
        draws.append(rel_mf_loss(logits, clicks, theta).item())
        naive.append(rel_mf_loss(logits, clicks).item())
    assert np.mean(draws) == pytest.approx(ideal, abs=3 * np.std(draws) / np.sqrt(len(draws)) + 1e-4)
    assert abs(np.mean(naive) - ideal) > 0.02  # theta = 1 is biased under this exposure


def test_gradient_matches_an_independent_implementation():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(64, generator=gen, dtype=torch.float64, requires_grad=True)
    clicks = (torch.rand(64, generator=gen) < 0.3).double()
    theta = (0.02 + torch.rand(64, generator=gen)).clamp(max=1).double()
    clip = 0.1
    rel_mf_loss(logits, clicks, theta, clip=clip).backward()
    # d/dz of w (1-s)^2 + (1-w) s^2 with s = sigmoid(z): [-2 w (1-s) + 2 (1-w) s] s (1-s), over N
    s = torch.sigmoid(logits.detach())
    w = clicks / theta.clamp(min=clip)
    manual = (-2 * w * (1 - s) + 2 * (1 - w) * s) * s * (1 - s) / len(s)
    torch.testing.assert_close(logits.grad, manual)


def test_loss_rejects_an_infinite_weight():
    with pytest.raises(ValueError, match="propensity 0"):
        rel_mf_loss(torch.zeros(2), torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.5]))
    assert torch.isfinite(rel_mf_loss(torch.zeros(2), torch.tensor([1.0, 0.0]), torch.zeros(2), clip=0.1))


def test_balanced_sampler_draws_half_clicked_pairs():
    clicks = torch.zeros(1000)
    clicks[:50] = 1
    sampler = PairBatchSampler(clicks, 64, 5, balanced=True, generator=torch.Generator().manual_seed(0))
    batches = list(sampler)
    assert len(batches) == 5 and all(len(b) == 64 for b in batches)
    assert all(int(clicks[b].sum()) == 32 for b in batches)
    uniform = PairBatchSampler(clicks, 64, 3, balanced=False, generator=torch.Generator().manual_seed(0))
    assert all(len(b) == 64 and int(b.max()) < 1000 for b in uniform)


def test_relmf_module_reads_the_chosen_propensity():
    evaluation = {"candidates": torch.ones(3, 4, dtype=torch.bool), "relevance": torch.zeros(3, 4)}
    batch = {"propensity": torch.tensor([0.2]), "propensity_estimated": torch.tensor([0.7])}
    true = RelMF(3, 4, evaluation, propensity="exposure")
    estimated = RelMF(3, 4, evaluation, propensity="popularity")
    assert true.propensity(batch).item() == pytest.approx(0.2)
    assert estimated.propensity(batch).item() == pytest.approx(0.7)
    with pytest.raises(ValueError):
        RelMF(3, 4, evaluation, propensity="true")


def test_relevance_log_loss():
    scores = torch.tensor([[0.0, 2.0], [-1.0, 0.0]], dtype=torch.float64)
    candidates = torch.tensor([[True, True], [True, False]])
    relevance = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = -(np.log(0.5) + np.log(1 - 1 / (1 + np.exp(-2.0))) + np.log(1 - 1 / (1 + np.exp(1.0)))) / 3
    assert relevance_log_loss(scores, candidates, relevance) == pytest.approx(expected)


def _tiny_run_overrides(table: str, row: str, output_root: Path) -> list[str]:
    spec = load_paper("rel_mf")
    overrides = run_overrides(spec, spec.tables[table], row, list(spec.tables[table].columns)[1], 0, "mini")
    tiny = ["data.num_users=60", "data.num_items=30", "data.batch_size=64", "protocol.steps_per_epoch=3",
            "trainer.max_epochs=2", "runtime.progress=false", "logger=none",
            f"runtime.output_root={output_root}"]  # fmt: skip
    return [*overrides, *tiny]


def _stored_trainings(output_root: Path) -> dict[Path, int]:
    """The stored training stages of the rel_mf runs under `output_root`, with their modification times."""
    results = (output_root / "stages" / "rel_mf" / "training").glob("*/result.pt")
    return {path: path.stat().st_mtime_ns for path in results}


@pytest.mark.parametrize(
    ("table", "row"),
    [("semi_synthetic", "Oracle"), ("semi_synthetic", "Naive MF"), ("yahoo_r3_all", "WMF"),
     ("yahoo_r3_all", "CRMF (est. theta)")],
)  # fmt: skip
def test_rows_run_through_the_harness(table: str, row: str, output_root: Path):
    overrides = _tiny_run_overrides(table, row, output_root)
    cfg = compose(overrides)
    record = execute(cfg)
    assert record.complete, record.reason
    assert record.metrics["train/steps"] == 6
    assert len(record.curves["test/dcg@5"]) == 2
    assert record.metrics["value"] == record.metrics[cfg.protocol.report]
    stored = _stored_trainings(output_root)
    assert len(stored) == 1
    # A second cell of the same training reuses the stored training stage and reports another metric.
    again = execute(compose([*overrides, "protocol.report=test/recall@3", "runtime.force=true"]))
    assert again.metrics["value"] == record.metrics["test/recall@3"]
    assert again.metrics["test/dcg@5"] == record.metrics["test/dcg@5"] and again.curves == record.curves
    assert _stored_trainings(output_root) == stored  # neither retrained nor rewritten


def test_the_training_stage_is_keyed_by_what_the_run_trains(output_root: Path):
    overrides = _tiny_run_overrides("semi_synthetic", "Naive MF", output_root)
    first = execute(compose(overrides))
    reseeded = execute(compose([*overrides, "seed=1"]))
    longer = execute(compose([*overrides, "trainer.max_epochs=3"]))
    assert len(_stored_trainings(output_root)) == 3
    assert reseeded.metrics != first.metrics and longer.metrics["train/steps"] == 9


def test_a_pipeline_without_stages_trains_directly(output_root: Path):
    """Called outside the runner (no `context.stages`), a pipeline trains and fills the curves itself."""
    import lightning as L
    from omegaconf import OmegaConf

    from common.registry import lookup

    cfg = compose(_tiny_run_overrides("semi_synthetic", "Rel-MF (true theta)", output_root))
    record = execute(cfg)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)  # as the runner does before the data
    context = context_without_stages(cfg, output_root / "direct")
    params = {key: value for key, value in OmegaConf.to_container(cfg.method).items() if key != "name"}
    metrics = lookup("method", cfg.method.name)(**params).run(context)
    assert metrics == record.metrics and context.curves == record.curves
