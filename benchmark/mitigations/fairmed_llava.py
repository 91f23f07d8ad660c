"""FairMed-VLM training for LLaVA-family models (paper 001): LoRA on the language model's attention
projections and on the multimodal projector (the vision tower stays frozen), the QA loss on the
answer tokens, and -- on the pooled image embedding ``z = mean_tokens(Proj(VisionEnc(x)))``, the
paper's Sec. 3.4 representation -- the concept alignment and, in Stage 2, the cross-group fairness
regulariser.

Concept embeddings ``e_c`` are the mean of the language model's input token embeddings of the
concept text: the projector maps images into that same space, so ``z . e_c`` compares like with
like; the embedding table is frozen, so they are fixed targets.

The paper's instruction tuning (L_inst) and QA loss (L_qa) are one term here: the card's question
(``vlm.question`` for the primary endpoint) is the instruction and its option (``Yes`` / ``No``) the
answer, so the loss trains exactly what the run path's choice scoring reads.

Demographic prompts ("Patient: Female, Age group: 60-79. ") are prepended to the question in
training only (Sec. 3.3); validation and the audited model see the plain question.

Model selection: the checkpoint with the lowest validation QA loss among the Stage-2 epochs (epochs
``> stage1_epochs``), recorded with its epoch and stage. The selected LoRA weights are merged into
the base and saved as an ordinary HF LLaVA directory (``vlm`` backend), which ``fairbench run``
audits like any model.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..backends.image.balanced import augment, balanced_indices, strata_of
from ..backends.image.losses import concept_infonce, fairness_loss
from ..backends.image.recipe import (
    FairMed,
    Lora,
    codes,
    concept_texts,
    demographic_prefix,
)
from ..errors import FairbenchError
from ..requests import pil_image
from ..seeding import seed_everything

# The language model's attention projections and the multimodal projector; the vision tower's
# q/k/v_proj do not match (they sit under ``vision_tower``).
LLAVA_LORA_TARGETS = r".*(language_model.*\.(q_proj|k_proj|v_proj|o_proj)|multi_modal_projector\.linear_[12])"


def llava_lora_config(r: int = 32, alpha: int = 64, dropout: float = 0.0):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LLAVA_LORA_TARGETS)


@dataclass
class VLMBatch:
    input_ids: torch.Tensor  # (B, T) prompt (with image tokens, left-padded) + answer (right-padded)
    attention_mask: torch.Tensor  # (B, T)
    pixel_values: torch.Tensor  # (B, 3, H, W)
    labels: torch.Tensor  # (B, T): answer token ids, -100 elsewhere
    y: torch.Tensor  # (B,) class / label of the primary endpoint (index into the concepts)
    strata: torch.Tensor  # (B,) intersectional group code (-1 unknown)
    attributes: torch.Tensor  # (B, K) per-attribute group codes (-1 unknown)


def _projector(model) -> torch.nn.Module:
    for name, module in model.named_modules():
        if name.endswith("multi_modal_projector"):
            return module
    raise FairbenchError("fairmed-vlm: the model has no multi_modal_projector (not a LLaVA-family model).")


def pooled_image_embedding(model, batch: VLMBatch, **forward) -> tuple[torch.Tensor, object]:
    """(B, D) mean over image tokens of the projector output, and the model output of the same
    forward pass (``forward`` kwargs are passed on, e.g. ``labels``)."""
    store: list[torch.Tensor] = []
    handle = _projector(model).register_forward_hook(lambda m, i, o: store.append(o))
    try:
        positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values,
                    position_ids=positions, **forward)
    finally:
        handle.remove()
    feats = store[-1]
    feats = feats.reshape(batch.input_ids.shape[0], -1, feats.shape[-1])
    return feats.float().mean(1), out


def concept_embeddings(model, concept_ids: torch.Tensor, concept_mask: torch.Tensor) -> torch.Tensor:
    """(C, D) mean of the language model's input token embeddings of the concept texts (no gradient)."""
    with torch.no_grad():
        e = model.get_input_embeddings()(concept_ids).float()
        m = concept_mask.unsqueeze(-1).float()
        return (e * m).sum(1) / m.sum(1).clamp(min=1)


