"""Counterfactual expansion: every case x every combination of the declared attribute values.

Variants keep the case id, so that audits can pair them. Names are drawn with a seed from the
card's per-group pools, and the same case and group always get the same name.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from dataclasses import dataclass

from ...cards.text import Counterfactual
from ...data.cases import Case, LoadReport
from ...errors import FairbenchError

# Placeholder styles of the official files: "[race]" (Q-Pain) and "@Race" (Healer cases).
PLACEHOLDER = re.compile(r"\[[A-Za-z_]+\]|(?<![\w@.])@[A-Za-z]+\b")


@dataclass(frozen=True)
class Variant:
    case: Case
    attributes: dict[str, str]  # e.g. {"race": "Black", "gender": "woman"}
    fields: dict[str, str]  # the case fields with every placeholder filled in

    @property
    def variant_id(self) -> str:
        return variant_id(self.attributes)


def variant_id(attributes: dict[str, str]) -> str:
    return "|".join(f"{k}={v}" for k, v in attributes.items())


def attribute_grid(cf: Counterfactual, skip: frozenset[str] | set[str] = frozenset()) -> list[dict[str, str]]:
    names = [n for n in cf.attributes if n not in skip]
    return [dict(zip(names, combo)) for combo in itertools.product(*(cf.attributes[n].values for n in names))]


def leftover_placeholders(text: str, cf: Counterfactual) -> list[str]:
    """Placeholders still in ``text``: the generic styles plus any key the card declares."""
    found = set(PLACEHOLDER.findall(text))
    found |= {p for p in (*cf.substitutions, *cf.aliases) if p in text}
    return sorted(found)


def _canonical(case: Case, cf: Counterfactual) -> dict[str, str]:
    """Map a pre-expanded row's raw demographic values to the card's canonical values."""
    out = {}
    for attr, spec in cf.pre_expanded.items():
        column = spec.column or attr
        if column not in case.attributes:
            raise FairbenchError(
                f"{case.source}: no value for column {column!r}, which counterfactual.pre_expanded.{attr} reads. "
                f"Fix pre_expanded.{attr}.column in the task card."
            )
        raw = case.attributes[column]
        if raw not in spec.values:
            raise FairbenchError(
                f"{case.source}: {column}={raw!r} is not mapped. Add it to counterfactual.pre_expanded.{attr}.values "
                f"in the task card (known: {', '.join(spec.values)})."
            )
        out[attr] = spec.values[raw]
    return out


def _draw_name(cf: Counterfactual, case_id: str, attrs: dict[str, str], seed: int) -> str:
    assert cf.names is not None
    key = "|".join(attrs[a] for a in cf.names.key)
    # A hash-derived RNG per (seed, case, group): independent of expansion order and of --limit.
    digest = hashlib.sha256(f"{seed}|{case_id}|{key}".encode()).digest()
    return random.Random(digest).choice(cf.names.pools[key])


def fill(text: str, cf: Counterfactual, attrs: dict[str, str], name: str | None) -> str:
    for alias, target in cf.aliases.items():
        text = text.replace(alias, target)
    for placeholder, rule in cf.substitutions.items():
        if isinstance(rule, str):
            value = rule.format(**attrs)
        else:
            (attr, table), = rule.items()
            value = table[attrs[attr]]
        text = text.replace(placeholder, value)
    if name is not None and cf.names is not None:
        text = text.replace(cf.names.placeholder, name)
    return text


def expand(cases: list[Case], cf: Counterfactual, seed: int, report: LoadReport | None = None) -> list[Variant]:
    """All variants of all cases. A placeholder left in any text is an error naming the case."""
    if report is not None:
        for case in cases:
            for field_name, text in case.fields.items():
                for alias in cf.aliases:
                    if alias in text:
                        report.quirks.append(
                            f"{case.source}: field {field_name} has {alias}; read as {cf.aliases[alias]}"
                        )
    variants = []
    seen: dict[tuple[str, str], str] = {}
    fixed = set(cf.pre_expanded)
    order = list(cf.attributes)
    for case in cases:
        given = _canonical(case, cf) if fixed else {}
        for free in attribute_grid(cf, fixed):
            attrs = {a: (given[a] if a in given else free[a]) for a in order}
            name = _draw_name(cf, case.case_id, attrs, seed) if cf.names else None
            fields = {k: fill(v, cf, attrs, name) for k, v in case.fields.items()}
            for field_name, text in fields.items():
                left = leftover_placeholders(text, cf)
                if left:
                    raise FairbenchError(
                        f"{case.source}: field {field_name} keeps placeholder(s) {', '.join(left)} "
                        f"after substitution. Add them to counterfactual.substitutions or aliases in the task card."
                    )
            key = (case.case_id, variant_id(attrs))
            if key in seen:
                raise FairbenchError(
                    f"{case.source}: case {case.case_id} has variant {key[1]} twice (also {seen[key]}). "
                    f"Check counterfactual.pre_expanded in the task card: two raw values map to one group."
                )
            seen[key] = case.source
            variants.append(Variant(case=case, attributes=attrs, fields=fields))
    variants = _drop_identical(variants, cf, report)
    if fixed and report is not None:
        expected = len(attribute_grid(cf))
        counts: dict[str, int] = {}
        for v in variants:
            counts[v.case.case_id] = counts.get(v.case.case_id, 0) + 1
        for cid, n in counts.items():
            if n < expected:
                report.quirks.append(
                    f"case {cid}: {n} of {expected} demographic variants in the data; paired tests use complete blocks only"
                )
    return variants


def _drop_identical(variants: list[Variant], cf: Counterfactual, report: LoadReport | None) -> list[Variant]:
    """Cases whose variants are not actually different cannot show a demographic effect: pairing them
    adds exact zeros that read as "fair". A case whose text is the same in every variant is skipped
    (with the reason); a case whose text does not change with one attribute is a quirk (its paired
    blocks for that attribute are all ties); an attribute that changes no case at all is an error
    (the card's substitutions or the data never mention it)."""
    by_case: dict[str, list[Variant]] = {}
    for v in variants:
        by_case.setdefault(v.case.case_id, []).append(v)
    if not by_case:
        return variants
    changes: dict[str, int] = {a: 0 for a in cf.attributes}
    skip: set[str] = set()
    for cid, vs in by_case.items():
        texts = {tuple(sorted(v.fields.items())) for v in vs}
        if len(vs) > 1 and len(texts) == 1:
            skip.add(cid)
            if report is not None:
                report.skipped.append(f"case {cid}: the text is the same in all {len(vs)} demographic variants "
                                      f"(no placeholder filled), so it cannot show a demographic effect")
            continue
        for attr in cf.attributes:
            blocks: dict[tuple, set] = {}
            for v in vs:
                key = tuple((a, x) for a, x in v.attributes.items() if a != attr)
                blocks.setdefault(key, set()).add(tuple(sorted(v.fields.items())))
            if any(len(b) > 1 for b in blocks.values()):
                changes[attr] += 1
            elif report is not None and any(len([v for v in vs if tuple((a, x) for a, x in v.attributes.items() if a != attr) == k]) > 1
                                            for k in blocks):
                report.quirks.append(f"case {cid}: the text does not change with {attr}; its {attr} comparisons are ties")
    dead = [a for a, n in changes.items() if n == 0]
    if dead and len(skip) < len(by_case):
        raise FairbenchError(
            f"counterfactual attribute(s) {', '.join(dead)} change the text of no case: no substitution or data column "
            f"fills them, so the audit could only report ties. Add a placeholder for them to counterfactual.substitutions "
            f"(or names) in the task card, or remove the attribute."
        )
    if len(skip) == len(by_case):
        raise FairbenchError(
            "no case's text changes between its demographic variants: no placeholder of counterfactual.substitutions "
            "occurs in the data. Check the placeholders in the task card against the data file."
        )
    return [v for v in variants if v.case.case_id not in skip]
