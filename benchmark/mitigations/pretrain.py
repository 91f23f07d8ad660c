"""A pre-trained backbone for methods that adapt one (FairTune chooses what to fine-tune; LoRA adapts
frozen weights): a ``scratch`` ViT pre-trained on a **disjoint pretext task** and cached.

The pretext (:func:`benchmark.data.image.synth.pretext`): images of the synth generator from another
seed, with no sex band, equal base rates and equal lesion contrast, and two targets, "lesion present"
and "lesion in the left lung". The weights are saved as safetensors in the fairbench cache under a key
of the architecture, input settings, generator options, pretext settings and seed, so every search,
run and control that names the same settings starts from the same bytes (``recipe.init`` records the
path and SHA-256; the classifier backend checks it when loading).
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import FairbenchError
from ..store import dumps, write_atomic


class Pretrain(BaseModel):
    """Pre-training of a ``scratch`` backbone on the pretext task (``synth.pretext``)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True  # off: search on the random-init backbone (not FairTune; recorded as such)
    split_seed: int = Field(1000, ge=0)  # generator seed of the pretext images (must differ from the card's)
    n: int = Field(2400, ge=30)
    epochs: int = Field(8, gt=0)
    lr: float = Field(1e-3, gt=0)
    seed: int = Field(0, ge=0)  # init / shuffle seed: one pre-trained base shared by every run seed
    val_fraction: float = Field(0.2, gt=0, lt=1)


def pretrained_backbone(base, card, pre: Pretrain, quiet: bool = True) -> dict:
    """Pre-train ``base``'s scratch ViT backbone on the pretext task, or reuse the cached one.

    Returns ``{"backbone": path, "sha256": ..., "key": ..., "pretext_val_auc": ..., "reused": bool, ...}``;
    the weights are ``<cache>/fairtune-pretrain/<key>/backbone.safetensors`` where ``key`` hashes the
    architecture, input settings, generator options, pretext settings and seed. Raises FairbenchError
    for a task whose loader has no pretext generator (use a pre-trained checkpoint there)."""
    import torch
    from safetensors.torch import save_file
    from sklearn.metrics import roc_auc_score
    from torch.utils.data import TensorDataset

    from ..backends.image.classifier import _settings, build_classifier
    from ..backends.image.inputs import to_input
    from ..backends.image.train import TrainConfig, train_classifier
    from ..data.image.synth import PRETEXT_LABELS, pretext
    from ..paths import cache_dir

    if card.loader != "synth_xray":
        raise FairbenchError(f"fairtune: task {card.name} has no pretext generator to pre-train a scratch backbone; "
                             "use a pre-trained ViT checkpoint as the base (models.yaml model: DIR_OR_HUB_ID) "
                             "or set pretrain: {enabled: false} in the fairtune config.")
    arch, train_cfg = _settings(base, card)
    model, inputs = build_classifier(base, card, len(PRETEXT_LABELS))
    ident = {"arch": arch, "inputs": inputs, "generator": card.loader_options, "task_split_seed": card.split_seed,
             "pretext": pre.model_dump(), "batch_size": train_cfg["batch_size"], "weight_decay": train_cfg["weight_decay"], "version": 1}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    out = cache_dir() / "fairtune-pretrain" / key
    weights, meta_p = out / "backbone.safetensors", out / "meta.json"
    if weights.is_file() and meta_p.is_file():
        meta = json.loads(meta_p.read_text())
        if meta.get("sha256") == hashlib.sha256(weights.read_bytes()).hexdigest():
            return {**meta, "backbone": str(weights), "reused": True}
    t0 = time.perf_counter()
    images, targets = pretext(card, pre.split_seed, pre.n)
    x = torch.stack([to_input(im, **inputs) for im in images])
    t = torch.as_tensor(targets)
    order = np.random.default_rng(pre.seed).permutation(len(x))
    n_val = max(1, round(pre.val_fraction * len(x)))
    val_i, train_i = torch.as_tensor(order[:n_val]), torch.as_tensor(order[n_val:])
    # Items (x, target, row index) as train_classifier expects; the index is the row within the split.
    train_ds = TensorDataset(x[train_i], t[train_i], torch.arange(len(train_i)))
    val_ds = TensorDataset(x[val_i], t[val_i], torch.arange(len(val_i)))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = TrainConfig(epochs=pre.epochs, lr=pre.lr, batch_size=int(train_cfg["batch_size"]),
                      weight_decay=float(train_cfg["weight_decay"]), seed=pre.seed, device=device)
    report = train_classifier(model, train_ds, val_ds, cfg, multiclass=False)
    model.eval()
    with torch.no_grad():
        p = torch.sigmoid(model(x[val_i].to(device))).cpu().numpy()
    y_val = targets[order[:n_val], 0]
    auc = float(roc_auc_score(y_val, p[:, 0])) if len(set(y_val.tolist())) == 2 else None
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".backbone.{time.time_ns()}.tmp"
    save_file({k: v.detach().contiguous().cpu() for k, v in model.backbone.state_dict().items()}, str(tmp))
    tmp.replace(weights)
    meta = {"key": key, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "pretext": pre.model_dump(),
            "pretext_labels": list(PRETEXT_LABELS), "pretext_val_auc": auc, "training": report.as_dict(),
            "seconds": round(time.perf_counter() - t0, 2), "ident": ident}
    write_atomic(meta_p, dumps(meta))
    if not quiet:
        print(f"fairtune: pre-trained the backbone on the pretext task (validation lesion AUC {auc}); cached at {out}")
    return {**meta, "backbone": str(weights), "reused": False}