def fairmed_loss(model, batch: VLMBatch, concepts: torch.Tensor | None, fm: FairMed, stage2: bool) -> tuple[torch.Tensor, dict]:
    """L = L_qa + gamma * L_concept (+ lambda * (eta1 * L_supcon + eta2 * L_dist) in stage 2), all
    representation terms on the pooled image embedding."""
    z, out = pooled_image_embedding(model, batch, labels=batch.labels)
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


class _Batcher:
    """Rows of an ImagingDataset -> :class:`VLMBatch` through a loaded ``VLMBackend`` (its chat
    template, processor and option tokenisation, so training and scoring see the same prompt)."""

    def __init__(self, vb, card, ds, fm: FairMed):
        self.vb, self.card, self.ds = vb, card, ds
        label = card.primary()
        self.question = card.vlm.question.format(label=card.display(label))
        t = ds.targets()[:, list(card.labels).index(label)].astype(float)
        self.y = t
        negative = next(o for o in card.vlm.options if o != card.vlm.positive)
        self.answers = {1: card.vlm.positive, 0: negative}
        self.strata = strata_of(ds.frame)
        s_codes, _ = codes(self.strata)
        s_codes[self.strata == "unknown"] = -1
        self.s_codes = s_codes
        attrs = [codes(ds.frame[a])[0] for a in fm.attributes]
        self.attr = np.stack(attrs, 1) if attrs else np.zeros((len(ds), 0), int)

    def build(self, rows: list[int], augmented: list[bool], prompts: bool, seed: int, positions: list[int]) -> VLMBatch:
        vb = self.vb
        images = [pil_image(self.ds.read(i)) for i in rows]
        questions = [(demographic_prefix(self.strata[i]) if prompts else "") + self.question for i in rows]
        enc = vb._inputs(images, questions)
        pixel_values = enc["pixel_values"]
        for k, (aug, pos) in enumerate(zip(augmented, positions)):
            if aug:  # oversampled duplicate: light augmentation seeded by (seed, position)
                gen = torch.Generator().manual_seed(seed * 1_000_003 + pos)
                pixel_values[k] = augment(pixel_values[k].float().cpu(), gen).to(pixel_values)
        answers = [vb._option_ids(self.answers[int(self.y[i])]) for i in rows]
        width = max(len(a) for a in answers)
        pad = vb.tokenizer.pad_token_id
        ans = torch.full((len(rows), width), pad, dtype=enc["input_ids"].dtype)
        ans_mask = torch.zeros((len(rows), width), dtype=enc["attention_mask"].dtype)
        for k, a in enumerate(answers):
            ans[k, :len(a)] = torch.tensor(a)
            ans_mask[k, :len(a)] = 1
        ans, ans_mask = ans.to(enc["input_ids"].device), ans_mask.to(enc["input_ids"].device)
        input_ids = torch.cat([enc["input_ids"], ans], 1)
        labels = torch.cat([torch.full_like(enc["input_ids"], -100), ans.masked_fill(ans_mask == 0, -100)], 1)
        dev = input_ids.device
        return VLMBatch(input_ids, torch.cat([enc["attention_mask"], ans_mask], 1), pixel_values, labels,
                        torch.as_tensor(self.y[rows], dtype=torch.long, device=dev), torch.as_tensor(self.s_codes[rows], device=dev),
                        torch.as_tensor(self.attr[rows], device=dev))


