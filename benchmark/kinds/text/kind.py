"""The text kind: cases -> counterfactual variants -> one prompt per (variant, question) -> scored
answers -> the audits the card names (counterfactual by default)."""

from __future__ import annotations

from ...data.cases import first_cases, sample_cases
from ...data.split import restrict
from ...data.text import load_cases
from ...errors import FairbenchError, unknown
from ..base import Kind, Prepared
from ..options import NORMALIZATIONS
from .evaluate import evaluate
from .expand import expand, variant_id
from .prompts import build_requests, check_fields, check_prompts_differ, n_samples, sample_seed


def _ids_digest(cases) -> str:
    """SHA-256 of the sorted case ids: which cases a sampled run audited, comparable across runs."""
    import hashlib

    return hashlib.sha256("\n".join(sorted({c.case_id for c in cases})).encode()).hexdigest()


def option_scoring(card, mode: str) -> dict | None:
    """What results.json records of an option-text mode (None for a labels mode): the scoring, the
    declared normalisation, its definition and the continuation's form."""
    m = card.prompt_modes[mode]
    if m.scoring != "option_text":
        return None
    return {"scoring": "option_text", "normalization": m.normalization, "definition": NORMALIZATIONS[m.normalization],
            "continuation": '" " + option text after the prompt (plain models); the bare option text as the '
                            "assistant's reply (chat templates)"}


class TextKind(Kind):
    name = "text"
    provides = ("rows", "instances")
    default_audits = ("counterfactual",)

    def check_backend(self, backend_cls, model_spec) -> None:
        if not {"choice", "generate"} <= set(backend_cls.methods):
            raise FairbenchError(
                f'task {self.card.name} is a text task but model "{model_spec.name}" uses the imaging backend '
                f'"{model_spec.backend}". Use a text model (fairbench list models).'
            )

    def prepare(self, spec, model_spec, models, backend_cls) -> Prepared:
        card = self.card
        mode = spec.prompt_mode or card.default_mode
        if mode not in card.prompt_modes:
            raise unknown("prompt mode", mode, card.prompt_modes, where=f"task {card.name}")
        scoring = option_scoring(card, mode)
        if scoring and not backend_cls.scores_continuations(model_spec):
            raise FairbenchError(
                f'model "{model_spec.name}": backend {backend_cls.name} cannot score mode {mode} of task {card.name} '
                f"(scoring: option_text needs the exact log-probability of every token of each option text). "
                f"Use a labels mode, or backend hf, llamacpp, vllm or openai with scoring_endpoint: completions."
            )
        if getattr(spec, "label_fraction", None) is not None:
            raise FairbenchError(f"task {card.name}: --label-fraction subsamples the train split of an imaging task whose model "
                                 "is trained by the run; text tasks have no training split. Drop --label-fraction "
                                 "(--sample N draws cases at random).")
        cases, report, files = load_cases(card, spec.data_dir)
        check_fields(card, cases)  # on the whole file: the fields and values the questions name exist
        n_cases_total = len({c.case_id for c in cases})
        # A derived model is audited on the cases its mitigation never saw (data/split.py).
        source = models.get(spec.cases_from) if spec.cases_from else model_spec
        cases, split_info = restrict(cases, source, card.name, required=spec.cases_from is not None)
        if spec.limit is not None:
            cases = first_cases(cases, spec.limit)  # N case ids, all their (pre-expanded) rows
        if getattr(spec, "sample", None) is not None:
            cases = sample_cases(cases, spec.sample, spec.seed)  # N case ids at random, seeded by --seed
        variants = expand(cases, card.counterfactual, spec.seed, report)
        requests = build_requests(card, variants, mode, spec.seed,
                                  max_new_tokens=model_spec.generation.max_new_tokens, temperature=spec.temperature)
        if not requests:
            raise FairbenchError(
                f"task {card.name}: none of the {len({c.case_id for c in cases})} selected case(s) is asked any question "
                f"(questions' applies_to). Select more cases (--limit, --sample) or check applies_to in the task card."
            )
        check_prompts_differ(card, mode, variants, requests, report)
        sampling = None
        if card.prompt_modes[mode].method == "generate":
            # What decides the generated text, recorded with the results (the drift noise floor needs it).
            k = n_samples(card.prompt_modes[mode], spec.temperature or 0.0)
            sampling = {"temperature": spec.temperature or 0.0, "top_p": model_spec.generation.top_p,
                        "max_new_tokens": card.prompt_modes[mode].max_new_tokens or model_spec.generation.max_new_tokens,
                        "samples_declared": card.prompt_modes[mode].samples, "samples": k,
                        "sample_seeds": [sample_seed(spec.seed, i) for i in range(k)],
                        **({"note": "greedy decoding (temperature 0): one sample per prompt, since further samples would "
                                    "repeat it; the drift noise floor needs --temperature > 0"}
                           if k < card.prompt_modes[mode].samples else {})}
        run_info = {"prompt_mode": mode, **({"option_scoring": scoring} if scoring else {}),
                    **({"sampling": sampling} if sampling else {}),
                    "n_cases": len({c.case_id for c in cases}), "n_cases_available": n_cases_total,
                    **({"sample": spec.sample, "sample_case_ids_sha256": _ids_digest(cases)} if getattr(spec, "sample", None) else {}),
                    **split_info}
        data_report = {"quirks": sorted(set(report.quirks)), "skipped": report.skipped}
        return Prepared(requests, mode, run_info, files, data_report, heldout=split_info.get("eval_case_ids_sha256"))

    def rows(self, requests, keys, cached) -> list[dict]:
        return [
            {"index": index, "key": key, "case_id": req.case_id, "question_id": req.question_id,
             "variant": variant_id(req.attributes), "attributes": req.attributes, "prompt": req.prompt,
             "options": req.options, "method": req.method, "meta": req.meta,
             **({"sample": req.sample} if req.sample else {}), **cached[key]}
            for index, (req, key) in enumerate(zip(requests, keys))
        ]

    def run_audits(self, data, seed: int) -> dict[str, dict]:
        """As :meth:`Kind.run_audits`; a run with generated text (``data.generations``) is audited by
        the ``generative`` audit in place of ``counterfactual``: the same counterfactual results, plus
        the generative metrics, all in one multiple-testing family (benchmark.audits.generative). A card
        naming ``generative`` gets it in every mode (on choice rows its section says it does not apply)."""
        names = self.audits()
        if "generative" in names or data.generations is not None:
            names = ["generative" if n == "counterfactual" else n for n in names]
            names = list(dict.fromkeys(names))  # a card naming both runs the extended audit once
        return super().run_audits(data, seed, names)

    def evaluate(self, rows, seed, run_info, data_report):
        return evaluate(self, rows, seed, run_info, data_report)
