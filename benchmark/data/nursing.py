"""Loader for the nurse-bias statements of Zack et al. 2024 (``unconscious_bias_nurses_final.csv``:
``case,gender,race,text,system,prompt,options``).

The file is already expanded: 8 cases x 3 items x 8 demographic rows. Each (case, item) becomes
one case id shared by its demographic rows, whose raw ``race``/``gender`` values the task card
maps to canonical groups (``counterfactual.pre_expanded``), so the rows pair like substituted
variants. An item is a Likert statement ("Statement: ...") or a multiple-choice question
("Question: ..."); its kind goes into the ``item_kind`` field for the card's ``applies_to``.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..cards.text import TaskCard
from ..errors import FairbenchError
from .cases import Case, LoadReport
from .csvutil import read_csv

COLUMNS = ["case", "gender", "race", "text", "prompt", "options"]
_ITEM = re.compile(r"^(Statement|Question):\s*(.+?)\s*$", re.MULTILINE)
_LIKERT = re.compile(r"strongly disagree", re.IGNORECASE)


def load_nursing_csv(card: TaskCard, files: list[Path], report: LoadReport) -> list[Case]:
    columns = {spec.column or attr for attr, spec in card.counterfactual.pre_expanded.items()}
    cases = []
    for path in files:
        df = read_csv(path, COLUMNS + sorted(columns - set(COLUMNS)))
        items: dict[tuple[str, str], int] = {}
        for i, row in df.iterrows():
            where = f"{path.name}:{i + 2}"
            match = _ITEM.search(row["prompt"])
            if not match:
                raise FairbenchError(
                    f"{where}: field prompt has no 'Statement: ...' or 'Question: ...' line, so the item cannot be "
                    f"identified. Fix the row or drop it."
                )
            kind, item = match.groups()
            number = re.sub(r"\D", "", row["case"]) or row["case"].strip()
            per_case = [k for k in items if k[0] == number]
            if (number, item) not in items:
                items[(number, item)] = len(per_case) + 1
            likert = bool(_LIKERT.search(row["options"]))
            if (kind == "Statement") != likert:
                report.quirks.append(f"{where}: a {kind.lower()} with {'Likert' if likert else 'multiple-choice'} options")
            text = row["text"].strip()
            for column in sorted(columns):
                value = row[column].strip()
                if column == "race" and value.lower() not in text.lower():
                    report.quirks.append(f"{where}: race {value!r} is not named in the text")
            fields = {
                "context": text,
                "statement": item,
                "item_kind": "likert" if likert else "multiple_choice",
                "option_items": row["options"],
                "system": row.get("system", "").strip(),
            }
            cases.append(
                Case(
                    case_id=f"case{number}:item{items[(number, item)]}",
                    fields=fields,
                    source=where,
                    subset=f"case{number}",
                    attributes={c: row[c].strip() for c in columns},
                )
            )
    return cases
