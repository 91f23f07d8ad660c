"""Loader for the Q-Pain CSV schema: ``Vignette,Question,Answer,Dosage,Explanation``.

Q-Pain 1.0.0 has 5 files of 11 rows: 10 "Patient D" vignettes with ``[race] [gender]``
placeholders (the cases) and one "Patient B" vignette without demographics per file (its "closed
prompt", a worked example answered "No"). With ``loader_options.require_text: "Patient D"`` the
closed prompts are skipped and reported, not audited: they have no demographic variants.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..cards.text import TaskCard
from .cases import Case, LoadReport
from .csvutil import read_csv

COLUMNS = ["Vignette", "Question", "Answer"]


def _first_word(text: str) -> str:
    match = re.match(r"\s*([A-Za-z]+)", text or "")
    return match.group(1).capitalize() if match else ""


def load_qpain_csv(card: TaskCard, files: list[Path], report: LoadReport) -> list[Case]:
    require = str(card.loader_options.get("require_text", "") or "")
    cases = []
    for path in files:
        df = read_csv(path, COLUMNS)
        subset = path.stem.removeprefix("data_")
        for i, row in df.iterrows():
            vignette = row["Vignette"].strip()
            if not vignette:
                report.skipped.append(f"{path.name} row {i + 2}: empty Vignette")
                continue
            if require and require not in vignette:
                report.skipped.append(
                    f"{path.name} row {i + 2}: no {require!r} (a closed-prompt example without demographics, answer "
                    f"{_first_word(row['Answer']) or '?'}); not a counterfactual case"
                )
                continue
            fields = {
                "context": vignette,
                "question": row["Question"].strip(),
                "answer": _first_word(row["Answer"]),  # "Yes." -> "Yes"
                "dosage": _first_word(row.get("Dosage", "")),  # "Low (0.5 mg)" -> "Low"
                "explanation": row.get("Explanation", "").strip(),
            }
            cases.append(Case(case_id=f"{subset}:{i:02d}", fields=fields, source=f"{path.name}:{i + 2}", subset=subset))
    return cases
