"""Text requests: one prompt per (counterfactual variant, question), in the chosen prompt mode."""

from __future__ import annotations

import ast
import re
from collections import defaultdict

from ...cards.base import check_labels
from ...cards.text import PromptMode, Question, TaskCard
from ...data.cases import Case, LoadReport
from ...errors import FairbenchError
from ...requests import Request
from .expand import Variant, variant_id

_LABELLED = re.compile(r"^\s*([A-Za-z0-9]{1,3})\s*[.)]\s*(.+?)\s*$", re.DOTALL)


def options_phrase(options: list[str]) -> str:
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]


def question_options(q: Question, fields: dict[str, str], source: str = "") -> tuple[list[str], list[str]]:
    """(labels, wordings) of a question for one case. Labels are what is scored or parsed
    ("Yes", "3", "b"); wordings are listed in the prompt ("Neutral", "Admit for observation")."""
    if q.options_field is None:
        return list(q.options), [q.option_labels.get(o, "") for o in q.options]
    raw = fields.get(q.options_field, "")
    try:
        items = ast.literal_eval(raw) if raw.strip().startswith("[") else [x for x in raw.splitlines() if x.strip()]
    except (ValueError, SyntaxError):
        items = None
    parsed = [_LABELLED.match(str(x)) for x in items] if isinstance(items, (list, tuple)) else [None]
    if not items or any(m is None for m in parsed):
        raise FairbenchError(
            f"{source}: field {q.options_field} of question {q.id} must be a list of labelled options like "
            f"\"['a) ...', 'b) ...']\"; got {raw[:60]!r}. Fix the data or the question's options_field."
        )
    labels = [m.group(1) for m in parsed]
    wordings = [m.group(2) for m in parsed]
    if len(labels) < 2:
        raise FairbenchError(f"{source}: options of question {q.id} need at least 2 distinct labels, got {labels}.")
    # The parser and accuracy match labels without case, and wordings without case and surrounding
    # " ." (scoring.py): "a)"/"A)" or two wordings "Aspirin"/"aspirin." are one answer to them, so the
    # row could never be scored as asked. A data error, refused like a malformed options field.
    try:
        check_labels(f"labels {labels}", labels)
        check_labels("wordings", [w.strip(" .") for w in wordings])
    except ValueError as exc:
        raise FairbenchError(
            f"{source}: field {q.options_field} of question {q.id}: {exc}, also ignoring case and a trailing '.'. "
            f"Fix the data row: every option needs its own label and wording."
        ) from None
    return labels, wordings


def option_list(labels: list[str], wordings: list[str]) -> str:
    return "\n".join(f"{lab}. {w}" if w else lab for lab, w in zip(labels, wordings))


def option_texts(q: Question, labels: list[str], wordings: list[str], source: str, mode_name: str) -> list[str]:
    """The continuations an ``option_text`` mode scores: each option's wording, or its label where
    it has none ("Yes"). They must differ (ignoring case and surrounding space), else two options
    would get the same score."""
    texts = [(w or lab).strip() for lab, w in zip(labels, wordings)]
    try:
        check_labels("option texts", texts)
    except ValueError as exc:
        raise FairbenchError(
            f"{source}: question {q.id}: {exc}; mode {mode_name} "
            f"(scoring: option_text) cannot tell them apart. Fix the data or use a mode that scores the labels."
        ) from None
    return texts


def applies(q: Question, fields: dict[str, str]) -> bool:
    return all(fields.get(k) == v for k, v in q.applies_to.items())


def _card_file(card: TaskCard) -> str:
    return str(card.directory / "task.yaml") if card.directory is not None else f"task {card.name}"


