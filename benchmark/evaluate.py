"""Stored rows -> scored rows -> audits -> ``results.json``. Used by ``run`` and by ``score``,
so re-scoring a run directory with unchanged code reproduces its results byte for byte."""

from __future__ import annotations

import pandas as pd

from . import SCHEMA_VERSION
from .registry import get
from .scoring import score_row
from .stats import r6
from .taskcard import TaskCard


def score_rows(rows: list[dict], card: TaskCard) -> list[dict]:
    """Add the parsed answer and outcome to each stored row (raw fields are left untouched)."""
    return [{**row, "scored": score_row(row, card.question(row["question_id"]))} for row in rows]


def frame(rows: list[dict], card: TaskCard) -> pd.DataFrame:
    attrs = list(card.counterfactual.attributes)
    records = []
    for row in rows:
        s = row["scored"]
        rec = {
            "case_id": row["case_id"],
            "question_id": row["question_id"],
            "variant": row["variant"],
            "valid": bool(s["valid"]),
            "outcome": s["outcome"],
            "decision": s["decision"],
            "correct": s.get("correct"),
        }
        rec.update({a: row["attributes"][a] for a in attrs})
        records.append(rec)
    df = pd.DataFrame.from_records(records)
    df["outcome"] = pd.to_numeric(df["outcome"], errors="coerce")
    return df


def headline(audit: dict, card: TaskCard) -> dict:
    """The flat metrics of the primary (first) question, for tables, leaderboards and the CI gate."""
    primary = card.questions[0].id
    q = audit["questions"].get(primary, {})
    out = {"question": primary, "invalid_rate": q.get("invalid_rate"), "n_rows": q.get("n_rows"), "n_cases": q.get("n_cases")}
    for name in ("cf_flip_rate", "cf_mean_abs_delta", "cf_spread", "accuracy"):
        if name in q:
            out[name] = q[name]
    inter = q.get("attributes", {}).get("intersection") or next(iter(q.get("attributes", {}).values()), {})
    if "dp_gap" in inter:
        out["dp_gap"] = inter["dp_gap"]
    if "worst_group" in inter:
        out["worst_group"] = inter["worst_group"]
        out["worst_group_outcome"] = inter["groups"][inter["worst_group"]]["mean_outcome"]
    return out


def evaluate(rows: list[dict], card: TaskCard, seed: int, run_info: dict, data_report: dict) -> tuple[list[dict], dict]:
    scored = score_rows(rows, card)
    df = frame(scored, card)
    audit_cls = get("audits", "counterfactual")
    audit = audit_cls(card, seed=seed).run(df)
    results = {
        "schema_version": SCHEMA_VERSION,
        "run": run_info,
        "metrics": headline(audit, card),
        "counterfactual": audit,
        "data_report": data_report,
        "n_requests": len(rows),
        "n_invalid": int((~df["valid"]).sum()),
        "invalid_rate": r6((~df["valid"]).mean()),
    }
    return scored, results
