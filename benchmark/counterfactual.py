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

from .cases import Case, LoadReport
from .errors import FairbenchError
from .taskcard import Counterfactual

PLACEHOLDER = re.compile(r"\[[A-Za-z_]+\]")


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


def attribute_grid(cf: Counterfactual) -> list[dict[str, str]]:
    names = list(cf.attributes)
    return [dict(zip(names, combo)) for combo in itertools.product(*(cf.attributes[n].values for n in names))]


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
    for case in cases:
        for attrs in attribute_grid(cf):
            name = _draw_name(cf, case.case_id, attrs, seed) if cf.names else None
            fields = {k: fill(v, cf, attrs, name) for k, v in case.fields.items()}
            for field_name, text in fields.items():
                left = PLACEHOLDER.findall(text)
                if left:
                    raise FairbenchError(
                        f"{case.source}: field {field_name} keeps placeholder(s) {', '.join(sorted(set(left)))} "
                        f"after substitution. Add them to counterfactual.substitutions or aliases in the task card."
                    )
            variants.append(Variant(case=case, attributes=attrs, fields=fields))
    return variants
