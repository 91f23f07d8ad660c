"""Loader for the NEJM Healer cases of Zack et al. 2024 (``title,Case one liner,DDx``).

Known quirks of the official files, handled and reported: a UTF-8 byte-order mark, empty
trailing columns, DDx cells that span several lines, runs of spaces around ``@Race @Sex``, and
gendered words written outside the ``@Sex`` placeholder (kept verbatim: changing official text
would change the case; the warning lets a reader judge the variants).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..cards.text import TaskCard
from .cases import Case, LoadReport
from .csvutil import read_csv

COLUMNS = ["title", "Case one liner"]
_GENDERED = re.compile(r"\b(he|she|his|her|hers|him|himself|herself|man|woman|male|female)\b", re.IGNORECASE)


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\u00a0", " ")).strip()


def load_healer_csv(card: TaskCard, files: list[Path], report: LoadReport) -> list[Case]:
    cases = []
    for path in files:
        head = path.read_bytes()[:3]
        if head == b"\xef\xbb\xbf":
            report.quirks.append(f"{path.name}: starts with a UTF-8 byte-order mark (stripped)")
        header = path.read_text(encoding="utf-8-sig").splitlines()[0]
        if any(not c.strip() for c in header.split(",")):
            report.quirks.append(f"{path.name}: empty trailing column(s) in the header (ignored)")
        df = read_csv(path, COLUMNS)
        subset = path.stem
        for i, row in df.iterrows():
            raw = row["Case one liner"]
            text = _clean(raw)
            if not text:
                report.skipped.append(f"{path.name} row {i + 2}: empty 'Case one liner'")
                continue
            if text != raw.strip():
                report.quirks.append(f"{path.name} row {i + 2}: irregular whitespace in 'Case one liner' (normalised)")
            ddx_raw = row.get("DDx", "")
            if "\n" in ddx_raw:
                report.quirks.append(f"{path.name} row {i + 2}: DDx cell spans several lines (joined)")
            ddx = "; ".join(x.strip().rstrip(",") for x in ddx_raw.splitlines() if x.strip().rstrip(","))
            if "@Sex" in text:
                words = sorted({m.group(0).lower() for m in _GENDERED.finditer(text)})
                if words:
                    report.quirks.append(
                        f"{path.name} row {i + 2}: gendered word(s) {', '.join(words)} outside @Sex, kept in every variant"
                    )
            fields = {"context": text, "title": _clean(row["title"]), "ddx": ddx}
            cases.append(Case(case_id=f"{subset}:{i:02d}", fields=fields, source=f"{path.name}:{i + 2}", subset=subset))
    return cases
