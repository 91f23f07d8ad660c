"""``fairmed-vlm`` (paper 001): balanced intersectional sampling, Stage 1 concept alignment + task
loss with the demographic prompt prepended to the model's input (training only), Stage 2 adds the
cross-group supervised contrastive + moment-alignment regulariser
(``L = L_task + lambda * (eta1 * L_supcon + eta2 * L_dist)``, lambda = 0.1), LoRA r=32 / alpha=64;
the checkpoint is selected by validation loss among the Stage-2 epochs only.

Two kinds of base model:

- ``classifier`` (ViT: LoRA on query / key / value; task loss = BCE / cross-entropy): the method
  registers **recipes** (``mitigated-classifier``); ``fairbench run`` trains them per seed.
- ``vlm`` (LLaVA family, ``fairmed_llava.py``): the method trains here, on the train split with
  selection on validation (LoRA on the language model and projector, fairness terms on the pooled
  image embedding), merges the adapter and registers the saved model (``vlm`` backend); the
  artifact manifest records the kept epoch and stage.

Derived models are the full method and the ablations of the paper's Table 4; each ablation's
resolved configuration differs from the full method's only in the ablated field(s) (tested):

| derived model suffix | what is switched off |
|---|---|
| ``fairmed-vlm`` | nothing (full) |
| ``fairmed-vlm-no-demo-prompts`` | the demographic prompt (``fairmed.demographic_prompts``) |
| ``fairmed-vlm-no-fairness`` | the whole Stage 2 regulariser (``fairmed.fairness``) |
| ``fairmed-vlm-no-balanced`` | balanced sampling (``balanced``) |
| ``fairmed-vlm-no-contrastive`` | the supervised contrastive term (``fairmed.eta1`` = 0; moment alignment stays) |
"""

from __future__ import annotations

import json

from pydantic import Field

from ..backends.image.recipe import FairMed, Lora
from ..errors import FairbenchError
from ..store import dumps, write_atomic
from .base import MitigationConfig, ModelArtifact
from .imaging import ImagingMitigation, check_base
from .pretrain import Pretrain, pretrained_backbone

# Ablation -> (recipe-level update, FairMed update): the only fields it changes.
ABLATIONS: dict[str, tuple[dict, dict]] = {
    "no-demo-prompts": ({}, {"demographic_prompts": False}),
    "no-fairness": ({}, {"fairness": False}),
    "no-balanced": ({"balanced": False}, {}),
    "no-contrastive": ({}, {"eta1": 0.0}),
}
PAPER_LR = 2e-5  # paper 001 Sec. 4, AdamW; the default learning rate on a vlm base


class FairMedVLMConfig(MitigationConfig):
    losses: FairMed = Field(default_factory=FairMed)
    lora: Lora | None = Field(default_factory=Lora)  # null: full fine-tuning instead of LoRA
    balanced: bool = True
    balance_max_ratio: float = Field(1.5, ge=1)
    balance_max_duplication: float = Field(1.3, ge=1)
    lr: float | None = Field(None, gt=0)  # default: the base model's lr (classifier), 2e-5 (vlm)
    epochs: int | None = Field(None, gt=0)  # default: the base model's epochs (classifier), stage1_epochs + 1 (vlm)
    vlm_batch_size: int = Field(8, gt=0)  # vlm bases only (the paper's 64 needs a GPU); classifiers use the base's
    ablations: list[str] = Field(default_factory=lambda: list(ABLATIONS))
    # Classifier bases: start from the pretext pre-trained backbone (mitigations/pretrain.py) instead of
    # the base's random init. LoRA only adapts the features it is given, so on a random-init ViT it
    # learns little; the erm-lora control must use the same `pretrain` to stay like-for-like.
    pretrain: Pretrain | None = None


class FairMedVLM(ImagingMitigation):
    name = "fairmed-vlm"
    Config = FairMedVLMConfig
    bases = ("classifier", "vlm")

    def recipes(self, base, data, config, ctx):
        """Derived-model suffix -> resolved recipe (full method first, then the ablations)."""
        bad = [a for a in config.ablations if a not in ABLATIONS]
        if bad:
            raise FairbenchError(f"fairmed-vlm config field ablations: unknown {bad}; choose from {list(ABLATIONS)}.")
        full = {"method": self.name, "balanced": config.balanced, "balance_max_ratio": config.balance_max_ratio,
                "balance_max_duplication": config.balance_max_duplication, "fairmed": config.losses.model_dump(),
                "lr": config.lr, "epochs": config.epochs, "lora": None if config.lora is None else config.lora.model_dump()}
        if config.pretrain is not None and getattr(base, "model", None) == "scratch":
            info = pretrained_backbone(base, data.card, config.pretrain, ctx.quiet)
            full["init"] = {"backbone": info["backbone"], "sha256": info["sha256"]}
        out = {self.name: full}
        for name in config.ablations:
            top, losses = ABLATIONS[name]
            out[f"{self.name}-{name}"] = {**full, **top, "method": f"{self.name}-{name}", "fairmed": {**full["fairmed"], **losses}}
        return out

    def apply(self, base, data, config, ctx) -> ModelArtifact:
        check_base(base, self.name, self.bases)
        if base.backend != "vlm":
            return super().apply(base, data, config, ctx)
        if config.pretrain is not None:
            raise FairbenchError("fairmed-vlm config field pretrain: applies to scratch classifier bases only; "
                                 f"{base.name} is a vlm (pre-trained already). Remove `pretrain` from the config.")
        return self._apply_llava(base, data, config, ctx)

    def _apply_llava(self, base, data, config, ctx) -> ModelArtifact:
        from ..backends.image.vlm import VLMBackend
        from .fairmed_llava import train_fairmed_llava

        models, trained = {}, {}
        for suffix, r in self.recipes(base, data, config, ctx).items():
            fm = FairMed(**r["fairmed"])
            vb = VLMBackend(base, data.card, ctx.seed)
            progress = None if ctx.quiet else (lambda e, tl, vl, s=suffix: print(f"{s} epoch {e}: train loss {tl:.4f}, val loss {vl:.4f}"))
            model, report = train_fairmed_llava(
                vb, data.card, data.train, data.val, fm, None if r["lora"] is None else Lora(**r["lora"]),
                epochs=r["epochs"] or fm.stage1_epochs + 1, lr=r["lr"] or PAPER_LR, batch_size=config.vlm_batch_size,
                balanced=r["balanced"], max_ratio=r["balance_max_ratio"], max_duplication=r["balance_max_duplication"],
                seed=ctx.seed, progress=progress,
            )
            out = ctx.out_dir / suffix
            model.save_pretrained(out)
            vb.processor.save_pretrained(out)
            write_atomic(out / "fairmed_training.json", json.dumps({"recipe": r, "report": report}, indent=2, sort_keys=True))
            models[suffix] = {"model": str(out.resolve())}
            trained[suffix] = {"recipe": r, "report": report}
        write_atomic(ctx.out_dir / "recipes.json", dumps({k: v["recipe"] for k, v in trained.items()}))
        manifest = {"trained_here": True, "selection": {k: v["report"]["selection"] for k, v in trained.items()},
                    "training": trained}
        return ModelArtifact(ctx.out_dir, models, manifest)
