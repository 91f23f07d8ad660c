"""PTB-XL (PhysioNet; Wagner et al., Sci Data 7:154, 2020, Table 2): ``ptbxl_database.csv``
(ecg_id, patient_id, age, sex, scp_codes, strat_fold, filename_lr, filename_hr ...) and
``scp_statements.csv`` (SCP code as the first column, ``diagnostic`` flag and
``diagnostic_class``). Signals are WFDB records read with ``wfdb`` (an optional dependency,
imported only here).

- Labels: the diagnostic superclasses (NORM, MI, STTC, CD, HYP) of every diagnostic SCP code
  whose likelihood is at least ``loader_options.min_likelihood`` (default 0: all, as the PTB-XL
  benchmark does). Records with no diagnostic superclass are skipped and counted.
- Official splits: strat_fold 1-8 train, 9 val, 10 test (the folds respect patients).
- Demographics: sex 0 = male, 1 = female (Table 2: "sex (male 0, female 1)"); age 300 is
  PTB-XL's code for ">89" (set to 90).
- Input: the card's ``signal`` block (``input_modality: signal``). ``sampling_rate`` 100 reads
  ``filename_lr`` (records100), 500 reads ``filename_hr`` (records500). Each record is returned as
  float32 (leads, T) in the record's physical units (mV), T = sampling_rate x seconds; a record
  whose header declares another rate or whose length differs is an error, never resampled.
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


class SignalReader:
    """Reads one WFDB record as float32 (leads, T) in physical units; checks rate and length."""

    def __init__(self, channels: int, rate: int, length: int):
        self.channels, self.rate, self.length = channels, rate, length

    def __call__(self, row) -> np.ndarray:
        wfdb = _wfdb()
        try:
            signal, fields = wfdb.rdsamp(row["source"])
        except Exception as exc:  # wfdb raises assorted errors for damaged records
            raise FairbenchError(f"{row['source']}: cannot be read as a WFDB record ({exc}). Replace the record.") from None
        if round(float(fields["fs"])) != self.rate:
            raise FairbenchError(
                f"{row['source']}.hea: sampled at {fields['fs']} Hz but the card declares signal.sampling_rate "
                f"{self.rate}. Use filename_{'lr' if fields['fs'] == 100 else 'hr'} records or fix signal.sampling_rate."
            )
        if signal.shape != (self.length, self.channels):
            raise FairbenchError(
                f"{row['source']}: {signal.shape[1]} leads x {signal.shape[0]} samples, but the card declares "
                f"{self.channels} x {self.length} (signal.channels, sampling_rate x seconds). Replace the record or fix signal."
            )
        # NaN (a lead that was not recorded) -> 0 mV, the baseline; (T, leads) -> (leads, T).
        return np.ascontiguousarray(np.nan_to_num(np.asarray(signal, dtype=np.float32)).T)


def load_ptbxl(card, root: Path, report: LoadReport):
    _wfdb()
    bad = [l for l in card.labels if l not in SUPERCLASSES]
    if bad:
        raise FairbenchError(f"task {card.name}: labels {bad} are not PTB-XL superclasses ({', '.join(SUPERCLASSES)}).")
    db_p = find_file(root, ["ptbxl_database.csv"], card, "ptbxl_database.csv")
    st_p = find_file(root, ["scp_statements.csv"], card, "scp_statements.csv")
    sig = card.signal
    if sig is None or "sampling_rate" in card.loader_options:
        raise FairbenchError(
            f"task {card.name}: PTB-XL is a 12-lead waveform; the card needs input_modality: signal and "
            "signal: {channels: 12, sampling_rate: 100 or 500, seconds: 10} (not loader_options.sampling_rate)."
        )
    rate = sig.sampling_rate
    if rate not in (100, 500) or sig.channels != 12:
        raise FairbenchError(f"task {card.name}: PTB-XL has 12 leads at 100 or 500 Hz; the card's signal block says {sig.channels} at {rate} Hz.")
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
    return finish(db[keep], card, SignalReader(sig.channels, rate, sig.length), report, [db_p, st_p])
