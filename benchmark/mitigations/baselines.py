"""The classic imaging fairness baselines of FairMed-VLM's Table 2, as classifier training recipes:

- ``reweighting``: inverse (group x label) frequency sample weights;
- ``adversarial``: a gradient-reversal head predicting the group from the image features;
- ``threshold-postprocess``: fairlearn ``ThresholdOptimizer`` on the trained model's scores, fitted
  on the **validation** split (demographic-parity or equalized-odds constraint) and applied
  unchanged to test. It needs the group at inference time, as the method does.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import MitigationConfig
from .imaging import ImagingMitigation


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
