"""DDFA and the clustering baselines as harness methods (`method=lls_ddfa | lls_kmeans | lls_naive`).

- `lls_ddfa`: Discriminate (train p(d|x) on the training split, best validation epoch), Discretize (k-means
  with m clusters on p(d|x) of validation + training), Factorize (NMF -> p(y|d)), Adjust (p_d(y|x) on the
  test split); the official 'DDFA (RI)' (random initialisation).
- `lls_kmeans`: clustering by feature similarity, blind to domains (the role SCAN plays in the paper): k-means
  with K clusters on the inputs of validation + training; a test example's class is its cluster; p(y|d) is
  the per-domain histogram of clusters, as the official SCAN baseline (`model_evaluate`).
- `lls_naive`: the official 'Naive' ablation with the inputs as representation: k-means with m clusters on the
  inputs, NMF, and the class argmax_y p(cluster|y) p(y|d) of each (cluster, domain).
Every method returns `test/acc` (Hungarian, %), `test/pyd_l1` (summed L1 error of p(y|d), official) and
`test/pyd_l1_per_domain`. A run's (metrics, curves) are a stage (`context.stages.training_metrics`, stored
under `<output_root>/stages/lls/training/<key>/`) keyed by the resolved run config without the table, the cell
and the reported metric, so the accuracy and the p(y|d) tables of one setting share their runs.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from hydra.utils import instantiate

from common.backbones import build_backbone_for
from common.errors import UserError
from common.lit import Pipeline, RunContext
from common.registry import register_method
from papers.lls import ddfa
from papers.lls.data import LatentShiftDataModule
from papers.lls.discriminator import DomainDiscriminator

log = logging.getLogger("pnu.lls")


class LatentShiftPipeline(Pipeline):
    """Shared plumbing: the data check, the run's stage and the data facts every record holds."""

    name: str

    def run(self, context: RunContext) -> dict[str, float]:
        datamodule = context.datamodule
        if not isinstance(datamodule, LatentShiftDataModule):
            raise UserError(f"{self.name} needs latent-label-shift data (datamodule: lls_latent_shift)")

        def train() -> tuple[dict[str, float], dict[str, list[float]]]:
            metrics = self.compute(context, datamodule)
            metrics["data/condition_number"] = datamodule.condition_number
            metrics["data/num_train"] = float(datamodule.num_train)
            return metrics, context.curves

        if context.stages is None:  # called outside the runner (no stage folder): nothing to share
            metrics, context.curves = train()
        else:
            metrics, context.curves = context.stages.training_metrics(context.cfg, train)
        return metrics

    def compute(self, context: RunContext, datamodule: LatentShiftDataModule) -> dict[str, float]:
        raise NotImplementedError


@register_method("lls_ddfa")
class DDFAPipeline(LatentShiftPipeline):
    """Discriminate-Discretize-Factorize-Adjust with `num_clusters` = m (null: 3K)."""

    name = "lls_ddfa"

    def __init__(self, num_clusters: int | None = None) -> None:
        self.num_clusters = num_clusters

    def compute(self, context: RunContext, datamodule: LatentShiftDataModule) -> dict[str, float]:
        cfg, seed = context.cfg, int(context.cfg.seed)
        num_classes, num_domains = datamodule.num_classes, datamodule.num_domains
        module = DomainDiscriminator(
            backbone=build_backbone_for(cfg, datamodule, num_classes=num_domains),
            num_classes=num_domains,
            num_train_examples=datamodule.num_train,
            optimizer=instantiate(cfg.optim.optimizer),
            scheduler=instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
            scheduler_interval=cfg.optim.get("scheduler_interval", "epoch"),
        )
        trainer = context.make_trainer()
        trainer.fit(module, datamodule=datamodule)
        module.restore_best()
        if torch.cuda.is_available() and cfg.trainer.get("accelerator") != "cpu":
            module.to("cuda")
        # (i) p(d|x) of every split, in split order (un-augmented).
        features = {
            split: module.domain_posteriors(
                datamodule.loader(datamodule.dataset(split, augment=False), shuffle=False, train=False)
            )
            for split in ("valid", "train", "test")
        }
        splits = datamodule.splits
        fit_features = np.concatenate([features["valid"], features["train"]])
        fit_domains = np.concatenate([splits["valid"].domains, splits["train"].domains])
        # (ii) discretise, (iii) factorise.
        m = int(self.num_clusters or 3 * num_classes)
        clusters = ddfa.kmeans(fit_features, m, seed=seed).labels_
        histogram = ddfa.cluster_domain_histogram(clusters, fit_domains, m, num_domains)
        factors = ddfa.factorize(histogram, num_classes, seed=seed)
        # (iv) adjust on the test split.
        test = splits["test"]
        p_y_x = ddfa.posterior_uniform(features["test"], factors.p_y_given_d)
        adjusted = ddfa.domain_adjust(p_y_x, factors.p_y_given_d, test.domains)
        metrics = ddfa.evaluate(adjusted.argmax(1), test.classes, factors.p_y_given_d, datamodule.priors)
        # Diagnostic: the prediction before the domain adjustment (argmax p(y|x)).
        unadjusted = ddfa.evaluate(p_y_x.argmax(1), test.classes, factors.p_y_given_d, datamodule.priors)
        metrics["test/acc_unadjusted"] = unadjusted["test/acc"]
        # The pseudo-inverse solution p(y|x) may have negative entries; where the adjusted row's normaliser
        # p(x|d)-proportional sum is <= 0 the official normalisation flips the arg-max.
        normaliser = (p_y_x * ddfa.p_d_given_y(factors.p_y_given_d)[test.domains]).sum(1)
        metrics["test/nonpositive_normaliser_fraction"] = float(np.mean(normaliser <= 0))
        metrics.update(module.final_metrics())
        context.curves = {k: list(map(float, v)) for k, v in module.curves.items() if v}
        return metrics


