"""NBPO: the surrogate loss reproduces the official hand-written gradients, BPR/BPO/NBPO losses match hand
computations, the samplers never draw voted items, the ranking evaluation matches a hand count, and every
method runs through the harness, its training a stage shared by the columns of one training, and its Lightning
fit (stage `mf`) resumes after a kill as if uninterrupted."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from common.reproduce import run_overrides
from common.results.paper_spec import load_paper
from common.run import execute
from papers.nbpo import (
    FLIP_RATE_BINS,
    FlipFactorization,
    bpo_loss,
    bpr_loss,
    evaluate_scores,
    flip_diagnostics,
    nbpo_negative_log_likelihood,
    nbpo_surrogate_loss,
    popularity_weights,
    preference_model,
    sample_unvoted,
    train_sampled_mf,
    zero_flip_growth,
)
from tests.conftest import compose


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_bpr_and_bpo_losses_match_hand_computation():
    pos = torch.tensor([1.0, -0.5])
    neg = torch.tensor([[0.0, 2.0], [-1.0, 0.5]])
    bpr = -sum(
        math.log(_sig(p - n))
        for p, row in zip([1.0, -0.5], [[0.0, 2.0], [-1.0, 0.5]], strict=True)
        for n in row
    )
    assert bpr_loss(pos, neg).item() == pytest.approx(bpr, rel=1e-6)
    # BPO counts each voted pair once per sampled unvoted item (two here), as the official loop does.
    bpo = -(
        2 * (math.log(_sig(1.0)) + math.log(_sig(-0.5))) + sum(math.log(1 - _sig(n)) for n in [0, 2, -1, 0.5])
    )
    assert bpo_loss(pos, neg).item() == pytest.approx(bpo, rel=1e-6)


def test_nbpo_likelihood_matches_the_noise_model():
    r_logit, g_logit, rn_logit, gn_logit = 0.7, -1.2, 0.3, 0.4
    r, phi, rn, phin = _sig(r_logit), _sig(g_logit), _sig(rn_logit), _sig(gn_logit)
    # voted: p(z=1)(1 - phi); unvoted: p(z=0) + p(z=1) phi; the voted term once per sample (one here).
    expected = -(math.log(r * (1 - phi)) + math.log((1 - rn) + rn * phin))
    value = nbpo_negative_log_likelihood(
        torch.tensor([r_logit]),
        torch.tensor([g_logit]),
        torch.tensor([[rn_logit]]),
        torch.tensor([[gn_logit]]),
    )
    assert value.item() == pytest.approx(expected, rel=1e-6)


def _official_gradients(U, V, P, Q, users, items, negatives):
    """The ascent directions dU, dV, dP, dQ of the official `_NBPO.py` loop, written pair by pair."""
    s = lambda x: 1.0 / (1.0 + np.exp(-x))
    dU, dV, dP, dQ = (np.zeros_like(M) for M in (U, V, P, Q))
    for u, i, row in zip(users, items, negatives, strict=True):
        Ri, gi = U[u] @ V[i], P[u] @ Q[i]
        for j in row:
            Rj, gj = U[u] @ V[j], P[u] @ Q[j]
            D = s(-gi) * s(-Ri)
            dU[u] += D * V[i]
            dV[i] += D * U[u]
            D = -s(gi) * s(Ri)
            dP[u] += D * Q[i]
            dQ[i] += D * P[u]
            D = s(gj) * s(-Rj) - s(Rj)
            dU[u] += D * V[j]
            dV[j] += D * U[u]
            D = s(-gj) * s(Rj)
            dP[u] += D * Q[j]
            dQ[j] += D * P[u]
    return dU, dV, dP, dQ


def test_surrogate_loss_gradient_equals_the_official_surrogate_gradient():
    rng = np.random.default_rng(0)
    num_users, num_items, dim = 5, 7, 3
    U, V, P, Q = (rng.normal(size=(n, dim)) for n in (num_users, num_items, num_users, num_items))
    users = np.array([0, 0, 2, 4, 1])
    items = np.array([1, 3, 3, 6, 0])
    negatives = rng.integers(num_items, size=(len(users), 4))
    expected = _official_gradients(U, V, P, Q, users, items, negatives)
    tensors = [torch.tensor(M, requires_grad=True) for M in (U, V, P, Q)]
    tU, tV, tP, tQ = tensors
    u, i, j = torch.as_tensor(users), torch.as_tensor(items), torch.as_tensor(negatives)
    pos, neg = (tU[u] * tV[i]).sum(-1), (tU[u].unsqueeze(1) * tV[j]).sum(-1)
    pos_flip, neg_flip = (tP[u] * tQ[i]).sum(-1), (tP[u].unsqueeze(1) * tQ[j]).sum(-1)
    nbpo_surrogate_loss(pos, pos_flip, neg, neg_flip).backward()
    for tensor, ascent in zip(tensors, expected, strict=True):
        # the loss is minimised: its gradient is minus the official ascent direction
        np.testing.assert_allclose(tensor.grad.numpy(), -ascent, rtol=1e-10, atol=1e-12)


def test_surrogate_differs_from_the_exact_likelihood_and_reduces_to_bpo_without_flips():
    gen = torch.Generator().manual_seed(3)
    pos = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    neg = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    pos_flip = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    neg_flip = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    surrogate = torch.autograd.grad(nbpo_surrogate_loss(pos, pos_flip, neg, neg_flip), [pos, neg])
    exact = torch.autograd.grad(nbpo_negative_log_likelihood(pos, pos_flip, neg, neg_flip), [pos, neg])
    assert not torch.allclose(surrogate[1], exact[1])
    # hand form of the surrogate gradient on the unvoted logits: -(phi (1 - r) - r)
    r, phi = torch.sigmoid(neg.detach()), torch.sigmoid(neg_flip.detach())
    torch.testing.assert_close(surrogate[1], -(phi * (1 - r) - r))
    # phi -> 0 (flip logits -> -inf): the gradient on R is BPO's
    never = torch.full_like(neg_flip, -60.0)
    no_flip = torch.autograd.grad(nbpo_surrogate_loss(pos, never[:, 0], neg, never), [pos, neg])
    bpo = torch.autograd.grad(bpo_loss(pos, neg), [pos, neg])
    for a, b in zip(no_flip, bpo, strict=True):
        torch.testing.assert_close(a, b)


def test_losses_reject_bad_shapes():
    with pytest.raises(ValueError):
        bpr_loss(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError):
        nbpo_surrogate_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2, 1), torch.zeros(2, 1))


def test_official_initialisation():
    gen = torch.Generator().manual_seed(0)
    mf = preference_model(20, 30, 16, gen)
    users = mf.users.weight.detach()
    assert float(users.min()) >= 0 and float(users.max()) <= 1 / 4
    flip = FlipFactorization(20, 30, 8, gen)
    P, Q = flip.users.weight.detach(), flip.items.weight.detach()
    assert bool((P >= 0).all()) and bool((Q <= 0).all()) and float(P.max()) <= 5 / math.sqrt(8)
    # P > 0 and Q < 0: every flip logit is negative, flips start improbable (mean logit about -25/4)
    phi = flip.probability_all().detach()
    assert float(phi.max()) < 0.5 and float(phi.mean()) < 0.05


def test_samplers_never_draw_voted_items_and_follow_popularity():
    gen = torch.Generator().manual_seed(0)
    voted = torch.zeros(4, 6, dtype=torch.bool)
    voted[0, :5] = True  # user 0 can only get item 5
    voted[1, [0, 2]] = True
    voted[2, 1] = voted[3, 1] = voted[3, 4] = True
    users = torch.tensor([0, 1, 1, 2, 3] * 200)
    drawn = sample_unvoted(users, voted, 4, gen)
    assert drawn.shape == (1000, 4)
    assert not bool(voted[users.unsqueeze(1), drawn].any())
    assert bool((drawn[users == 0] == 5).all())
    weights = popularity_weights(voted)
    torch.testing.assert_close(weights, torch.tensor([2.0, 3.0, 2.0, 1.0, 2.0, 0.0], dtype=torch.float64))
    # user 2 (voted item 1): popularity draws over items 0, 2, 3, 4 in proportion 2:2:1:2, never item 5
    draws = sample_unvoted(torch.full((20000,), 2), voted, 1, gen, weights).flatten()
    freq = torch.bincount(draws, minlength=6).double() / len(draws)
    torch.testing.assert_close(
        freq, torch.tensor([2 / 7, 0, 2 / 7, 1 / 7, 2 / 7, 0], dtype=torch.float64), atol=0.015, rtol=0
    )


def test_evaluation_matches_a_hand_count():
    class Feedback:
        test_mask = np.array([[True, True, True, False], [True, True, True, True]])
        relevant = np.array([[1, 0, 1, 1], [0, 1, 0, 0]])
        test_relevance = np.where(test_mask, relevant, 0)
        exposed = np.array([[1, 1, 0, 1], [1, 1, 1, 1]])

    scores = torch.tensor([[3.0, 2.0, 1.0, 9.0], [0.1, 0.0, 0.3, 0.2]])
    out = evaluate_scores(scores, Feedback, [2])
    # user 0 ranks candidates 0, 1 (item 3 is not a candidate): 1 hit of 2 liked; user 1 ranks 2, 3: no hit
    f1_user0 = 2 * 0.5 * 0.5 / (0.5 + 0.5)
    assert out["test/f1@2"] == pytest.approx(f1_user0 / 2)
    assert out["test/ndcg@2"] == pytest.approx((1.0 / (1 + 1 / math.log2(3))) / 2)
    # observed votes: user 0 voted only item 0 among candidates (item 2 unexposed) -> F1 = 2 * .5 * 1 / 1.5
    assert out["test/observed/f1@2"] == pytest.approx((2 * 0.5 * 1.0 / 1.5 + 0.0) / 2)


def test_training_improves_on_random_scores():
    from common.data.feedback import make_implicit_feedback

    feedback = make_implicit_feedback(60, 50, seed=0, rank=3, zipf_exponent=0.5, exposure_power=0.5)
    random_scores = torch.randn(60, 50, generator=torch.Generator().manual_seed(0))
    baseline = evaluate_scores(random_scores, feedback, [5])["test/ndcg@5"]
    for objective in ("bpr", "bpo", "nbpo"):
        metrics, curves = train_sampled_mf(
            feedback,
            objective=objective,
            dim=8,
            flip_dim=4,
            epochs=20,
            batch_size=256,
            ks=(5,),
            eval_every=10,
        )
        assert metrics["test/ndcg@5"] > baseline + 0.05, objective
        assert len(curves["test/ndcg@5"]) == 2
    assert 0.0 <= metrics["flip/voted_mean"] <= 1.0


def test_loss_curve_is_the_mean_epoch_loss_of_each_evaluation_window():
    from common.data.feedback import make_implicit_feedback

    feedback = make_implicit_feedback(40, 30, seed=1, rank=3, zipf_exponent=0.5, exposure_power=0.5)
    options = dict(objective="bpr", dim=4, epochs=3, batch_size=64, ks=(5,))
    _, every_epoch = train_sampled_mf(feedback, eval_every=1, **options)
    _, windows = train_sampled_mf(feedback, eval_every=2, **options)  # windows of 2 epochs, then 1
    per_epoch = every_epoch["train/loss"]
    assert windows["train/loss"] == pytest.approx([(per_epoch[0] + per_epoch[1]) / 2, per_epoch[2]], rel=1e-6)


def _tiny_run_overrides(row: str, output_root: Path) -> list[str]:
    spec = load_paper("nbpo")
    overrides = run_overrides(spec, spec.tables["top_k"], row, "NDCG@5", 0, "mini")
    tiny = ["data.num_users=40", "data.num_items=30", "data.test_items_per_user=10", "data.batch_size=64",
            "trainer.max_epochs=3", "protocol.eval_every=1", "runtime.progress=false", "logger=none",
            f"runtime.output_root={output_root}"]  # fmt: skip
    return [*overrides, *tiny]


def _stored_trainings(output_root: Path) -> dict[Path, int]:
    """The stored training stages of the nbpo runs under `output_root`, with their modification times."""
    results = (output_root / "stages" / "nbpo" / "training").glob("*/result.pt")
    return {path: path.stat().st_mtime_ns for path in results}


@pytest.mark.parametrize("row", ["BPR", "WBPR (popularity sampler)", "BPO", "NBPO"])
def test_rows_run_through_the_harness(row: str, output_root: Path):
    overrides = _tiny_run_overrides(row, output_root)
    record = execute(compose(overrides))
    assert record.complete, record.reason
    assert record.metrics["value"] == record.metrics["test/ndcg@5"]
    assert len(record.curves["test/ndcg@5"]) == 3
    stored = _stored_trainings(output_root)
    assert len(stored) == 1
    # another column of the same training reuses the stored training stage and reports another metric
    again = execute(compose([*overrides, "protocol.report=test/f1@20", "runtime.force=true"]))
    assert again.metrics["value"] == record.metrics["test/f1@20"]
    assert again.curves == record.curves
    assert _stored_trainings(output_root) == stored  # neither retrained nor rewritten


def test_the_training_stage_is_keyed_by_what_the_run_trains(output_root: Path):
    overrides = _tiny_run_overrides("BPR", output_root)
    first = execute(compose(overrides))
    reseeded = execute(compose([*overrides, "seed=1"]))
    longer = execute(compose([*overrides, "trainer.max_epochs=4"]))
    assert len(_stored_trainings(output_root)) == 3
    assert reseeded.metrics != first.metrics and len(longer.curves["test/ndcg@5"]) == 4


def test_a_pipeline_without_stages_trains_directly(output_root: Path):
    """Called outside the runner (no `context.stages`), a pipeline trains and fills the curves itself."""
    from omegaconf import OmegaConf

    from common.experiment import build_datamodule, build_trainer
    from common.lit import RunContext
    from common.registry import lookup

    cfg = compose(_tiny_run_overrides("NBPO", output_root))
    record = execute(cfg)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    make_trainer = lambda **kw: build_trainer(cfg, checkpoint=False, **kw)  # noqa: E731
    context = RunContext(cfg=cfg, datamodule=datamodule, make_module=None, make_trainer=make_trainer)
    params = {key: value for key, value in OmegaConf.to_container(cfg.method).items() if key != "name"}
    metrics = lookup("method", cfg.method.name)(**params).run(context)
    assert metrics == record.metrics and context.curves == record.curves


def _stored_fits(output_root: Path) -> list[Path]:
    return sorted((output_root / "stages" / "nbpo" / "mf").glob("*/result.pt"))


def test_the_fit_stage_resumes_after_a_kill_and_is_reused_as_if_uninterrupted(tmp_path: Path, monkeypatch):
    """A run killed at the end of the second epoch of its `mf` stage resumes from the stage's last
    checkpoint (the end of the first epoch: weights, the module's generator, the loss window, the curves)
    and ends with the metrics and curves of an uninterrupted run, bit for bit; a rerun whose training stage
    is gone reads the stored fit back, again bit for bit."""
    from papers.nbpo.pipeline import SampledMF

    overrides = _tiny_run_overrides("NBPO", tmp_path / "whole")
    whole = execute(compose(overrides))
    assert whole.complete and whole.extra["stages_computed"] == ["mf", "training"]
    end_of_epoch = SampledMF.on_train_epoch_end

    def killed_in_epoch_1(self):
        end_of_epoch(self)
        if self.current_epoch == 1:
            raise RuntimeError("killed")

    monkeypatch.setattr(SampledMF, "on_train_epoch_end", killed_in_epoch_1)
    killed_overrides = _tiny_run_overrides("NBPO", tmp_path / "killed")
    killed = execute(compose(killed_overrides))
    assert not killed.complete and list(
        (tmp_path / "killed" / "stages").glob("nbpo/mf/*/checkpoints/last.ckpt")
    )
    monkeypatch.setattr(SampledMF, "on_train_epoch_end", end_of_epoch)
    resumed = execute(compose(killed_overrides))
    assert resumed.complete and resumed.extra["stages_computed"] == ["mf", "training"]
    assert resumed.metrics == whole.metrics and resumed.curves == whole.curves
    assert len(whole.curves["test/ndcg@5"]) == 3
    assert not list((tmp_path / "killed" / "stages").glob("nbpo/mf/*/checkpoints"))  # removed once stored

    # a rerun without the training stage (metrics) rebuilds the module from the stored fit: no training
    (fit,) = _stored_fits(tmp_path / "whole")
    fit_written = fit.stat().st_mtime_ns
    for stored in (tmp_path / "whole" / "stages" / "nbpo" / "training").glob("*/result.pt"):
        stored.unlink()
    rerun = execute(compose([*overrides, "runtime.force=true"]))
    assert rerun.extra["stages_computed"] == ["training"] and rerun.extra["stages_reused"] == ["mf"]
    assert rerun.metrics == whole.metrics and rerun.curves == whole.curves
    assert fit.stat().st_mtime_ns == fit_written


def test_the_lightning_fit_matches_the_former_hand_written_loop():
    """`SampledMF` under a Trainer takes the steps of the former loop (kept here as the reference): sample,
    forward, zero_grad, backward, SGD step, lr x lr_decay before each epoch; same numbers, bit for bit."""
    from common.data.feedback import make_implicit_feedback
    from papers.nbpo.pipeline import _pair_logits

    feedback = make_implicit_feedback(40, 30, seed=2, rank=3, zipf_exponent=0.5, exposure_power=0.5)
    options = dict(dim=4, flip_dim=3, epochs=3, batch_size=64, lr=0.05, seed=5)
    for objective, sampler, shuffle in (("nbpo", "uniform", True), ("bpr", "popularity", False)):
        gen = torch.Generator().manual_seed(options["seed"])
        voted = torch.as_tensor(feedback.clicks > 0)
        pair_users, pair_items = voted.nonzero(as_tuple=True)
        model = preference_model(40, 30, options["dim"], gen)
        groups = [{"params": list(model.parameters()), "weight_decay": 1.0}]
        flip = FlipFactorization(40, 30, options["flip_dim"], gen) if objective == "nbpo" else None
        if flip is not None:
            groups.append({"params": list(flip.parameters()), "weight_decay": 5.0})
        optimizer = torch.optim.SGD(groups, lr=options["lr"])
        weights = popularity_weights(voted) if sampler == "popularity" else None
        rate = options["lr"]
        for _ in range(options["epochs"]):
            rate *= 0.99
            for group in optimizer.param_groups:
                group["lr"] = rate
            order = (
                torch.randperm(len(pair_users), generator=gen) if shuffle else torch.arange(len(pair_users))
            )
            for start in range(0, len(pair_users), options["batch_size"]):
                index = order[start : start + options["batch_size"]]
                users, items = pair_users[index], pair_items[index]
                negatives = sample_unvoted(users, voted, 4, gen, weights)
                pos, neg = _pair_logits(model.users, model.items, users, items, negatives)
                if flip is None:
                    loss = bpr_loss(pos, neg)
                else:
                    pos_flip, neg_flip = _pair_logits(flip.users, flip.items, users, items, negatives)
                    loss = nbpo_surrogate_loss(pos, pos_flip, neg, neg_flip)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        expected = evaluate_scores(model.score_all().detach(), feedback, [5])
        metrics, _ = train_sampled_mf(
            feedback, objective=objective, sampler=sampler, shuffle=shuffle, ks=(5,), **options
        )
        assert {k: metrics[k] for k in expected} == expected, objective


def test_flip_diagnostics_against_the_simulated_flip_rates():
    from common.data.feedback import make_implicit_feedback

    feedback = make_implicit_feedback(30, 40, seed=2, rank=3, zipf_exponent=0.5, exposure_power=0.5)
    true_flip = 1.0 - feedback.exposure[0]
    exact = flip_diagnostics(np.tile(true_flip, (30, 1)), feedback)
    assert exact["flip/mae_true_flip_rate"] == pytest.approx(0.0, abs=1e-12)
    assert exact["flip/item_corr_true_flip_rate"] == pytest.approx(1.0)
    rates = [exact[f"flip/true_rate_q{k}"] for k in range(1, FLIP_RATE_BINS + 1)]
    assert rates == sorted(rates)
    for k in range(1, FLIP_RATE_BINS + 1):
        assert exact[f"flip/learnt_rate_q{k}"] == pytest.approx(exact[f"flip/true_rate_q{k}"])
    collapsed = flip_diagnostics(np.full((30, 40), 0.5), feedback)
    assert collapsed["flip/item_corr_true_flip_rate"] == 0.0
    train = ~feedback.test_mask
    expected = np.abs(0.5 - np.broadcast_to(true_flip, (30, 40)))[train].mean()
    assert collapsed["flip/mae_true_flip_rate"] == pytest.approx(expected)


def test_zero_flip_growth_is_the_decay_without_gradient_and_grows_without_decay():
    voted = torch.zeros(6, 5, dtype=torch.bool)
    voted[torch.arange(6), torch.arange(6) % 5] = True
    batches = list(torch.split(voted.nonzero(as_tuple=True)[0], 2))
    # r = 0: no flip gradient, only the per-step L2 shrinks P and Q: (1 - lr lambda)^steps
    none = zero_flip_growth(torch.zeros(6, 5), voted, batches, samples=4, lr=0.1, flip_weight_decay=2.0)
    assert none == pytest.approx(0.8**3)
    strong_decay = zero_flip_growth(torch.full((6, 5), 0.5), voted, batches, 4, lr=0.1, flip_weight_decay=9.0)
    no_decay = zero_flip_growth(torch.full((6, 5), 0.5), voted, batches, 4, lr=0.1, flip_weight_decay=0.0)
    assert strong_decay < 1.0 < no_decay
