"""Development diagnostic of NBPO's flip model (issue 15): how P Q^T evolves over the first epochs.

`python -m papers.nbpo.collapse_trace --out results/nbpo/dev/collapse_trace.md [--amazon-dir DIR]` trains
`SampledMF` (objective nbpo) for a few epochs with the official Amazon and MovieLens hyper-parameters (and the
Amazon ones with lambda_phi = 1) on the mini data at p = 0.3 (dev seed 0) and, when `--amazon-dir` holds the
official repository's `dataset/amazon/train_data.json` (Wenhui-Yu/NBPO @d2187a1; not shipped here), on those
votes at the official shapes (K0 = K1 = 50, batch 5000). After every epoch it records the mean phi on voted
and unvoted pairs, the mean |G|, the norms of P and Q and `zero_flip_growth` (the epoch growth of the flip
factors linearised at G = 0). Not part of any table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import torch

from common.data.feedback import make_implicit_feedback
from papers.nbpo.pipeline import SampledMF, zero_flip_growth

SETTINGS = {
    "Amazon (eta 0.05, lambda_r 1, lambda_phi 5)": {
        "lr": 0.05,
        "weight_decay": 1.0,
        "flip_weight_decay": 5.0,
    },
    "MovieLens (eta 0.02, lambda_r 0.5, lambda_phi 1)": {
        "lr": 0.02,
        "weight_decay": 0.5,
        "flip_weight_decay": 1.0,
    },
    "Amazon with lambda_phi 1": {"lr": 0.05, "weight_decay": 1.0, "flip_weight_decay": 1.0},
}


class _Traced(SampledMF):
    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        with torch.no_grad():
            logits = self.flip.users.weight @ self.flip.items.weight.T
            phi = torch.sigmoid(logits).numpy()
            growth = zero_flip_growth(
                torch.sigmoid(self.model.score_all()), self.voted, self.batch_users(), self.samples,
                self.lr * self.lr_decay ** (self.current_epoch + 1), self.flip_weight_decay,
            )  # fmt: skip
        voted = np.asarray(self.feedback.clicks) > 0
        self.trace.append(
            (self.current_epoch + 1, float(phi[voted].mean()), float(phi[~voted].mean()),
             float(np.abs(logits.numpy()).mean()), float(self.flip.users.weight.norm()),
             float(self.flip.items.weight.norm()), growth)
        )  # fmt: skip


def _amazon(directory: Path) -> SimpleNamespace:
    rows = json.loads((directory / "train_data.json").read_text().splitlines()[0])
    items = 1 + max(max(r) for r in rows if r)
    clicks = np.zeros((len(rows), items), dtype=np.int8)
    for user, voted in enumerate(rows):
        clicks[user, voted] = 1
    return SimpleNamespace(clicks=clicks, test_mask=np.zeros_like(clicks, dtype=bool))


def trace(feedback, epochs: int, **options) -> list[tuple]:
    torch.set_num_threads(1)
    module = _Traced(feedback, objective="nbpo", epochs=epochs, eval_every=10**6, **options)
    module.trace = []
    module.epochs = 10**9  # no end-of-fit evaluation (the Amazon votes carry no held-out truth here)
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=module.batches())
    return module.trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--amazon-dir", type=Path, default=None)
    args = parser.parse_args()
    data = {
        "mini, p = 0.3, seed 0 (K0 16, K1 8, batch 1280)": (
            make_implicit_feedback(300, 300, seed=0, rank=4, relevance_scale=3.0, relevance_offset=-1.0,
                                   zipf_exponent=0.5, exposure_power=0.3, test_items_per_user=50),
            {"dim": 16, "flip_dim": 8, "batch_size": 1280, "seed": 0},
        ),
    }  # fmt: skip
    if args.amazon_dir is not None:
        data["official Amazon votes (K0 50, K1 50, batch 5000)"] = (
            _amazon(args.amazon_dir),
            {"dim": 50, "flip_dim": 50, "batch_size": 5000, "seed": 0},
        )
    lines = ["# NBPO flip model over the first epochs (papers/nbpo/collapse_trace.py)", ""]
    for data_name, (feedback, shape) in data.items():
        for name, setting in SETTINGS.items():
            lines += [f"## {data_name}: {name}", "",
                      "| epoch | phi voted | phi unvoted | mean abs G | norm P | norm Q | growth at G=0 |",
                      "|---|---|---|---|---|---|---|"]  # fmt: skip
            for row in trace(feedback, args.epochs, samples=4, lr_decay=0.99, **shape, **setting):
                epoch, *values = row
                lines.append(f"| {epoch} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
            lines.append("")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text("\n".join(lines) + "\n")
            print("\n".join(lines[-args.epochs - 4 :]), flush=True)


if __name__ == "__main__":
    main()
