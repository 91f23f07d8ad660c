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
            "probs": s.get("probs"),
            "options": row["options"],
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


# Which corrected paired test speaks to each headline metric (None of the group means differ /
# decisions do not depend on the demographic variant). Used for the leaderboard's significance marker.
SIGNIFICANCE_TESTS = {"cf_flip_rate": "decision", "dp_gap": "decision", "cf_mean_abs_delta": "outcome", "worst_group": "outcome"}


def headline_significance(audit: dict, card: TaskCard) -> dict:
    """Per headline metric: the paired test over the headline groups (the intersection, or the only
    attribute) with its multiplicity-adjusted p-value, so tables can mark significant metrics."""
    primary = card.questions[0].id
    attrs = audit["questions"].get(primary, {}).get("attributes", {})
    key = "intersection" if "intersection" in attrs else next(iter(attrs), None)
    by_target = {t["target"]: t for t in audit.get("tests", []) if t.get("paired")}
    out = {}
    for metric, kind in SIGNIFICANCE_TESTS.items():
        t = by_target.get(f"{primary}/{key}/{kind}")
        if t is not None:
            out[metric] = {"test": t["test"], "target": t["target"], "p_adjusted": t["p_adjusted"], "significant": t["significant"]}
    return out


def invalid_rate_ci(df: pd.DataFrame, card: TaskCard, seed: int) -> dict:
    """Invalid rate of the primary question with a 95% CI resampling cases (variants of a case are
    not independent, so a per-request binomial interval would be too narrow)."""
    import hashlib

    import numpy as np

    from .stats import bootstrap_ci, estimate

    sub = df[df["question_id"] == card.questions[0].id]
    per_case = (~sub["valid"]).groupby(sub["case_id"]).mean().to_numpy(dtype=float)
    if len(per_case) == 0:
        return estimate(float("nan"), None, None, 0)
    digest = hashlib.sha256(f"{seed}|{card.questions[0].id}|invalid_rate".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    point, low, high = bootstrap_ci(per_case, np.mean, rng, card.audit.n_boot)
    return estimate(point, low, high, len(per_case))


def evaluate(rows: list[dict], card: TaskCard, seed: int, run_info: dict, data_report: dict) -> tuple[list[dict], dict]:
    scored = score_rows(rows, card)
    df = frame(scored, card)
    audit_cls = get("audits", "counterfactual")
    audit = audit_cls(card, seed=seed).run(df)
    results = {
        "schema_version": SCHEMA_VERSION,
        "run": run_info,
        "metrics": {
            **headline(audit, card),
            "significance": headline_significance(audit, card),
            "invalid_rate_ci": invalid_rate_ci(df, card, seed),
        },
        "counterfactual": audit,
        "data_report": data_report,
        "n_requests": len(rows),
        "n_invalid": int((~df["valid"]).sum()),
        "invalid_rate": r6((~df["valid"]).mean()),
    }
    return scored, results
