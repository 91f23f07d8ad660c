"""FairMed-VLM training for LLaVA-family models (paper 001): LoRA on the language model only, the
instruction / QA loss on the answer tokens, concept alignment and the cross-group fairness
regulariser on the answer-deciding representation.

The representation ``z`` of an example is the language model's last hidden state at the last
prompt token (the position that predicts the answer). It depends on the LoRA weights, so the
fairness terms can move it (the vision tower and projector stay frozen). Concept embeddings are
the same model's mean-pooled last hidden states of the concept texts, computed without gradient
(fixed targets for one step, like a frozen text tower).

Demographic prompts ("Patient: Female, Age group: 60-79.") are prefixed to the question by the
batch builder during training only; inference uses the plain question.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backends.image.losses import concept_infonce, fairness_loss
from ..backends.image.recipe import FairMed

# Only the language model's attention projections; the vision tower's q/k/v_proj do not match.
LLAVA_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"


def llava_lora_config(r: int = 32, alpha: int = 64, dropout: float = 0.0):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LLAVA_LORA_TARGETS)


@dataclass
class VLMBatch:
    input_ids: torch.Tensor  # (B, T) prompt (with image tokens) + answer
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor
    labels: torch.Tensor  # (B, T): answer token ids, -100 elsewhere
    y: torch.Tensor  # (B,) class / label of the primary endpoint (index into the concepts)
    strata: torch.Tensor  # (B,) intersectional group code (-1 unknown)
    attributes: torch.Tensor  # (B, K) per-attribute group codes (-1 unknown)


def concept_embeddings(model, concept_ids: torch.Tensor, concept_mask: torch.Tensor) -> torch.Tensor:
    """(C, D) mean-pooled last hidden states of the concept texts (no gradient)."""
    with torch.no_grad():
        h = model(input_ids=concept_ids, attention_mask=concept_mask, output_hidden_states=True).hidden_states[-1]
        m = concept_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1)


def fairmed_loss(model, batch: VLMBatch, concepts: torch.Tensor | None, fm: FairMed, stage2: bool) -> tuple[torch.Tensor, dict]:
    """L = L_qa + gamma * L_concept (+ lambda * (eta1 * L_supcon + eta2 * L_dist) in stage 2)."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values,
                labels=batch.labels, output_hidden_states=True)
    h = out.hidden_states[-1]
    first_answer = (batch.labels != -100).int().argmax(1)
    z = h[torch.arange(h.shape[0], device=h.device), (first_answer - 1).clamp(min=0)].float()
    loss, parts = out.loss, {"qa": float(out.loss.detach())}
    if concepts is not None and fm.concept and fm.gamma > 0:
        lc = concept_infonce(z, concepts.float(), batch.y, fm.tau_concept)
        loss = loss + fm.gamma * lc
        parts["concept"] = float(lc.detach())
    if stage2 and fm.fairness and fm.lam > 0:
        lf, fp = fairness_loss(z, batch.y, batch.strata, batch.attributes, eta1=fm.eta1, eta2=fm.eta2, tau=fm.tau,
                               margin=fm.margin, lambda_sigma=fm.lambda_sigma)
        loss = loss + fm.lam * lf
        parts.update(fp)
    parts["total"] = float(loss.detach())
    return loss, parts


def train_step(model, optimizer, batch: VLMBatch, concepts: torch.Tensor | None, fm: FairMed, stage2: bool = True) -> dict:
    model.train()
    loss, parts = fairmed_loss(model, batch, concepts, fm, stage2)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return parts
