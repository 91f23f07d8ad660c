"""``fairtune`` (paper 002): bi-level search over which ViT parameters to fine-tune.

- Search space: one bit per ViT block for attention, MLP and norm, plus the learning rate (log
  scale). The head is always trained; the patch / position embeddings and the final layernorm
  follow ``train_other`` (default on: the CPU default backbone is random-init, so freezing its
  embeddings would leave random features).
- Inner loop: fine-tune the base classifier with the mask on the **train** split (model selection
  on validation loss, as for every classifier).
- Outer objective: fairness on the **validation** split: ``worst_group_auc`` (default, maximised),
  ``auc_gap`` or ``dp_gap`` (minimised; decisions at the validation-tuned threshold) or
  ``worst_group_accuracy``, over the groups of ``attribute`` (default: the card's primary attribute),
  computed with the group audit's own metric functions.
- Optuna TPE sampler seeded with the mitigation seed. The best mask **and** learning rate are saved
  (``fairtune.json``, with every trial) and become the derived model's recipe; ``fairbench run``
  trains the final model with them and evaluates it on test.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import Field

from ..errors import FairbenchError
from ..store import dumps, write_atomic
from .base import MitigationConfig
from .imaging import ImagingMitigation

MAXIMISE = {"worst_group_auc": True, "worst_group_accuracy": True, "auc_gap": False, "dp_gap": False}


class FairTuneConfig(MitigationConfig):
    objective: Literal["worst_group_auc", "auc_gap", "dp_gap", "worst_group_accuracy"] = "worst_group_auc"
    attribute: str | None = None  # default: the card's audit.primary_attribute
    n_trials: int = Field(12, gt=0)
    search_epochs: int | None = Field(None, gt=0)  # inner-loop epochs (default: the base model's)
    lr_min: float = Field(1e-4, gt=0)
    lr_max: float = Field(1e-2, gt=0)
    train_other: bool = True


def objective_value(objective: str, y: np.ndarray, p: np.ndarray, groups: np.ndarray, card) -> float:
    """The outer objective on validation rows, from the group audit's metric functions."""
    from ..audits.group import gap_metrics, group_values
    from ..kinds.image.thresholds import tune_threshold

    ok = ~np.isnan(y) & ~np.isnan(p) & (groups >= 0)
    y, p, groups = y[ok], p[ok], groups[ok]
    t, _ = tune_threshold(y, p, card.audit.threshold)
    d = (p >= t).astype(float)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    sizes = np.bincount(groups, minlength=n_groups)
    include = sizes >= card.audit.min_group_size
    if include.sum() < 2:
        raise FairbenchError(f"fairtune: fewer than two groups with >= {card.audit.min_group_size} validation images; "
                             "use another attribute or a larger validation split.")
    if objective == "worst_group_accuracy":
        v = group_values(y, p, d, groups, n_groups, card.audit.ece_bins, False)
        return float(np.nanmin(np.where(include, v["accuracy"], np.nan)))
    g = gap_metrics(y, p, d, groups, n_groups, card.audit.ece_bins, False, include=include)
    return float(g[objective])


def vit_blocks(backbone) -> int:
    """Number of transformer blocks of a transformers ViTModel (4.x ``encoder.layer``, 5.x ``layers``)."""
    blocks = getattr(backbone, "layers", None)
    if blocks is None:
        blocks = backbone.encoder.layer
    return len(blocks)


class FairTune(ImagingMitigation):
    name = "fairtune"
    Config = FairTuneConfig

    def recipes(self, base, data, config, ctx):
        import optuna
        import torch

        from ..backends.image.classifier import _settings, build_classifier
        from ..backends.image.inputs import TensorView
        from ..backends.image.recipe import Mask, codes, mask_predicate
        from ..backends.image.train import TrainConfig, train_classifier

        card = data.card
        if config.lr_min >= config.lr_max:
            raise FairbenchError("fairtune config: lr_min must be below lr_max.")
        attribute = config.attribute or card.audit.primary_attribute
        arch, train_cfg = _settings(base, card)
        n_out = 1 if card.label_type == "binary" else len(card.labels)
        probe, inputs = build_classifier(base, card, n_out)
        n_blocks = vit_blocks(probe.backbone)
        view = lambda ds: TensorView(ds, inputs["size"], inputs["channels"], inputs["mean"], inputs["std"])  # noqa: E731
        train_v, val_v = view(data.train), view(data.val)
        k = list(card.labels).index(card.primary()) if card.label_type != "multiclass" else None
        y_val = data.val.targets()[:, k].astype(float) if k is not None else None
        if y_val is None:
            raise FairbenchError("fairtune supports binary and multilabel tasks (the objective is on the primary endpoint).")
        g_val, _ = codes(data.val.frame[attribute])
        device = "cuda" if torch.cuda.is_available() else "cpu"
        trials_log = []

        def run_trial(trial: optuna.Trial) -> float:
            t0 = time.perf_counter()
            mask = Mask(
                attention=[trial.suggest_categorical(f"attn{i}", [True, False]) for i in range(n_blocks)],
                mlp=[trial.suggest_categorical(f"mlp{i}", [True, False]) for i in range(n_blocks)],
                norm=[trial.suggest_categorical(f"norm{i}", [True, False]) for i in range(n_blocks)],
                other=config.train_other,
            )
            lr = trial.suggest_float("lr", config.lr_min, config.lr_max, log=True)
            model, _ = build_classifier(base, card, n_out)
            cfg = TrainConfig(epochs=int(config.search_epochs or train_cfg["epochs"]), lr=lr, batch_size=int(train_cfg["batch_size"]),
                              weight_decay=float(train_cfg["weight_decay"]), seed=ctx.seed, device=device)
            train_classifier(model, train_v, val_v, cfg, multiclass=False, trainable=mask_predicate(mask))
            model.eval()
            with torch.no_grad():
                p = torch.cat([torch.sigmoid(model(x.to(device)))[:, k].cpu() for x, _, _ in
                               torch.utils.data.DataLoader(val_v, batch_size=256)]).numpy().astype(float)
            value = objective_value(config.objective, y_val, p, g_val, card)
            trials_log.append({"number": trial.number, "value": value, "lr": lr, "mask": mask.model_dump(),
                               "seconds": round(time.perf_counter() - t0, 2)})
            if not ctx.quiet:
                print(f"fairtune trial {trial.number}: {config.objective} = {value:.4f} (lr {lr:.2e})")
            return value

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="maximize" if MAXIMISE[config.objective] else "minimize",
                                    sampler=optuna.samplers.TPESampler(seed=ctx.seed))
        study.optimize(run_trial, n_trials=config.n_trials)
        best = study.best_trial
        mask = Mask(attention=[best.params[f"attn{i}"] for i in range(n_blocks)], mlp=[best.params[f"mlp{i}"] for i in range(n_blocks)],
                    norm=[best.params[f"norm{i}"] for i in range(n_blocks)], other=config.train_other)
        result = {"objective": config.objective, "attribute": attribute, "direction": study.direction.name.lower(),
                  "best_value": best.value, "best_trial": best.number, "mask": mask.model_dump(), "lr": best.params["lr"],
                  "sampler": {"name": "TPESampler", "seed": ctx.seed}, "split": "validation", "trials": trials_log}
        write_atomic(ctx.out_dir / "fairtune.json", dumps(result))
        return {self.name: {"method": self.name, "mask": mask.model_dump(), "lr": best.params["lr"]}}