@register_method("lls_kmeans")
class KMeansPipeline(LatentShiftPipeline):
    """k-means with K clusters on the inputs (domain-blind feature-similarity clustering)."""

    name = "lls_kmeans"

    def compute(self, context: RunContext, datamodule: LatentShiftDataModule) -> dict[str, float]:
        seed, num_classes, num_domains = int(context.cfg.seed), datamodule.num_classes, datamodule.num_domains
        fit_x, fit_domains, test_x = _flat_inputs(datamodule)
        model = ddfa.kmeans(fit_x, num_classes, seed=seed)
        p_y_given_d = ddfa.cluster_domain_histogram(model.labels_, fit_domains, num_classes, num_domains)
        test = datamodule.splits["test"]
        return ddfa.evaluate(model.predict(test_x), test.classes, p_y_given_d, datamodule.priors)


@register_method("lls_naive")
class NaivePipeline(LatentShiftPipeline):
    """Official 'Naive' ablation on the inputs: k-means (m clusters, null: K), NMF, argmax p(c|y) p(y|d)."""

    name = "lls_naive"

    def __init__(self, num_clusters: int | None = None) -> None:
        self.num_clusters = num_clusters

    def compute(self, context: RunContext, datamodule: LatentShiftDataModule) -> dict[str, float]:
        seed, num_classes, num_domains = int(context.cfg.seed), datamodule.num_classes, datamodule.num_domains
        fit_x, fit_domains, test_x = _flat_inputs(datamodule)
        m = int(self.num_clusters or num_classes)
        model = ddfa.kmeans(fit_x, m, seed=seed)
        histogram = ddfa.cluster_domain_histogram(model.labels_, fit_domains, m, num_domains)
        factors = ddfa.factorize(histogram, num_classes, seed=seed)
        # prediction[c, d] = argmax_y p(c|y) p(y|d)  (official naive procedure)
        table = np.argmax(factors.p_cluster_given_y[:, :, None] * factors.p_y_given_d[None, :, :], axis=1)
        test = datamodule.splits["test"]
        predicted = table[model.predict(test_x), test.domains]
        return ddfa.evaluate(predicted, test.classes, factors.p_y_given_d, datamodule.priors)


def _flat_inputs(datamodule: LatentShiftDataModule) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flattened inputs of validation + training (with their domains) and of the test split."""

    def flat(split: str) -> np.ndarray:
        if datamodule.source == "hub":  # normalised, un-augmented images, in split order
            loader = datamodule.loader(datamodule.dataset(split, augment=False), shuffle=False, train=False)
            inputs = torch.cat([batch["x"].flatten(1) for batch in loader])
        else:
            inputs = datamodule.inputs(split).flatten(1)
        return inputs.double().numpy()

    splits = datamodule.splits
    fit_x = np.concatenate([flat("valid"), flat("train")])
    fit_domains = np.concatenate([splits["valid"].domains, splits["train"].domains])
    return fit_x, fit_domains, flat("test")
