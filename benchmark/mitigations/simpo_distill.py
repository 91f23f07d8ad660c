"""``simpo-distill`` (paper 000): SimPO distillation towards a teacher's demographic-neutral answers.

1. A teacher (any registered model; default: the base model itself) answers the demographic-neutral
   form of each mitigation case (placeholders replaced by neutral words, see ``neutral``).
2. The student (the base model) answers counterfactual forms, ``samples`` >= 2 per prompt, at
   ``temperature`` with the run seed.
3. Candidates are ranked by cosine similarity of all-MiniLM-L6-v2 embeddings to the teacher's
   answer: chosen = most similar, rejected = least. Pairs go to ``pairs.jsonl`` with similarities.
4. SimPO through ``trl.experimental.cpo.CPOTrainer`` (loss_type="simpo", cpo_alpha=0) with a PEFT
   LoRA adapter (paper code: r=18, alpha=32, dropout 0, q,k,v,o,gate,up,down), saved to
   ``adapter/`` and registered as ``<base>+simpo-distill``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import re
import time

from pydantic import Field, field_validator

from ..config import ModelSpec
from ..data.cases import Case
from ..errors import FairbenchError
from ..kinds.text.expand import PLACEHOLDER, Variant, expand
from ..kinds.text.prompts import build_requests
from ..registry import get
from ..requests import Request
from ..store import write_atomic
from .base import Context, Mitigation, MitigationConfig, ModelArtifact, TaskData

NEUTRAL = {"[race] ": "", "[race]": "", "[gender]": "patient", "[subject]": "they", "[possessive]": "their"}


class SimPOConfig(MitigationConfig):
    teacher: str | None = None  # a registered model; None: the base model (self-distillation)
    prompt_mode: str | None = None  # a generation mode of the task; None: its first one
    samples: int = Field(2, ge=2)  # student answers per counterfactual prompt
    temperature: float = Field(0.8, gt=0.0)
    max_new_tokens: int = Field(64, gt=0)
    variants_per_case: int | None = Field(2, ge=1)  # counterfactual forms per case (seeded); None: all
    neutral: dict[str, str] = Field(default_factory=lambda: dict(NEUTRAL))  # placeholder -> neutral text
    beta: float = Field(2.0, gt=0.0)  # SimPO beta (paper recommendation 2-10)
    simpo_gamma: float = Field(1.0, ge=0.0)  # SimPO gamma itself (gamma/beta = 0.5)
    learning_rate: float = Field(1e-4, gt=0.0)
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(4, ge=1)
    max_length: int | None = Field(None, ge=16)  # None: fit the longest prompt + answer of the pairs
    lora_r: int = Field(18, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    bf16: bool | None = None  # None: by device (native bf16 only)
    gradient_checkpointing: bool | None = None  # None: only when memory demands it

    @field_validator("neutral")
    @classmethod
    def _brackets(cls, v):
        bad = [k for k in v if not k.strip().startswith("[")]
        if bad:
            raise ValueError(f"keys must be task placeholders like [race], got {bad}")
        return v


def neutral_case(case: Case, card, neutral: dict[str, str]) -> Variant:
    """The case with every demographic placeholder replaced by neutral text ("Patient D" stays)."""
    fields = {}
    for name, text in case.fields.items():
        for alias, target in card.counterfactual.aliases.items():
            text = text.replace(alias, target)
        for placeholder in sorted(neutral, key=len, reverse=True):  # "[race] " before "[race]"
            text = text.replace(placeholder, neutral[placeholder])
        left = PLACEHOLDER.findall(text)
        if left:
            raise FairbenchError(
                f"{case.source}: field {name} keeps {', '.join(sorted(set(left)))} in its neutral form; "
                f"add them to the simpo-distill config field neutral."
            )
        fields[name] = re.sub(r" {2,}", " ", text)
    return Variant(case=case, attributes={}, fields=fields)


def _subset(variants: list[Variant], k: int | None, seed: int) -> list[Variant]:
    if k is None:
        return variants
    by_case: dict[str, list[Variant]] = {}
    for v in variants:
        by_case.setdefault(v.case.case_id, []).append(v)
    out = []
    for cid, vs in by_case.items():
        rng = random.Random(hashlib.sha256(f"{seed}|{cid}".encode()).digest())
        out += rng.sample(vs, min(k, len(vs)))
    return out


def _generation_mode(card, name: str | None) -> str:
    if name is None:
        name = next((m for m, spec in card.prompt_modes.items() if spec.method == "generate"), None)
        if name is None:
            raise FairbenchError(f"task {card.name} has no generation prompt mode; simpo-distill needs answers to rank.")
    if name not in card.prompt_modes or card.prompt_modes[name].method != "generate":
        raise FairbenchError(f"simpo-distill config prompt_mode: {name!r} is not a generation mode of task {card.name}.")
    return name


class SimPODistill(Mitigation):
    name = "simpo-distill"
    Config = SimPOConfig

    def apply(self, base: ModelSpec, data: TaskData, config: SimPOConfig, ctx: Context) -> ModelArtifact:
        from ..backends.embedder import embed_similarities
        from ..backends.hf import HFBackend

        if base.backend != "hf":
            raise FairbenchError(f'simpo-distill trains weights locally: model "{base.name}" uses backend {base.backend}, not hf.')
        card, seed = data.card, ctx.seed
        mode = _generation_mode(card, config.prompt_mode)
        q = card.questions[0]
        timings: dict[str, float] = {}

        # 1. Teacher answers the neutral form of each case (greedy).
        t0 = time.perf_counter()
        neutral = [neutral_case(c, card, config.neutral) for c in data.cases]
        teacher_reqs = [r for r in build_requests(card, neutral, mode, seed, max_new_tokens=config.max_new_tokens)
                        if r.question_id == q.id]
        teacher_reqs = [dataclasses.replace(r, max_new_tokens=config.max_new_tokens) for r in teacher_reqs]
        student = HFBackend(base, seed=seed)
        if config.teacher in (None, base.name):
            teacher_name, teacher = base.name, student
        else:
            tspec = ctx.models.get(config.teacher)
            teacher_name, teacher = tspec.name, get("backends", tspec.backend)(tspec, seed=seed)
        references = {r.case_id: res.raw_output or "" for r, res in zip(teacher_reqs, teacher.generate(teacher_reqs))}
        if teacher is not student:
            teacher.close()
        timings["teacher_seconds"] = time.perf_counter() - t0

        # 2. Student samples on counterfactual forms.
        t0 = time.perf_counter()
        variants = _subset(expand(data.cases, card.counterfactual, seed), config.variants_per_case, seed)
        prompts = [r for r in build_requests(card, variants, mode, seed, max_new_tokens=config.max_new_tokens,
                                             temperature=config.temperature) if r.question_id == q.id]
        sample_reqs: list[Request] = [dataclasses.replace(r, max_new_tokens=config.max_new_tokens, seed=seed * 1000 + k)
                                      for r in prompts for k in range(config.samples)]
        outputs = [res.raw_output or "" for res in student.generate(sample_reqs)]
        timings["student_seconds"] = time.perf_counter() - t0

        # 3. Rank by embedding similarity to the teacher's answer.
        t0 = time.perf_counter()
        cands = [outputs[i * config.samples : (i + 1) * config.samples] for i in range(len(prompts))]
        sims = embed_similarities([references[p.case_id] for p in prompts], cands)
        pairs, n_tied = [], 0
        for p, cs, s in zip(prompts, cands, sims):
            best, worst = int(s.argmax()), int(s.argmin())
            if cs[best].strip() == cs[worst].strip():
                n_tied += 1  # identical samples carry no preference; counted, not trained on
                continue
            pairs.append({
                "case_id": p.case_id, "attributes": p.attributes, "prompt": student.render(p.prompt),
                "chosen": cs[best], "rejected": cs[worst], "reference": references[p.case_id],
                "sim_chosen": round(float(s[best]), 6), "sim_rejected": round(float(s[worst]), 6),
                "similarities": [round(float(x), 6) for x in s],
            })
        pairs_file = ctx.out_dir / "pairs.jsonl"
        write_atomic(pairs_file, "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in pairs))
        timings["embed_seconds"] = time.perf_counter() - t0
        if not pairs:
            raise FairbenchError("simpo-distill: every candidate pair was identical; raise temperature or samples in the config.")

        # 4. SimPO with LoRA on the student (loaded from the converted safetensors cache, trainable).
        t0 = time.perf_counter()
        log = train_simpo(student, pairs, config, ctx)
        timings["train_seconds"] = time.perf_counter() - t0
        student.close()
        return ModelArtifact(
            ctx.out_dir,
            {"simpo-distill": {"adapter": str((ctx.out_dir / "adapter").resolve())}},
            {
                "teacher": teacher_name, "prompt_mode": mode, "n_prompts": len(prompts), "n_pairs": len(pairs),
                "n_identical_pairs_skipped": n_tied,
                "mean_sim_chosen": round(sum(p["sim_chosen"] for p in pairs) / len(pairs), 6),
                "mean_sim_rejected": round(sum(p["sim_rejected"] for p in pairs) / len(pairs), 6),
                "pairs_file": "pairs.jsonl", "training": log,
                **{k: round(v, 3) for k, v in timings.items()},
            },
        )


def train_simpo(backend, pairs: list[dict], config: SimPOConfig, ctx: Context) -> dict:
    from datasets import Dataset
    from trl.experimental.cpo import CPOTrainer

    from .training import lora_config, simpo_args

    model, tok = backend.model, backend.tokenizer
    model.train()
    # A prompt that fills max_length leaves an empty completion, whose mean log-probability is NaN.
    longest = max(len(tok(p["prompt"] + p[side]).input_ids) for p in pairs for side in ("chosen", "rejected"))
    prompt_max = max(len(tok(p["prompt"]).input_ids) for p in pairs)
    if config.max_length is None:
        config = config.model_copy(update={"max_length": longest})
    elif prompt_max >= config.max_length:
        raise FairbenchError(
            f"simpo-distill: max_length {config.max_length} is not longer than the longest prompt "
            f"({prompt_max} tokens), so answers would be truncated away. Raise max_length or leave it unset."
        )
    args = simpo_args(config, backend.device, ctx.out_dir / "trainer", ctx.seed, model)
    dataset = Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs])
    tok.padding_side = "right"
    trainer = CPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok, peft_config=lora_config(config))
    result = trainer.train()
    trainer.model.save_pretrained(str(ctx.out_dir / "adapter"))
    tok.padding_side = "left"
    history = [{k: (round(v, 6) if math.isfinite(v) else None) if isinstance(v, float) else v for k, v in h.items()}
               for h in trainer.state.log_history]
    if not math.isfinite(float(result.training_loss)) or any(h.get("grad_norm", 0) is None for h in history):
        raise FairbenchError("simpo-distill: training produced non-finite losses or gradients; see "
                             f"{ctx.out_dir / 'trainer'} and lower learning_rate or check max_length.")
    return {"global_steps": result.global_step, "train_loss": round(float(result.training_loss), 6),
            "max_length": config.max_length, "bf16": args.bf16,
            "gradient_checkpointing": args.gradient_checkpointing, "log_history": history}
