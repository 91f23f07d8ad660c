"""The classic imaging fairness baselines of FairMed-VLM's Table 2, as classifier training recipes:

- ``reweighting``: inverse (group x label) frequency sample weights;
- ``adversarial``: a gradient-reversal head predicting the group from the image features;
- ``threshold-postprocess``: fairlearn ``ThresholdOptimizer`` on the trained model's scores, fitted
  on the **validation** split (demographic-parity or equalized-odds constraint) and applied
  unchanged to test. It needs the group at inference time, as the method does.

And the control of the LoRA methods, ``erm-lora`` (ERM through the same LoRA adapter).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..backends.image.recipe import Lora
from .base import MitigationConfig
from .imaging import ImagingMitigation
from .pretrain import Pretrain, pretrained_backbone


class ReweightingConfig(MitigationConfig):
    attribute: str = "sex"  # sex, age_group or race (an image column)


class Reweighting(ImagingMitigation):
    name = "reweighting"
    Config = ReweightingConfig

    def recipes(self, base, data, config, ctx):
        return {self.name: {"method": self.name, "sample_weight": "group_label", "weight_attribute": config.attribute}}


class AdversarialConfig(MitigationConfig):
    attribute: str = "sex"
    weight: float = Field(1.0, ge=0)
    alpha: float = Field(1.0, ge=0)
    hidden: int = Field(64, gt=0)


class Adversarial(ImagingMitigation):
    name = "adversarial"
    Config = AdversarialConfig

    def recipes(self, base, data, config, ctx):
        return {self.name: {"method": self.name, "adversary": config.model_dump()}}


class ThresholdPostprocessConfig(MitigationConfig):
    constraint: Literal["demographic_parity", "equalized_odds"] = "demographic_parity"
    attribute: str = "sex"
    objective: Literal["accuracy_score", "balanced_accuracy_score"] = "balanced_accuracy_score"


class ThresholdPostprocess(ImagingMitigation):
    name = "threshold-postprocess"
    Config = ThresholdPostprocessConfig

    def recipes(self, base, data, config, ctx):
        return {self.name: {"method": self.name, "postprocess": config.model_dump()}}


class ErmLoraConfig(MitigationConfig):
    lora: Lora = Field(default_factory=Lora)  # the adapter of the LoRA methods (fairmed-vlm: r=32, alpha=64, q/k/v)
    lr: float | None = Field(None, gt=0)  # default: the base model's, as fairmed-vlm
    epochs: int | None = Field(None, gt=0)
    # Start from the pretext pre-trained backbone (mitigations/pretrain.py) instead of the base's random
    # init; like-for-like only when the LoRA method it controls starts from the same weights.
    pretrain: Pretrain | None = None


class ErmLora(ImagingMitigation):
    """``erm-lora``: the like-for-like control of the LoRA methods -- plain ERM (task loss only, no
    reweighting, no balanced sampling, no fairness term) through the same LoRA adapter, data and epochs,
    so a LoRA method's difference from it is its fairness machinery and not the adapter."""

    name = "erm-lora"
    Config = ErmLoraConfig

    def recipes(self, base, data, config, ctx):
        recipe = {"method": self.name, "lora": config.lora.model_dump(), "lr": config.lr, "epochs": config.epochs}
        if config.pretrain is not None and base.model == "scratch":
            info = pretrained_backbone(base, data.card, config.pretrain, ctx.quiet)
            recipe["init"] = {"backbone": info["backbone"], "sha256": info["sha256"]}
        return {self.name: recipe}
