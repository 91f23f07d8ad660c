"""Stored prediction rows (validation + test) -> thresholds frozen on validation -> group audit ->
``results.json``. Used by the imaging run and by ``fairbench score`` (no model needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import SCHEMA_VERSION
from ..registry import get
from ..stats import r6
from .answers import row_from_answers
from .thresholds import tune_threshold

HEADLINE = ("accuracy", "auc")


def endpoint_frame(rows: list[dict], card) -> tuple[pd.DataFrame, dict]:
    """One row per image with ``y:e`` / ``p:e`` / ``d:e`` / ``d05:e`` per endpoint; thresholds are
    tuned on the validation rows only and applied unchanged to test."""
    # VLM rows keep the model's answers: Φ is applied here, so a changed vocabulary needs no model re-run.
    rows = [{**r, **row_from_answers(r["vlm_answers"], card)} if r.get("vlm_answers") else r for r in rows]
    df = pd.DataFrame.from_records(
        [{k: r.get(k) for k in ("id", "patient_id", "split", "sex", "age_group", "race", "valid")} for r in rows]
    )
    df["valid"] = df["valid"].astype(bool)
    probs = [r["probs"] if r.get("valid") and r.get("probs") is not None else None for r in rows]
    k = len(card.labels)
    P = np.array([p if p is not None else [np.nan] * k for p in probs], dtype=float)
    thresholds, notes = {}, []
    if card.label_type == "multiclass":
        y_cls = np.array([r["targets"] for r in rows], dtype=float)
        pos = np.array([c in card.positive_classes for c in card.labels])
        e = card.endpoint_name
        df[f"y:{e}"] = np.isin(y_cls, np.nonzero(pos)[0]).astype(float)
        df[f"p:{e}"] = P[:, pos].sum(1)
        argmax = np.where(np.isnan(P).any(1), -1, np.nanargmax(np.nan_to_num(P, nan=-1), axis=1))
        df[f"d:{e}"] = pos[argmax].astype(float) if len(argmax) else []
        df[f"d05:{e}"] = (df[f"p:{e}"] >= 0.5).astype(float)
        df["correct_class"] = (argmax == y_cls).astype(float)
        thresholds[e] = "argmax"
    else:
        Y = np.array([r["targets"] for r in rows], dtype=float).reshape(len(rows), k)
        val = (df["split"] == "val").to_numpy() & df["valid"].to_numpy()
        for j, label in enumerate(card.labels):
            df[f"y:{label}"] = Y[:, j]
            df[f"p:{label}"] = P[:, j]
            t, note = tune_threshold(Y[val, j], P[val, j], card.audit.threshold)
            if note:
                notes.append(f"{label}: {note}")
            thresholds[label] = r6(t)
            df[f"d:{label}"] = (P[:, j] >= t).astype(float)
            df[f"d05:{label}"] = (P[:, j] >= 0.5).astype(float)
            own = [r.get("decisions") for r in rows]
            if any(d is not None and d[j] is not None for d in own):
                # The backend made its own decisions (e.g. group-specific thresholds post-processed on
                # validation, mitigations/recipe.py); rows without one keep the tuned threshold.
                has = np.array([d is not None and d[j] is not None for d in own])
                df.loc[has, f"d:{label}"] = [float(d[j]) for d in own if d is not None and d[j] is not None]
                notes.append(f"{label}: decisions made by the backend (post-processing fitted on validation); "
                             f"{int((~has).sum())} row(s) use the tuned threshold")
    return df, {"thresholds": thresholds, "notes": notes}


def headline(audit: dict, card, invalid_rate, n_rows: int) -> dict:
    """Flat metrics of the primary endpoint on the primary attribute: the leaderboard row."""
    e = card.primary()
    ep = audit["endpoints"].get(e, {})
    attr = card.audit.primary_attribute
    a = ep.get("attributes", {}).get(attr, {})
    out = {"question": e, "attribute": attr, "invalid_rate": invalid_rate, "n_rows": n_rows, "n_cases": ep.get("n_patients")}
    for name in HEADLINE:
        if name in ep:
            out[name] = ep[name]
    for name in ("dp_gap", "eod", "auc_gap", "worst_group_auc", "es_auc", "ece_gap", "underdiag_gap"):
        if name in a:
            out[name] = a[name]
    nf = card.audit.no_finding_label
    if nf and nf != e:
        ud = audit["endpoints"].get(nf, {}).get("attributes", {}).get(attr, {}).get("underdiag_gap")
        if ud is not None:
            out["underdiag_gap"] = ud
    if a.get("worst_group"):
        out["worst_group"] = a["worst_group"]
    return out


def evaluate(rows: list[dict], card, seed: int, run_info: dict, data_report: dict) -> dict:
    frame, thr = endpoint_frame(rows, card)
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    audit_cls = get("audits", "group")
    audit = audit_cls(card, seed=seed).run(test, card.endpoints())
    if "correct_class" in test:
        ok = test[test["valid"]]
        audit["accuracy_multiclass"] = r6(ok["correct_class"].mean()) if len(ok) else None
    n_invalid = int((~test["valid"]).sum())
    invalid_rate = r6(n_invalid / len(test)) if len(test) else None
    audit["warnings"] = thr["notes"] + audit["warnings"]
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "imaging",
        "run": run_info,
        "metrics": headline(audit, card, invalid_rate, len(test)),
        "thresholds": thr["thresholds"],
        "group": audit,
        "data_report": data_report,
        "n_requests": len(rows),
        "n_test": len(test),
        "n_invalid": n_invalid,
        "invalid_rate": invalid_rate,
    }
