"""``fairmed-vlm`` (paper 001): balanced intersectional sampling, Stage 1 concept alignment + task
loss, Stage 2 cross-group supervised contrastive + moment-alignment regulariser
(``L = L_task + lambda * (eta1 * L_supcon + eta2 * L_dist)``, lambda = 0.1), LoRA r=32 / alpha=64.

On a ``classifier`` base (ViT: LoRA on query / key / value; task loss = BCE / cross-entropy) the
method registers the full model and the ablations of the paper's Table 4 as derived models:

| derived model suffix | what is switched off |
|---|---|
| ``fairmed-vlm`` | nothing (full) |
| ``fairmed-vlm-no-demo-prompts`` | demographic prompts in the concept texts |
| ``fairmed-vlm-no-fairness`` | the whole Stage 2 regulariser (lambda = 0) |
| ``fairmed-vlm-no-balanced`` | balanced sampling |
| ``fairmed-vlm-no-contrastive`` | the supervised contrastive term (eta1 = 0; moment alignment stays) |

For LLaVA-family models the training step is in ``fairmed_llava.py`` (LoRA on the language model
only, selected by regex).
"""

from __future__ import annotations

from pydantic import Field

from ..backends.image.recipe import FairMed, Lora
from .base import MitigationConfig
from .imaging import ImagingMitigation

ABLATIONS = {
    "no-demo-prompts": {"demographic_prompts": False},
    "no-fairness": {"fairness": False},
    "no-balanced": {},  # balanced sampling off (recipe level)
    "no-contrastive": {"eta1": 0.0},
}


class FairMedVLMConfig(MitigationConfig):
    losses: FairMed = Field(default_factory=FairMed)
    lora: Lora | None = Field(default_factory=Lora)  # null: full fine-tuning instead of LoRA
    balanced: bool = True
    balance_max_ratio: float = Field(1.5, ge=1)
    lr: float | None = Field(None, gt=0)  # default: the base model's lr
    epochs: int | None = Field(None, gt=0)
    ablations: list[str] = Field(default_factory=lambda: list(ABLATIONS))


class FairMedVLM(ImagingMitigation):
    name = "fairmed-vlm"
    Config = FairMedVLMConfig

    def recipes(self, base, data, config, ctx):
        from ..errors import FairbenchError

        bad = [a for a in config.ablations if a not in ABLATIONS]
        if bad:
            raise FairbenchError(f"fairmed-vlm config field ablations: unknown {bad}; choose from {list(ABLATIONS)}.")
        common = {"lr": config.lr, "epochs": config.epochs, "balance_max_ratio": config.balance_max_ratio,
                  "lora": None if config.lora is None else config.lora.model_dump()}
        out = {self.name: {"method": self.name, "balanced": config.balanced, "fairmed": config.losses.model_dump(), **common}}
        for name in config.ablations:
            losses = config.losses.model_copy(update=ABLATIONS[name]).model_dump()
            balanced = False if name == "no-balanced" else config.balanced
            out[f"{self.name}-{name}"] = {"method": f"{self.name}-{name}", "balanced": balanced, "fairmed": losses, **common}
        return out
