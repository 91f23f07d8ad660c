"""``simpo-distill`` (paper 000): SimPO distillation towards a teacher's demographic-neutral answers,
in two forms (config ``mode``), each registered as its own derived model.

Paper 000 (and its code): a teacher answers the demographic-neutral prompt; the student answers the
counterfactual prompts several times; the candidates are ranked by cosine similarity of sentence
embeddings to the teacher's answer (chosen = most similar, rejected = least similar); SimPO with
LoRA.

``mode: choice`` (default, ``<base>+simpo-distill``): every step works in the format fairbench's
choice audit scores (the log-probability of each option's tokens right after the rendered chat prompt):

1. **Teacher.** A registered model (default: the base model itself, i.e. *self-distillation*, which
   is what the manifest, the derived model's description and the README call it) scores the options
   of the neutral form of each mitigation case (placeholders replaced by neutral words, see
   ``neutral``) in the task's choice prompt mode; its answer is the option it scores highest, as
   the audit's decision.
2. **Student candidates.** The student (the base model) scores the options of ``variants_per_case``
   seeded counterfactual forms of each case; ``samples`` answers are drawn from its option
   distribution (softmax of the option log-probabilities / ``temperature``), seeded per prompt.
3. **Ranking.** all-MiniLM-L6-v2 cosine similarity of each sampled option text to the teacher's
   option text: chosen = most similar, rejected = least. A prompt whose samples are all the same
   option carries no preference and is counted, not trained on. Pairs go to ``pairs.jsonl``.
4. **Training format.** prompt = the chat prompt exactly as the audit renders it
   (``HFBackend.render`` of the request ``build_requests`` makes for the audit), chosen/rejected =
   the option as the audit scores it (``HFBackend.continuation``: the option text; after a plain
   completion prompt, with its leading space). TRL appends the EOS token to each response.

``mode: generate`` (the paper's form, ``<base>+simpo-distill-generate``; :func:`build_generated_pairs`):
the same steps on generated text in a free-text prompt mode (``method: generate``: ``explain``,
``cot``). The teacher *generates* a rationale and answer for the neutral case (greedy by default,
``teacher_temperature``); the student draws ``samples`` seeded generations per counterfactual prompt
(``HFBackend.sample_texts``: one ``num_return_sequences`` call per prompt, ``temperature``); MiniLM
cosine of each generated text to the teacher's text ranks them. Prompts whose samples are all the same
text are counted and skipped. prompt = the audit's rendered prompt of that mode, chosen/rejected = the
generated texts (+ EOS). Audited with the generative audit (``audits/generative.py``).

5. **SimPO** (both forms) through ``trl.experimental.cpo.CPOTrainer`` (loss_type="simpo", cpo_alpha=0)
   with a PEFT LoRA adapter (paper code: r=18, alpha=32, dropout 0, q,k,v,o,gate,up,down), saved to
   ``adapter/``.

Under ``accelerate launch`` / ``torchrun`` steps 1-3 run on the main process only (the pairs file is
the hand-over); every process trains on its shard through the trainer; only the main process saves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import re
import time
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from ..config import ModelSpec
from ..data.cases import Case
from ..errors import FairbenchError
from ..kinds.text.expand import PLACEHOLDER, Variant, expand
from ..kinds.text.prompts import build_requests
from ..registry import get
from ..store import write_atomic
from . import training as T
from .base import Context, Mitigation, MitigationConfig, ModelArtifact, TaskData

NEUTRAL = {"[race] ": "", "[race]": "", "[gender]": "patient", "[subject]": "they", "[possessive]": "their"}
PAIRS_FILE = "pairs.jsonl"
SUFFIX = {"choice": "simpo-distill", "generate": "simpo-distill-generate"}  # derived model <base>+<suffix>


class SimPOConfig(MitigationConfig):
    # choice: responses are the option continuations the audit scores; generate: the paper's form,
    # responses are generated texts (rationale and answer) in a free-text prompt mode.
    mode: Literal["choice", "generate"] = "choice"
    teacher: str | None = None  # a registered model; None: the base model (self-distillation)
    # choice: a choice mode, None = `mitigate --prompt-mode` (the audit's default); generate: a generate
    # mode, None = `--prompt-mode` when it is one, else the task's first generate mode.
    prompt_mode: str | None = None
    samples: int = Field(8, ge=2)  # student answers (choice) or generations (generate) per counterfactual prompt
    temperature: float = Field(1.0, gt=0.0)  # choice: on the option distribution; generate: the student's sampling
    teacher_temperature: float = Field(0.0, ge=0.0)  # generate: the teacher's decoding (0 = greedy)
    max_new_tokens: int | None = Field(None, ge=1)  # generate: None = the prompt mode's max_new_tokens (what the audit gets)
    variants_per_case: int | None = Field(None, ge=1)  # counterfactual forms per case (seeded); None: all
    neutral: dict[str, str] = Field(default_factory=lambda: dict(NEUTRAL))  # placeholder -> neutral text
    beta: float = Field(2.0, gt=0.0)  # SimPO beta (paper recommendation 2-10)
    simpo_gamma: float = Field(1.0, ge=0.0)  # SimPO gamma itself (gamma/beta = 0.5)
    learning_rate: float = Field(1e-4, gt=0.0)
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(4, ge=1)  # per process
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


def _rng(seed: int, *parts) -> np.random.Generator:
    digest = hashlib.sha256("|".join(map(str, (seed, *parts))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def choice_mode(card, name: str | None, default: str) -> str:
    """The prompt mode the pairs are built in: a choice mode (the format the audit scores)."""
    name = name or default
    if name not in card.prompt_modes or card.prompt_modes[name].method != "choice":
        choice = [m for m, spec in card.prompt_modes.items() if spec.method == "choice"]
        raise FairbenchError(f"simpo-distill trains on the answers the audit scores, so it needs a choice prompt mode; "
                             f"{name!r} is not one of task {card.name} (choice modes: {', '.join(choice) or 'none'}). "
                             "Set prompt_mode in the config or pass --prompt-mode.")
    return name


def generate_mode(card, name: str | None, default: str) -> str:
    """The prompt mode of ``mode: generate``: a free-text (generate) mode of the task."""
    generate = [m for m, spec in card.prompt_modes.items() if spec.method == "generate"]
    if name is None:
        name = default if default in generate else (generate[0] if generate else None)
    if name not in generate:
        raise FairbenchError(f"simpo-distill mode: generate trains on generated text, so it needs a generate prompt mode; "
                             f"{name!r} is not one of task {card.name} (generate modes: {', '.join(generate) or 'none'}). "
                             "Set prompt_mode in the config or pass --prompt-mode.")
    return name


def option_probabilities(logprobs: list[float], temperature: float = 1.0) -> np.ndarray:
    """Softmax over the option set of log P(option) / temperature (the audit normalises the same way)."""
    z = np.asarray(logprobs, dtype=np.float64) / temperature
    z = np.exp(z - z.max())
    return z / z.sum()


def build_pairs(student, teacher, card, cases: list[Case], mode: str, config: SimPOConfig, seed: int) -> tuple[list[dict], dict]:
    """Steps 1-3: preference pairs in the audited format. Returns (pairs, counts and timings)."""
    from ..backends.embedder import embed_similarities

    info: dict = {}
    t0 = time.perf_counter()
    neutral = [neutral_case(c, card, config.neutral) for c in cases]
    teacher_reqs = build_requests(card, neutral, mode, seed)
    teacher_answers = {}
    for r, res in zip(teacher_reqs, teacher.score_choices(teacher_reqs)):
        p = option_probabilities(res.option_logprobs)
        teacher_answers[(r.case_id, r.question_id)] = {"option": r.options[int(p.argmax())], "probabilities": p.round(6).tolist()}
    info["teacher_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    variants = _subset(expand(cases, card.counterfactual, seed), config.variants_per_case, seed)
    prompts = [r for r in build_requests(card, variants, mode, seed) if (r.case_id, r.question_id) in teacher_answers]
    scored = student.score_choices(prompts)
    draws = []
    for r, res in zip(prompts, scored):
        p = option_probabilities(res.option_logprobs, config.temperature)
        picks = _rng(seed, r.case_id, r.question_id, sorted(r.attributes.items())).choice(len(r.options), size=config.samples, p=p)
        draws.append([r.options[int(i)] for i in picks])
    info["student_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    references = [teacher_answers[(r.case_id, r.question_id)]["option"] for r in prompts]
    sims = embed_similarities(references, draws)
    pairs, n_same = [], 0
    for r, res, cands, s, ref in zip(prompts, scored, draws, sims, references):
        best, worst = int(s.argmax()), int(s.argmin())
        if cands[best] == cands[worst]:
            n_same += 1  # every sample gave the same option: no preference to learn
            continue
        pairs.append({
            "case_id": r.case_id, "question_id": r.question_id, "attributes": r.attributes,
            "prompt": student.render(r.prompt),
            "chosen": student.continuation(cands[best]), "rejected": student.continuation(cands[worst]),
            "chosen_option": cands[best], "rejected_option": cands[worst], "teacher_option": ref,
            "teacher_probabilities": teacher_answers[(r.case_id, r.question_id)]["probabilities"],
            "student_probabilities": option_probabilities(res.option_logprobs).round(6).tolist(),
            "samples": cands, "sim_chosen": round(float(s[best]), 6), "sim_rejected": round(float(s[worst]), 6),
        })
    info["embed_seconds"] = time.perf_counter() - t0
    info.update({"n_prompts": len(prompts), "n_single_option_prompts_skipped": n_same,
                 "n_teacher_prompts": len(teacher_reqs)})
    return pairs, info


def build_generated_pairs(student, teacher, card, cases: list[Case], mode: str, config: SimPOConfig,
                          seed: int) -> tuple[list[dict], dict]:
    """Steps 1-3 of the paper's generative form (``mode: generate``). Returns (pairs, counts and timings).

    The teacher generates on the neutral form of each case (``config.teacher_temperature``; 0 =
    greedy); the student draws ``config.samples`` seeded generations per counterfactual prompt
    (``student.sample_texts``, ``config.temperature``); all-MiniLM-L6-v2 cosine of each sample's text to
    the teacher's text ranks them: chosen = most similar, rejected = least. Counted and skipped: prompts
    whose teacher text is empty (no reference), whose samples are all the same text (no preference),
    and whose samples all have the same similarity (no order)."""
    from ..backends.embedder import embed_similarities
    from ..kinds.text.scoring import parse_answer

    def sized(reqs, temperature):  # sample 0 only: the k samples come from one seeded request
        return [dataclasses.replace(r, temperature=temperature, max_new_tokens=config.max_new_tokens or r.max_new_tokens)
                for r in reqs if r.sample == 0]

    def answer(text, r):
        return parse_answer(text, r.options, r.meta.get("option_wordings"))

    info: dict = {}
    t0 = time.perf_counter()
    neutral = [neutral_case(c, card, config.neutral) for c in cases]
    teacher_reqs = sized(build_requests(card, neutral, mode, seed), config.teacher_temperature)
    teacher_texts, n_empty_teacher = {}, 0
    for r, res in zip(teacher_reqs, teacher.generate(teacher_reqs)):
        text = (res.raw_output or "").strip()
        if not text:
            n_empty_teacher += 1  # no reference text to rank against
            continue
        teacher_texts[(r.case_id, r.question_id)] = {"text": text, "answer": answer(text, r)}
    info["teacher_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    variants = _subset(expand(cases, card.counterfactual, seed), config.variants_per_case, seed)
    prompts = [r for r in sized(build_requests(card, variants, mode, seed), config.temperature)
               if (r.case_id, r.question_id) in teacher_texts]
    draws = student.sample_texts(prompts, config.samples)
    info["student_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_identical = sum(len(set(d)) == 1 for d in draws)
    keep = [i for i, d in enumerate(draws) if len(set(d)) > 1]  # identical samples carry no preference
    references = [teacher_texts[(prompts[i].case_id, prompts[i].question_id)]["text"] for i in keep]
    sims = embed_similarities(references, [draws[i] for i in keep])
    pairs, n_tied = [], 0
    for i, s, ref in zip(keep, sims, references):
        r, cands = prompts[i], draws[i]
        best, worst = int(s.argmax()), int(s.argmin())
        if float(s[best]) == float(s[worst]):
            n_tied += 1  # distinct texts the embedder cannot tell apart: no order to learn
            continue
        pairs.append({
            "case_id": r.case_id, "question_id": r.question_id, "attributes": r.attributes,
            "prompt": student.render(r.prompt), "chosen": cands[best], "rejected": cands[worst],
            "chosen_answer": answer(cands[best], r), "rejected_answer": answer(cands[worst], r),
            "teacher_text": ref, "teacher_answer": teacher_texts[(r.case_id, r.question_id)]["answer"],
            "samples": cands, "similarities": [round(float(x), 6) for x in s],
            "sim_chosen": round(float(s[best]), 6), "sim_rejected": round(float(s[worst]), 6),
        })
    info["embed_seconds"] = time.perf_counter() - t0
    # The paper ranks by similarity alone, so texts without a parseable answer (e.g. cut off at
    # max_new_tokens) are kept; counted here so the manifest shows how often they are the target.
    info.update({"n_prompts": len(prompts), "n_identical_samples_prompts_skipped": n_identical,
                 "n_equal_similarity_prompts_skipped": n_tied, "n_teacher_prompts": len(teacher_reqs),
                 "n_empty_teacher_texts_skipped": n_empty_teacher,
                 "n_teacher_texts_without_answer": sum(t["answer"] is None for t in teacher_texts.values()),
                 "n_pairs_chosen_without_answer": sum(p["chosen_answer"] is None for p in pairs),
                 "n_pairs_rejected_without_answer": sum(p["rejected_answer"] is None for p in pairs)})
    return pairs, info


class SimPODistill(Mitigation):
    name = "simpo-distill"
    Config = SimPOConfig
    distributed = True  # every process of `accelerate launch` / `torchrun` trains its shard

    def artifact_name(self, config: SimPOConfig) -> str:
        return SUFFIX[config.mode]

    def check(self, base: ModelSpec, card, config: SimPOConfig, prompt_mode: str | None) -> None:
        if base.backend != "hf":
            raise FairbenchError(f'simpo-distill trains weights locally: model "{base.name}" uses backend {base.backend}, not hf.')
        (generate_mode if config.mode == "generate" else choice_mode)(card, config.prompt_mode, prompt_mode)

    def apply(self, base: ModelSpec, data: TaskData, config: SimPOConfig, ctx: Context) -> ModelArtifact:
        from ..backends.hf import HFBackend

        self.check(base, data.card, config, data.prompt_mode)  # apply may be called without the runner
        card, seed, generative = data.card, ctx.seed, config.mode == "generate"
        mode = (generate_mode if generative else choice_mode)(card, config.prompt_mode, data.prompt_mode)
        self_distill = config.teacher in (None, base.name)
        teacher_name = base.name if self_distill else ctx.models.get(config.teacher).name
        pairs_file = ctx.out_dir / PAIRS_FILE
        student = HFBackend(base, seed=seed)
        info: dict = {}
        if T.is_main_process():
            if self_distill:
                teacher = student
            else:
                tspec = ctx.models.get(config.teacher)
                teacher = get("backends", tspec.backend)(tspec, seed=seed)
            pairs, info = (build_generated_pairs if generative else build_pairs)(student, teacher, card, data.cases, mode, config, seed)
            if teacher is not student:
                teacher.close()
            write_atomic(pairs_file, "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in pairs))
        T.barrier()  # the other processes read the pairs the main process wrote
        pairs = [json.loads(line) for line in pairs_file.read_text(encoding="utf-8").splitlines()]
        if not pairs:
            what = "generated the same text (or texts the embedder ranks equal)" if generative else "gave the same option"
            raise FairbenchError(f"simpo-distill: the student {what} in every sample of every prompt, so there is "
                                 "no preference to train on; raise samples or temperature in the config.")
        t0 = time.perf_counter()
        log = train_simpo(student, pairs, config, ctx)
        info["train_seconds"] = time.perf_counter() - t0
        student.close()
        teacher_text = f"self-distillation ({base.name} is its own teacher)" if self_distill else f"teacher {teacher_name}"
        if generative:
            n_new = config.max_new_tokens or card.prompt_modes[mode].max_new_tokens
            form = f"generative form (prompt mode {mode}, {config.samples} sampled generations per prompt)"
            facts = {
                "response_format": (f"generate: the audit's rendered prompt of mode {mode}; responses are the student's "
                                    f"generated texts (rationale and answer, up to {n_new} new tokens, + EOS)"),
                "sampling": {"samples": config.samples, "temperature": config.temperature, "top_p": base.generation.top_p,
                             "max_new_tokens": n_new, "teacher_temperature": config.teacher_temperature},
                "n_pairs_chosen_answer_is_teacher_answer": sum(p["chosen_answer"] is not None and p["chosen_answer"] == p["teacher_answer"]
                                                               for p in pairs),
                "n_pairs_rejected_answer_is_teacher_answer": sum(p["rejected_answer"] is not None and p["rejected_answer"] == p["teacher_answer"]
                                                                 for p in pairs),
            }
        else:
            form = f"choice form (prompt mode {mode})"
            facts = {"response_format": "choice: the audit's rendered prompt; responses are the option continuations it scores (+ EOS)",
                     "n_pairs_chosen_is_teacher_option": sum(p["chosen_option"] == p["teacher_option"] for p in pairs)}
        return ModelArtifact(
            ctx.out_dir,
            {SUFFIX[config.mode]: {"adapter": str((ctx.out_dir / "adapter").resolve())}},
            {
                "form": config.mode, "teacher": teacher_name, "self_distillation": self_distill, "prompt_mode": mode,
                **facts, "n_pairs": len(pairs),
                "mean_sim_chosen": round(sum(p["sim_chosen"] for p in pairs) / len(pairs), 6),
                "mean_sim_rejected": round(sum(p["sim_rejected"] for p in pairs) / len(pairs), 6),
                "pairs_file": PAIRS_FILE, "training": log,
                **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in info.items()},
            },
            descriptions={SUFFIX[config.mode]: f"{teacher_text}; {form}"},
        )


def train_simpo(backend, pairs: list[dict], config: SimPOConfig, ctx: Context) -> dict:
    """SimPO with LoRA on ``backend.model`` over ``pairs`` (prompt, chosen, rejected); saves ``adapter/``
    (main process). Returns the training log, with the batches each process ran."""
    from datasets import Dataset
    from trl.experimental.cpo import CPOTrainer

    model, tok = backend.model, backend.tokenizer
    model.train()
    # A prompt that fills max_length leaves an empty completion, whose mean log-probability is NaN.
    longest = max(len(tok(p["prompt"] + p[side]).input_ids) for p in pairs for side in ("chosen", "rejected")) + 1  # + EOS
    prompt_max = max(len(tok(p["prompt"]).input_ids) for p in pairs)
    if config.max_length is None:
        config = config.model_copy(update={"max_length": longest})
    elif prompt_max >= config.max_length:
        raise FairbenchError(
            f"simpo-distill: max_length {config.max_length} is not longer than the longest prompt "
            f"({prompt_max} tokens), so answers would be truncated away. Raise max_length or leave it unset."
        )
    args = T.simpo_args(config, backend.device, ctx.out_dir / "trainer", ctx.seed, model)
    dataset = Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs])
    tok.padding_side = "right"
    trainer = CPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok, peft_config=T.lora_config(config))
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the log goes to the manifest; stdout is the command's output
    counter = T.BatchCounter()
    trainer.add_callback(counter)
    T.attach_progress(trainer, "simpo-distill training", ctx.quiet)
    result = trainer.train()
    tok.padding_side = "left"
    per_process = T.gather_counts(ctx.out_dir / "trainer", counter.batches, len(trainer.get_train_dataloader()))
    if T.is_main_process():
        trainer.model.save_pretrained(str(ctx.out_dir / "adapter"))
    history = [{k: (round(v, 6) if math.isfinite(v) else None) if isinstance(v, float) else v for k, v in h.items()}
               for h in trainer.state.log_history]
    if not math.isfinite(float(result.training_loss)) or any(h.get("grad_norm", 0) is None for h in history):
        raise FairbenchError("simpo-distill: training produced non-finite losses or gradients; see "
                             f"{ctx.out_dir / 'trainer'} and lower learning_rate or check max_length.")
    return {"global_steps": result.global_step, "train_loss": round(float(result.training_loss), 6),
            "max_length": config.max_length, "bf16": args.bf16, "world_size": args.world_size,
            "gradient_checkpointing": args.gradient_checkpointing, "per_process": per_process, "log_history": history}