def check_fields(card: TaskCard, cases: list[Case]) -> None:
    """The case fields a card's questions name exist in the data (``cases``: every loaded case, before
    any --limit or split, since only the whole file shows which fields and values it has).

    A field that no case has cannot be told from a typo only once the data is read: an ``applies_to``
    field or value that matches no case would drop its question silently (or every question, leaving
    a run without requests), a missing ``reference_field`` would make every reference '' and accuracy
    silently absent, a missing ``options_field`` would read as malformed options. Raises
    FairbenchError naming the card, the field and the names the data has."""
    known = sorted(set().union(*(c.fields for c in cases))) if cases else []
    where = _card_file(card)

    def listing(names) -> str:
        names = sorted(names)
        return ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")

    for q in card.questions:
        named = [(f"applies_to.{k}", k) for k in q.applies_to]
        named += [("reference_field", q.reference_field)] if q.reference_field else []
        named += [("options_field", q.options_field)] if q.options_field else []
        for field, name in named:
            if name not in known:
                raise FairbenchError(
                    f"{where}: field questions.{q.id}.{field}: {name!r} is no field of the cases "
                    f"(known: {listing(known)}). Fix the name in the task card."
                )
        for k, v in q.applies_to.items():
            values = {c.fields[k] for c in cases if k in c.fields}
            if v not in values:
                raise FairbenchError(
                    f"{where}: field questions.{q.id}.applies_to.{k}: no case has {k} = {v!r}, so the question would "
                    f"never be asked (values in the data: {listing(map(repr, values))}). Fix the value in the task card."
                )
        if q.reference_field and not any(c.fields.get(q.reference_field, "").strip() for c in cases if applies(q, c.fields)):
            raise FairbenchError(
                f"{where}: field questions.{q.id}.reference_field: {q.reference_field!r} is empty in every case the "
                f"question is asked of, so accuracy could not be measured. Name the field holding the answer, or remove reference_field."
            )


def check_prompts_differ(card: TaskCard, mode_name: str, variants: list[Variant], requests: list[Request],
                         report: LoadReport | None) -> None:
    """Variants that differ in the case's fields but not in the prompt the model sees are not a
    counterfactual: their paired comparisons are exact ties that read as "fair". Expansion compares
    the fields (``expand._drop_identical``); this compares the built prompts of each (case, question),
    per attribute, among the variants that agree on the other attributes.

    - Where an attribute's values give the same prompt in **every** case asked the question, the card
      cannot express them (a template that omits the fields the attribute fills, substitutions or
      names that render two values alike): FairbenchError naming the card field and the fix.
    - Where only some cases do, each is a quirk in ``report`` (its comparisons of those values are
      ties), unless expansion already reported that the case's text ignores the attribute."""
    fields_of = {(v.case.case_id, v.variant_id): v.fields for v in variants}
    by_cq: dict[tuple[str, str], list[Request]] = defaultdict(list)
    for r in requests:
        if r.sample == 0:  # the extra samples of a variant repeat its prompt by design
            by_cq[(r.case_id, r.question_id)].append(r)
    attrs = card.counterfactual.attributes
    compared: dict[tuple[str, str], set[str]] = defaultdict(set)
    # (question, attribute) -> case -> (value pairs with one prompt, fields that differ between them)
    tied: dict[tuple[str, str], dict[str, tuple[set, set]]] = defaultdict(dict)
    fields_vary: set[tuple[str, str]] = set()  # (case, attribute): the fields change with it somewhere
    for (cid, qid), rs in by_cq.items():
        for attr in attrs:
            blocks: dict[tuple, list[Request]] = defaultdict(list)
            for r in rs:
                blocks[tuple((a, x) for a, x in r.attributes.items() if a != attr)].append(r)
            pairs: set[tuple[str, ...]] = set()
            differ: set[str] = set()
            for block in blocks.values():
                if len(block) < 2:
                    continue
                compared[(qid, attr)].add(cid)
                fs = [fields_of.get((cid, variant_id(r.attributes)), {}) for r in block]
                if len({tuple(sorted(f.items())) for f in fs}) > 1:
                    fields_vary.add((cid, attr))
                by_prompt: dict[str, list[int]] = defaultdict(list)
                for i, r in enumerate(block):
                    by_prompt[r.prompt].append(i)
                for idx in by_prompt.values():
                    if len(idx) > 1:
                        order = attrs[attr].values
                        pairs.add(tuple(sorted({block[i].attributes[attr] for i in idx}, key=order.index)))
                        differ |= {k for i in idx[1:] for k in fs[i] if fs[i][k] != fs[idx[0]].get(k)}
            if pairs:
                tied[(qid, attr)][cid] = (pairs, differ)
    for (qid, attr), cases in tied.items():
        pairs = sorted({p for ps, _ in cases.values() for p in ps})
        shown = "; ".join(" and ".join(p) for p in pairs)
        if set(cases) == compared[(qid, attr)]:
            differ = sorted({f for _, d in cases.values() for f in d})
            if differ:
                fix = (f"prompt_modes.{mode_name}.template and questions.{qid}.text do not use the field(s) "
                       f"{', '.join(differ)} that carry {attr}; add {{{differ[0]}}} to the template or the question text")
            else:
                subs = [p for p, rule in card.counterfactual.substitutions.items()
                        if isinstance(rule, dict) and attr in rule
                        and any(len({rule[attr][v] for v in pair}) == 1 for pair in pairs)]
                by = f"counterfactual.substitutions {', '.join(subs)}" if subs else "counterfactual.substitutions (or names)"
                fix = f"{by} fill the same text for these values; give each value of {attr} its own wording"
            raise FairbenchError(
                f"{_card_file(card)}: the prompt of question {qid} (mode {mode_name}) is the same for {attr} {shown} in "
                f"every case, so the audit could only report ties: {fix}."
            )
        if report is None:
            continue
        for cid, (ps, _) in sorted(cases.items()):
            if (cid, attr) not in fields_vary:
                continue  # expansion reported it: the case's text does not change with attr
            report.quirks.append(
                f"case {cid}: the prompt of question {qid} is the same for {attr} "
                f"{'; '.join(' and '.join(p) for p in sorted(ps))}; those {attr} comparisons are ties"
            )


