"""PTB-XL (PhysioNet): ``ptbxl_database.csv`` (ecg_id, patient_id, age, sex, scp_codes,
strat_fold, filename_lr, filename_hr ...) and ``scp_statements.csv`` (SCP code as the first
column, ``diagnostic`` flag and ``diagnostic_class``). Signals are WFDB records read with
``wfdb`` (an optional dependency, imported only here).

- Labels: the diagnostic superclasses (NORM, MI, STTC, CD, HYP) of every diagnostic SCP code
  whose likelihood is at least ``loader_options.min_likelihood`` (default 0: all, as the PTB-XL
  benchmark does). Records with no diagnostic superclass are skipped and counted.
- Official splits: strat_fold 1-8 train, 9 val, 10 test (the folds respect patients).
- Demographics: sex 0 = male, 1 = female; age 300 is PTB-XL's code for ">89" (set to 90).
- Input: the 12 x T signal, each lead standardised and squashed to [0, 1], read as a 12-row
  image (``loader_options.sampling_rate`` 100 -> filename_lr, 500 -> filename_hr).
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import FairbenchError
from ..cases import LoadReport
from .common import find_file, read_table, skip_rows
from .dataset import finish

SUPERCLASSES = ["NORM", "MI", "STTC", "CD", "HYP"]


def _wfdb():
    try:
        import wfdb
    except ImportError:
        raise FairbenchError("PTB-XL needs the wfdb package: pip install 'fairbench-med[vision]' (or pip install wfdb).") from None
    return wfdb


def _parse_codes(text) -> dict | None:
    try:
        value = ast.literal_eval(str(text))  # literal_eval: data, never code
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, dict) else None


def signal_reader(row) -> np.ndarray:
    wfdb = _wfdb()
    try:
        signal, _ = wfdb.rdsamp(row["source"])
    except Exception as exc:  # wfdb raises assorted errors for damaged records
        raise FairbenchError(f"{row['source']}: cannot be read as a WFDB record ({exc}). Replace the record.") from None
    x = np.nan_to_num(np.asarray(signal, dtype=np.float32).T)  # leads x time
    z = (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-6)
    return (0.5 + 0.5 * np.tanh(z / 3.0)).astype(np.float32)


def load_ptbxl(card, root: Path, report: LoadReport):
    _wfdb()
    bad = [l for l in card.labels if l not in SUPERCLASSES]
    if bad:
        raise FairbenchError(f"task {card.name}: labels {bad} are not PTB-XL superclasses ({', '.join(SUPERCLASSES)}).")
    db_p = find_file(root, ["ptbxl_database.csv"], card, "ptbxl_database.csv")
    st_p = find_file(root, ["scp_statements.csv"], card, "scp_statements.csv")
    rate = int(card.loader_options.get("sampling_rate", 100))
    if rate not in (100, 500):
        raise FairbenchError(f"task {card.name}: loader_options.sampling_rate must be 100 or 500, got {rate}.")
    file_col = "filename_lr" if rate == 100 else "filename_hr"
    db = read_table(db_p, ["ecg_id", "patient_id", "age", "sex", "scp_codes", "strat_fold", file_col], card)
    st = read_table(st_p, ["diagnostic", "diagnostic_class"], card, index_col=0)
    diag = st[pd.to_numeric(st["diagnostic"], errors="coerce") == 1]["diagnostic_class"].dropna().to_dict()
    min_lik = float(card.loader_options.get("min_likelihood", 0))

    codes = db["scp_codes"].map(_parse_codes)
    db = skip_rows(db, codes.isna(), report, "scp_codes is not a {code: likelihood} mapping", db["ecg_id"])
    codes = codes[codes.notna()]
    supers = codes.map(lambda c: {diag[k] for k, v in c.items() if k in diag and float(v) >= min_lik})
    for label in card.labels:
        db[label] = supers.map(lambda s, l=label: float(l in s))
    db = skip_rows(db, supers.map(len) == 0, report, "no diagnostic superclass", db["ecg_id"])

    fold = pd.to_numeric(db["strat_fold"], errors="coerce")
    db = skip_rows(db, ~fold.between(1, 10), report, "strat_fold is not 1..10", db["ecg_id"])
    fold = fold[db.index]
    db["split"] = np.where(fold <= 8, "train", np.where(fold == 9, "val", "test"))
    sex = pd.to_numeric(db["sex"], errors="coerce")
    db["sex"] = sex.map({0: "male", 1: "female"})
    age = pd.to_numeric(db["age"], errors="coerce")
    if (age == 300).any():
        report.quirks.append(f"{int((age == 300).sum())} records with age 300 (PTB-XL's code for >89) set to 90")
    db["age"] = age.where(age != 300, 90)
    db["race"] = None
    db["source"] = db[file_col].astype(str).map(lambda f: str(root / f))
    has = db["source"].map(lambda s: Path(s + ".hea").is_file() and Path(s + ".dat").is_file())
    db = skip_rows(db, ~has, report, "WFDB record (.hea/.dat) missing", db["source"])
    db["id"] = db["ecg_id"].astype(int).astype(str)
    db["patient_id"] = pd.to_numeric(db["patient_id"], errors="coerce").astype("Int64").astype(str)
    keep = ["id", "patient_id", "split", "source", "sex", "age", "race", *card.labels]
    return finish(db[keep], card, signal_reader, report, [db_p, st_p])
