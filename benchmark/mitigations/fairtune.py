"""``fairtune`` (paper 002): bi-level search over which parameters of a **pre-trained** ViT to
fine-tune, and with which learning rate, scored by fairness on validation.

- The pre-trained model: FairTune adapts a pre-trained backbone; choosing what to fine-tune in a
  random-init network is meaningless. A checkpoint backbone (``model`` other than ``scratch``) is
  used as it is. A ``scratch`` backbone is first pre-trained on a **disjoint pretext task**
  (``pretrain``; :func:`benchmark.data.image.synth.pretext`: images of another generator seed, no
  sex band, equal base rates, targets "lesion present" and "lesion in the left lung"), saved as
  safetensors in the fairbench cache keyed by the architecture, the pretext settings and the
  pre-training seed, and reused by every later search and run (``recipe.init``, SHA-256 checked).
- Search space: one bit per ViT block for attention, MLP and norm (the official ``auto_peft1``
  mask), plus the learning rate, log-uniform in [``lr_min``, ``lr_max``] = [1e-5, 1e-3] as in the
  official ``search_mask.py`` (Raman1121/FairTune). The head is always trained; the patch /
  position embeddings and the final layernorm follow ``train_other`` (default off: they are
  pre-trained).
- Inner loop: fine-tune from the pre-trained weights with the mask on the **train** split (model
  selection on validation loss, as for every classifier).
- Outer objective: fairness on the **validation** split: ``worst_group_auc`` (default, maximised),
  ``auc_gap`` or ``dp_gap`` (minimised; decisions at the validation-tuned threshold) or
  ``worst_group_accuracy``, over the groups of ``attribute`` (default: the card's primary attribute),
  computed with the group audit's own metric functions.
- Optuna TPE sampler seeded with the mitigation seed. The best mask, learning rate and the
  pre-trained weights (path + SHA-256) are saved (``fairtune.json``, with every trial) and become the
  derived model's recipe; ``fairbench run`` trains the final model with them and evaluates it on test.
- Control: ``<base>+fairtune-fullft`` starts from the same pre-trained weights with the same learning
  rate and trains every parameter (the paper's full fine-tuning baseline), so the difference from
  ``fairtune`` is the searched mask alone.
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
from .pretrain import Pretrain, pretrained_backbone

MAXIMISE = {"worst_group_auc": True, "worst_group_accuracy": True, "auc_gap": False, "dp_gap": False}


class FairTuneConfig(MitigationConfig):
    objective: Literal["worst_group_auc", "auc_gap", "dp_gap", "worst_group_accuracy"] = "worst_group_auc"
    attribute: str | None = None  # default: the card's audit.primary_attribute
    n_trials: int = Field(12, gt=0)
    search_epochs: int | None = Field(None, gt=0)  # inner-loop epochs (default: the base model's)
    lr_min: float = Field(1e-5, gt=0)  # the official search space: log-uniform 1e-5 .. 1e-3
    lr_max: float = Field(1e-3, gt=0)
    train_other: bool = False
    pretrain: Pretrain = Field(default_factory=Pretrain)
    fullft_control: bool = True  # also register <base>+fairtune-fullft


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
        from ..backends.image.recipe import Init, Mask, codes, load_init, mask_predicate
        from ..backends.image.train import TrainConfig, train_classifier

        card = data.card
        if config.lr_min >= config.lr_max:
            raise FairbenchError("fairtune config: lr_min must be below lr_max.")
        attribute = config.attribute or card.audit.primary_attribute
        _, train_cfg = _settings(base, card)
        n_out = 1 if card.label_type == "binary" else len(card.labels)
        probe, inputs = build_classifier(base, card, n_out)
        n_blocks = vit_blocks(probe.backbone)
        view = lambda ds: TensorView(ds, **inputs)  # noqa: E731
        train_v, val_v = view(data.train), view(data.val)
        k = list(card.labels).index(card.primary()) if card.label_type != "multiclass" else None
        y_val = data.val.targets()[:, k].astype(float) if k is not None else None
        if y_val is None:
            raise FairbenchError("fairtune supports binary and multilabel tasks (the objective is on the primary endpoint).")
        g_val, _ = codes(data.val.frame[attribute])
        device = "cuda" if torch.cuda.is_available() else "cpu"
        trials_log = []
        init, pretrain_info = None, {"backbone": "checkpoint", "model": base.model}
        if base.model == "scratch":
            if config.pretrain.enabled:
                pretrain_info = pretrained_backbone(base, card, config.pretrain, ctx.quiet)
                init = Init(backbone=pretrain_info["backbone"], sha256=pretrain_info["sha256"])
            else:
                pretrain_info = {"backbone": "random init", "note": "pretrain disabled: the mask is chosen on a random-init "
                                 "backbone, which FairTune does not do"}

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
            if init is not None:
                load_init(model, init)
            cfg = TrainConfig(epochs=int(config.search_epochs or train_cfg["epochs"]), lr=lr, batch_size=int(train_cfg["batch_size"]),
                              weight_decay=float(train_cfg["weight_decay"]), seed=ctx.seed, device=device)
            rep = train_classifier(model, train_v, val_v, cfg, multiclass=False, trainable=mask_predicate(mask))
            model.eval()
            with torch.no_grad():
                p = torch.cat([torch.sigmoid(model(x.to(device)))[:, k].cpu() for x, _, _ in
                               torch.utils.data.DataLoader(val_v, batch_size=256)]).numpy().astype(float)
            value = objective_value(config.objective, y_val, p, g_val, card)
            trials_log.append({"number": trial.number, "value": value, "lr": lr, "mask": mask.model_dump(),
                               "n_trainable": rep.n_trainable, "seconds": round(time.perf_counter() - t0, 2)})
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
                  "sampler": {"name": "TPESampler", "seed": ctx.seed}, "split": "validation",
                  "search_space": {"lr": {"low": config.lr_min, "high": config.lr_max, "log": True},
                                   "mask": "attention, MLP, norm bit per block", "train_other": config.train_other},
                  "official_search_space": "lr log-uniform 1e-5..1e-3; one bit per block (Raman1121/FairTune search_mask.py)",
                  "pretrain": {k: v for k, v in pretrain_info.items() if k != "ident"}, "trials": trials_log}
        write_atomic(ctx.out_dir / "fairtune.json", dumps(result))
        common = {"lr": best.params["lr"]} | ({"init": init.model_dump()} if init is not None else {})
        out = {self.name: {"method": self.name, "mask": mask.model_dump(), **common}}
        if config.fullft_control:
            out[f"{self.name}-fullft"] = {"method": f"{self.name}-fullft", **common}
        return out