def train_fairmed_llava(vb, card, train, val, fm: FairMed, lora: Lora | None, *, epochs: int, lr: float, batch_size: int,
                        balanced: bool, max_ratio: float, max_duplication: float, seed: int,
                        progress=None) -> tuple[torch.nn.Module, dict]:
    """Train the loaded ``VLMBackend`` ``vb``'s model with FairMed-VLM on ``train`` (selecting on
    ``val``) and return (the model with the selected LoRA weights merged, the training report).
    ``epochs`` must exceed ``fm.stage1_epochs``. Raises FairbenchError on an unsupported task."""
    if card.label_type == "multiclass":
        raise FairbenchError(f"fairmed-vlm on a vlm base trains the primary endpoint's yes/no question; task {card.name} "
                             "is multiclass. Use a binary or multilabel task, or a classifier base.")
    if epochs <= fm.stage1_epochs:
        raise FairbenchError(f"fairmed-vlm: epochs ({epochs}) must exceed losses.stage1_epochs ({fm.stage1_epochs}).")
    seed_everything(seed)
    model = vb.model
    if lora is not None:
        from peft import get_peft_model

        model = get_peft_model(model, llava_lora_config(lora.r, lora.alpha, lora.dropout))
    else:  # full fine-tuning of the language model and projector; the vision tower stays frozen
        for name, p in model.named_parameters():
            p.requires_grad = "vision_tower" not in name
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(list(params.values()), lr=lr)
    tr, va = _Batcher(vb, card, train, fm), _Batcher(vb, card, val, fm)
    rows = np.flatnonzero(~np.isnan(tr.y))
    info: dict = {}
    if balanced:
        order, dup, info = balanced_indices(tr.strata[rows], seed, max_ratio, max_duplication)
        order = rows[order]
    else:
        order, dup = rows, np.zeros(len(rows), bool)
    concepts = None
    if fm.concept and fm.gamma > 0:
        enc = vb.tokenizer(concept_texts(card), add_special_tokens=False, padding=True, return_tensors="pt")
        concepts = concept_embeddings(model, enc.input_ids.to(vb.device), enc.attention_mask.to(vb.device))
    val_rows = np.flatnonzero(~np.isnan(va.y))
    report = {"train_loss": [], "val_loss": [], "terms": {}, "balanced": info, "n_trainable": sum(p.numel() for p in params.values()),
              "lora_targets": LLAVA_LORA_TARGETS if lora is not None else None, "demographic_prompts": fm.demographic_prompts}
    best, best_state, best_epoch = math.inf, None, 0
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        stage2 = epoch >= fm.stage1_epochs
        perm = rng.permutation(len(order))
        sums: dict[str, float] = {}
        n_steps = 0
        for start in range(0, len(perm), batch_size):
            pos = perm[start:start + batch_size]
            batch = tr.build([int(order[j]) for j in pos], [bool(dup[j]) for j in pos], fm.demographic_prompts, seed, [int(j) for j in pos])
            parts = train_step(model, opt, batch, concepts, fm, stage2)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            n_steps += 1
        for k, v in sums.items():
            report["terms"].setdefault(k, [None] * epoch).append(round(v / max(n_steps, 1), 6))
        report["train_loss"].append(round(sums.get("total", 0.0) / max(n_steps, 1), 6))
        vloss = _val_loss(model, va, val_rows, batch_size, seed)
        report["val_loss"].append(round(vloss, 6))
        if progress is not None:
            progress(epoch + 1, report["train_loss"][-1], vloss)
        if stage2 and vloss < best:
            best, best_epoch = vloss, epoch + 1
            best_state = {n: copy.deepcopy(p.detach()) for n, p in params.items()}
    seconds = time.perf_counter() - t0
    if best_state is None:
        raise FairbenchError(f"fairmed-vlm: no Stage-2 epoch had a finite validation loss (val losses {report['val_loss']}); "
                             "lower lr or check the validation split.")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(best_state[n])
    if lora is not None:
        model = model.merge_and_unload()
    model.eval()
    report.update({"epochs_run": epochs, "seconds": round(seconds, 3), "seconds_per_epoch": round(seconds / epochs, 3),
                   "selection": {"criterion": fm.selection, "eligible_epochs": [fm.stage1_epochs + 1, epochs],
                                 "epoch": best_epoch, "stage": 2}})
    return model, report


def _val_loss(model, batcher: _Batcher, rows: np.ndarray, batch_size: int, seed: int) -> float:
    """Mean validation QA loss per answer token, with the plain question (as audited)."""
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = [int(i) for i in rows[start:start + batch_size]]
            b = batcher.build(chunk, [False] * len(chunk), False, seed, chunk)
            out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, pixel_values=b.pixel_values,
                        position_ids=(b.attention_mask.cumsum(-1) - 1).clamp(min=0), labels=b.labels)
            k = int((b.labels[:, 1:] != -100).sum())
            total += float(out.loss) * k
            n += k
    return total / max(n, 1)
