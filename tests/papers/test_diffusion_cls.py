"""Diffusion-feature classification (diffusion_cls): the forward process, block hooks, heads, and a tiny run
through the harness."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from omegaconf import OmegaConf

from common.run import execute
from papers.diffusion_cls.headroom import headroom, mini_data_config
from papers.diffusion_cls.heads import HeadFit, build_head, head_accuracy, head_loader
from papers.diffusion_cls.unet import build_scheduler, noised_block_features, prepare_inputs, resolve_block
from tests.conftest import REPO_ROOT, compose

TINY_UNET = dict(
    sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
)  # fmt: skip


def test_forward_process_matches_the_closed_form():
    # Linear betas 1e-4..0.02 over T = 1000 (guided-diffusion --noise_schedule linear), computed by hand.
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"
    )
    t = 90
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(t + 1)]
    alpha_bar = math.prod(1 - b for b in betas)
    x0, eps = torch.full((1, 1, 2, 2), 0.5), torch.full((1, 1, 2, 2), -1.0)
    x_t = scheduler.add_noise(x0, eps, torch.tensor([t]))
    expected = math.sqrt(alpha_bar) * 0.5 - math.sqrt(1 - alpha_bar)
    assert torch.allclose(x_t, torch.full_like(x_t, expected), atol=1e-5)
    assert 0.90 < math.sqrt(alpha_bar) < 0.97  # t = 90 keeps most of the signal


def test_large_t_keeps_almost_no_signal():
    """The former claim "t = 900 loses signal" as a property of the forward process: with the mini model's
    linear schedule (T = 1000) x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps keeps sqrt(abar_t) of the image,
    about 0.95, 0.72, 0.28 and 0.02 at t = 90, 250, 500, 900 (the t_block table's notes), so two different
    images noised with the same eps at t = 900 differ by about 2% of their difference."""
    paper_conf = REPO_ROOT / "conf/papers/diffusion_cls"
    model = OmegaConf.to_container(OmegaConf.load(paper_conf / "model/diffusion_cls_unet_mini.yaml"))
    scheduler = build_scheduler(model)
    signal = scheduler.alphas_cumprod.sqrt()
    for t, expected in ((90, 0.95), (250, 0.72), (500, 0.28), (900, 0.02)):
        assert abs(float(signal[t]) - expected) < 0.01, t
    zeros, ones = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    eps = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([900])
    gap = scheduler.add_noise(ones, eps, t) - scheduler.add_noise(zeros, eps, t)
    assert gap.abs().max().item() < 0.05
    # best_feature's accuracy drop at large t is taken at the grid's largest t, 0.9 T (the catalog's t = 90
    # of T = 100).
    best_feature = OmegaConf.load(paper_conf / "best_feature.yaml")
    assert max(best_feature.method.select.timesteps) == 0.9 * model["scheduler"]["num_train_timesteps"]


def test_block_paths_and_pooled_hook_outputs():
    torch.manual_seed(0)
    unet = UNet2DModel(**TINY_UNET).eval()
    assert resolve_block(unet, "up_blocks.-1") is unet.up_blocks[1]
    assert resolve_block(unet, "mid_block") is unet.mid_block
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    x = prepare_inputs(torch.rand(5, 1, 4, 4), 8, 2.0, -1.0)
    assert x.shape == (5, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    blocks = ["down_blocks.0", "mid_block", "up_blocks.-1"]
    feats = noised_block_features(unet, scheduler, [x[:3], x[3:]], timestep=90, blocks=blocks, pool_size=2,
                                  generator=torch.Generator().manual_seed(1))  # fmt: skip
    # down_blocks.0 (8 channels) downsamples 8x8 -> 4x4; the middle block works at 4x4 with 16 channels
    assert feats["down_blocks.0"].shape == (5, 8, 2, 2)
    assert feats["mid_block"].shape == (5, 16, 2, 2)
    assert feats["up_blocks.-1"].shape == (5, 8, 2, 2)
    # Same as a manual forward with the same noise and an explicit average pool of the hooked block.
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    steps = torch.full((5,), 90)
    captured = {}
    handle = unet.mid_block.register_forward_hook(lambda m, i, o: captured.setdefault("mid", o))
    with torch.no_grad():
        unet(scheduler.add_noise(x, noise, steps), steps)
    handle.remove()
    manual = torch.nn.functional.avg_pool2d(captured["mid"], 2)
    assert torch.allclose(feats["mid_block"], manual, atol=1e-5)


def test_heads_shapes_and_gradients_match_autograd_of_a_plain_linear_model():
    torch.manual_seed(0)
    x, y = torch.randn(12, 4, 2, 2), torch.randint(0, 3, (12,))
    for kind, params in (("linear", {}), ("mlp", {"hidden": 8}), ("cnn", {"hidden": 8}),
                         ("attention", {"dim": 8, "num_heads": 2, "mlp_ratio": 2, "depth": 1})):  # fmt: skip
        assert build_head(kind, (4, 2, 2), 3, **params)(x).shape == (12, 3)
    head = build_head("linear", (4, 2, 2), 3)
    loss = torch.nn.functional.cross_entropy(head(x), y)
    loss.backward()
    weight, bias = head[1].weight.detach(), head[1].bias.detach()
    probs = torch.softmax(x.flatten(1) @ weight.T + bias, dim=1)
    grad_logits = (probs - torch.nn.functional.one_hot(y, 3)) / len(y)  # d CE / d logits, batch mean
    assert torch.allclose(head[1].weight.grad, grad_logits.T @ x.flatten(1), atol=1e-6)
    assert torch.allclose(head[1].bias.grad, grad_logits.sum(0), atol=1e-6)


def _reference_loop(head, features, labels, *, epochs, batch_size, optimizer, lr, lr_step=None, lr_gamma=0.1,
                    seed=0):  # fmt: skip
    """The hand-written loop `HeadFit` replaced (heads.py before the conversion), kept to pin it bitwise."""
    opt_class = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
    opt = opt_class(head.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.StepLR(opt, lr_step, lr_gamma) if lr_step else None
    generator = torch.Generator().manual_seed(int(seed))
    head.train()
    for _ in range(int(epochs)):
        for batch in torch.randperm(len(features), generator=generator).split(int(batch_size)):
            loss = torch.nn.functional.cross_entropy(head(features[batch]), labels[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if schedule is not None:
            schedule.step()
    return head.eval()


def _lightning_fit(head, features, labels, *, seed=0, **training):
    module = HeadFit(head, **training)
    trainer = L.Trainer(
        max_epochs=training["epochs"], accelerator="cpu", logger=False, limit_val_batches=0,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(
        module, train_dataloaders=head_loader(features, labels, batch_size=training["batch_size"], seed=seed)
    )
    return module.model.eval()


def test_head_fit_is_bitwise_the_former_loop_and_separates_separable_features():
    torch.manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.nn.functional.one_hot(y, 3).float().view(60, 3, 1, 1) * 4 + 0.1 * torch.randn(60, 3, 1, 1)
    for training in (dict(epochs=30, batch_size=16, optimizer="sgd", lr=0.5, lr_step=10, lr_gamma=0.5),
                     dict(epochs=5, batch_size=16, optimizer="adam", lr=1e-2)):  # fmt: skip
        heads = []
        for fit in (_reference_loop, _lightning_fit):
            torch.manual_seed(1)
            heads.append(fit(build_head("linear", (3, 1, 1), 3), x, y, seed=7, **training))
        loop, lit = (head.state_dict() for head in heads)
        assert all(torch.equal(loop[k], lit[k]) for k in loop)
        if training["optimizer"] == "sgd":
            assert head_accuracy(heads[1], x, y) == 100.0


# The mini tables' generated images, fewer of them: the harness tests check stages and plumbing, not accuracy.
SMALL_DATA = ["data.source_kwargs.num_samples=200"]


def _stage_results(output_root: Path, name: str) -> dict[Path, int]:
    """The stored results of stage `name` (one folder per key), with their modification times."""
    results = (output_root / "stages" / "diffusion_cls" / name).glob("*/result.pt")
    return {path: path.stat().st_mtime_ns for path in results}


def test_runs_through_the_harness_with_ddpm_stage_and_selection(output_root: Path):
    common = ["scale=mini", *SMALL_DATA, "model.ddpm_training.steps=3", "method.head_training.epochs=2",
              "runtime.progress=false", "logger=none", f"runtime.output_root={output_root}"]  # fmt: skip
    t_block = ["experiment=diffusion_cls/t_block", "method.timestep=90", *common]
    record = execute(compose(t_block))
    assert record.complete, record.reason
    assert 0 <= record.metrics["test/acc"] <= 100 and record.metrics["feature_dim"] == 32 * 4
    assert record.extra["unet_weights"] == "trained" and len(record.curves["ddpm/loss"]) == 3
    ddpm, features = _stage_results(output_root, "ddpm"), _stage_results(output_root, "diffusion_features")
    assert len(ddpm) == 1
    assert len(features) == 6  # one forward pass at t = 90 stores every block of method.cache_blocks
    # Another block of the same row: the DDPM (with its loss curve) and the features are reused.
    mid = execute(compose([*t_block, "method.block=mid_block", "cell.column=mid"]))
    assert mid.complete, mid.reason
    assert mid.curves["ddpm/loss"] == record.curves["ddpm/loss"]
    assert _stage_results(output_root, "ddpm") == ddpm
    assert _stage_results(output_root, "diffusion_features") == features
    # Another seed is another DDPM.
    other_seed = execute(compose([*t_block, "seed=1"]))
    assert other_seed.complete, other_seed.reason
    assert len(_stage_results(output_root, "ddpm")) == 2
    selected = execute(compose(["experiment=diffusion_cls/best_feature", "method.weights=random_init",
                                "method.select.timesteps=[10,900]", "method.select.blocks=[mid_block]",
                                *common]))  # fmt: skip
    assert selected.complete, selected.reason
    assert selected.metrics["selected/timestep"] in (10.0, 900.0)
    drop = selected.metrics["test/acc"] - selected.metrics["test/acc_at_largest_t"]  # t = 900, same block
    assert selected.metrics["test/acc_drop_at_largest_t"] == drop
    assert selected.extra["unet_weights"] == "random"
    # Random-init features are their own stages (t = 10 and 900 of one block); no DDPM is trained for them.
    assert len(_stage_results(output_root, "diffusion_features")) == 6 + 6 + 2
    assert len(_stage_results(output_root, "ddpm")) == 2


def test_head_stage_resumes_after_a_kill_and_a_rerun_reuses_it(
    output_root: Path, monkeypatch: pytest.MonkeyPatch
):
    """A run killed after the first epoch of its `diffusion_head` stage resumes it from the stage's checkpoint
    and ends with the metrics of an uninterrupted run; a forced rerun reuses every stage, with equal
    metrics."""
    overrides = ["experiment=diffusion_cls/t_block", "scale=mini", *SMALL_DATA, "model.ddpm_training.steps=2",
                 "method.head_training.epochs=3", "method.cache_blocks=[]", "runtime.progress=false",
                 "logger=none"]  # fmt: skip
    whole = execute(compose([*overrides, f"runtime.output_root={output_root / 'whole'}"]))
    assert whole.complete, whole.reason
    assert whole.extra["stages_computed"] == ["ddpm", "diffusion_features", "diffusion_head"]
    end_of_epoch = HeadFit.on_train_epoch_end

    def killed_in_epoch_1(self):
        end_of_epoch(self)
        if self.current_epoch == 1:
            raise RuntimeError("killed")

    killed_root = output_root / "killed"
    monkeypatch.setattr(HeadFit, "on_train_epoch_end", killed_in_epoch_1)
    killed = execute(compose([*overrides, f"runtime.output_root={killed_root}"]))
    assert not killed.complete
    assert list((killed_root / "stages").glob("diffusion_cls/diffusion_head/*/checkpoints/last.ckpt"))
    monkeypatch.setattr(HeadFit, "on_train_epoch_end", end_of_epoch)
    resumed = execute(compose([*overrides, f"runtime.output_root={killed_root}"]))
    assert resumed.extra["stages_computed"] == ["diffusion_head"]
    assert resumed.metrics == whole.metrics
    again = execute(compose([*overrides, f"runtime.output_root={killed_root}", "runtime.force=true"]))
    assert again.extra["stages_computed"] == []
    assert again.extra["stages_reused"] == ["ddpm", "diffusion_features", "diffusion_head"]
    assert again.metrics == whole.metrics


def test_headroom_check_reads_the_mini_data_and_trains_both_references():
    data = mini_data_config(SMALL_DATA)
    assert data["source"] == "shapes" and data["source_kwargs"]["image_size"] == 16
    result = headroom(data, seeds=[0], epochs=1)
    assert result["num_train"] + result["num_test"] == 200
    for key in ("linear_pixels", "small_cnn"):
        assert len(result[key]) == 1 and 0 <= result[f"{key}_mean"] <= 100