def _examples_text(card: TaskCard, mode: PromptMode) -> str:
    if not mode.examples:
        return ""
    assert card.directory is not None
    path = card.directory / mode.examples
    if not path.is_file():
        raise FairbenchError(f"task {card.name}: prompt examples file {path} is missing.")
    return path.read_text(encoding="utf-8").strip()


def sample_seed(seed: int, sample: int) -> int:
    """The seed of sample ``sample`` of a prompt: the run seed for sample 0 (its historical request),
    a SHA-256 derived 31-bit seed otherwise, so that sample 1 of seed s is not sample 0 of seed s + 1
    (the samples of one run stay independent of other runs' seeds)."""
    if sample == 0:
        return seed
    import hashlib

    return int(hashlib.sha256(f"{seed}|sample{sample}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def n_samples(mode: PromptMode, temperature: float) -> int:
    """Samples drawn per prompt: the mode's ``samples`` when the run samples, else 1 (greedy decoding
    would repeat the first sample exactly, and a noise floor of 0 would be a placeholder)."""
    return mode.samples if mode.method == "generate" and temperature > 0 else 1


def build_requests(
    card: TaskCard,
    variants: list[Variant],
    mode_name: str,
    seed: int,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
) -> list[Request]:
    if mode_name not in card.prompt_modes:
        from ...errors import unknown

        raise unknown("prompt mode", mode_name, card.prompt_modes, where=f"task {card.name}")
    mode = card.prompt_modes[mode_name]
    examples = _examples_text(card, mode)
    requests = []
    for v in variants:
        for q in card.questions:
            if not applies(q, v.fields):
                continue
            labels, wordings = question_options(q, v.fields, v.case.source)
            try:
                question = q.text.format(**v.fields)
                prompt = mode.template.format(
                    context=v.fields.get("context", ""),
                    question=question,
                    options=options_phrase(labels),
                    option_list=option_list(labels, wordings),
                    examples=examples,
                    **{k: val for k, val in v.fields.items() if k not in {"context", "question", "options", "option_list", "examples"}},
                )
            except KeyError as exc:
                raise FairbenchError(
                    f"task {card.name}: template of mode {mode_name} or question {q.id} uses "
                    f"{{{exc.args[0]}}}, which the loader does not provide."
                ) from None
            scored, extra = labels, {}
            if mode.scoring == "option_text":
                scored = option_texts(q, labels, wordings, v.case.source, mode_name)
                extra = {"option_labels": labels, "option_scoring": {"scoring": "option_text", "normalization": mode.normalization}}
            meta = {
                "subset": v.case.subset,
                "reference": v.fields.get(q.reference_field or "", ""),
                **({"option_wordings": wordings} if any(wordings) else {}),
                **extra,
            }
            for k in range(n_samples(mode, temperature)):
                requests.append(
                    Request(
                        case_id=v.case.case_id,
                        question_id=q.id,
                        attributes=v.attributes,
                        prompt=prompt.strip(),
                        options=scored,
                        method=mode.method,
                        max_new_tokens=mode.max_new_tokens or max_new_tokens,
                        temperature=temperature,
                        seed=sample_seed(seed, k),
                        meta=dict(meta),
                        sample=k,
                    )
                )
    return requests
