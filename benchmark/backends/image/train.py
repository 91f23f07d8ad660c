"""The reusable training loop for image classifiers (used by the ``classifier`` backend and meant
for the imaging mitigations: reweighting, adversarial debiasing, FairTune, FairMed-VLM-style losses).

``train_classifier(model, train, val, ...)`` trains any ``ImageClassifier``-like module
(``forward(x, return_features=True) -> (logits, features)``) with:

- ``sample_weight``: one weight per training row (reweighting); the base loss is the weighted mean.
- ``loss_hook(batch) -> tensor``: an extra loss term given a :class:`HookBatch` (logits, features,
  targets, group codes, row indices, the model); return 0 for no term. Adversarial heads or
  contrastive terms live in the hook; add their parameters with ``extra_parameters``.
- ``peft_config``: a ``peft`` config applied to ``model.backbone`` (LoRA etc.); the head stays trainable.
- ``trainable``: a predicate on parameter names (FairTune's choice of what to fine-tune).

- ``before_forward(index)``: called with the batch's row indices before each training forward pass
  (e.g. to prepend a per-row token during training only).

Model selection uses the validation loss only (never test), among epochs ``>= config.select_from``. Seeded: one seed drives init,
shuffling and dropout.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ...seeding import seed_everything


@dataclass
class TrainConfig:
    epochs: int = 8
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.01
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 0
    patience: int | None = None  # stop after this many epochs without a better val loss
    # First (1-based) epoch eligible for model selection: a two-stage method (FairMed-VLM) selects
    # among its second-stage epochs only, so selection cannot return a first-stage checkpoint.
    select_from: int = 1


@dataclass
class HookBatch:
    logits: torch.Tensor
    features: torch.Tensor
    targets: torch.Tensor
    groups: torch.Tensor | None  # integer group codes of the rows (e.g. sex x age), or None
    index: torch.Tensor
    model: torch.nn.Module


@dataclass
class TrainReport:
    epochs_run: int = 0
    best_epoch: int = 0
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    n_trainable: int = 0

    def as_dict(self) -> dict:
        r = lambda xs: [round(x, 6) for x in xs]  # noqa: E731
        return {"epochs_run": self.epochs_run, "best_epoch": self.best_epoch, "train_loss": r(self.train_loss),
                "val_loss": r(self.val_loss), "seconds": round(self.seconds, 3), "n_trainable": self.n_trainable}


def base_loss(logits: torch.Tensor, targets: torch.Tensor, multiclass: bool) -> torch.Tensor:
    """Per-row loss: cross-entropy (multiclass) or BCE averaged over unmasked labels (NaN = masked)."""
    if multiclass:
        return F.cross_entropy(logits, targets, reduction="none")
    mask = ~torch.isnan(targets)
    per = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(targets), reduction="none") * mask
    return per.sum(1) / mask.sum(1).clamp(min=1)


def apply_peft(model: torch.nn.Module, peft_config) -> torch.nn.Module:
    from peft import get_peft_model  # optional dependency (mitigations extra)

    model.backbone = get_peft_model(model.backbone, peft_config)
    return model


def _evaluate_loss(model, loader, multiclass, device) -> float:
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for x, t, _ in loader:
            logits, _ = model(x.to(device), return_features=True)
            total += float(base_loss(logits, t.to(device), multiclass).sum())
            n += len(x)
    return total / max(n, 1)


def train_classifier(
    model: torch.nn.Module,
    train,
    val,
    config: TrainConfig,
    *,
    multiclass: bool,
    sample_weight: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    loss_hook: Callable[[HookBatch], torch.Tensor] | None = None,
    extra_parameters: list[torch.nn.Parameter] | None = None,
    peft_config=None,
    trainable: Callable[[str], bool] | None = None,
    before_forward: Callable[[torch.Tensor], None] | None = None,
    progress: Callable[[int, float, float], None] | None = None,
) -> TrainReport:
    """Train ``model`` in place on the torch datasets ``train`` / ``val`` (items ``(x, target, index)``)
    and leave it holding the weights of the epoch with the lowest validation loss among epochs
    ``>= config.select_from`` (the last epoch if training stops before any is eligible)."""
    seed_everything(config.seed)
    device = torch.device(config.device)
    if peft_config is not None:
        model = apply_peft(model, peft_config)
    if trainable is not None:
        for name, p in model.named_parameters():
            p.requires_grad = trainable(name)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_parameters or [])
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train, batch_size=config.batch_size, shuffle=True, generator=gen, num_workers=config.num_workers)
    val_loader = DataLoader(val, batch_size=config.batch_size * 2, shuffle=False, num_workers=config.num_workers)
    weights = None if sample_weight is None else torch.as_tensor(sample_weight, dtype=torch.float32)
    group_t = None if groups is None else torch.as_tensor(groups, dtype=torch.long)
    report = TrainReport(n_trainable=sum(p.numel() for p in params))
    best, best_state, stale, t0 = math.inf, None, 0, time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        total, n = 0.0, 0
        for x, t, idx in loader:
            x, t = x.to(device), t.to(device)
            if before_forward is not None:
                before_forward(idx)
            logits, feats = model(x, return_features=True)
            per_row = base_loss(logits, t, multiclass)
            if weights is not None:
                w = weights[idx].to(device)
                loss = (per_row * w).sum() / w.sum().clamp(min=1e-12)
            else:
                loss = per_row.mean()
            if loss_hook is not None:
                g = None if group_t is None else group_t[idx].to(device)
                loss = loss + loss_hook(HookBatch(logits, feats, t, g, idx, model))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(x)
            n += len(x)
        report.train_loss.append(total / max(n, 1))
        vloss = _evaluate_loss(model, val_loader, multiclass, device)
        report.val_loss.append(vloss)
        report.epochs_run = epoch + 1
        if progress is not None:
            progress(epoch + 1, report.train_loss[-1], vloss)
        if epoch + 1 < config.select_from:
            continue
        if vloss < best:
            best, stale, report.best_epoch = vloss, 0, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if config.patience is not None and stale >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    report.seconds = time.perf_counter() - t0
    return report
