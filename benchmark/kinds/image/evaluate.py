"""Stored request rows (validation + test images) -> per-image probabilities -> thresholds frozen on
validation -> the card's audits on test -> ``results.json``. Used by ``run`` and ``score`` (no model)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from ...audits.stats import num
from ..base import AuditData
from .answers import row_from_answers
from .thresholds import tune_threshold

IMAGE_FIELDS = ("index", "id", "patient_id", "split", "sex", "age", "age_group", "race", "targets")
HEADLINE = ("accuracy", "auc")


def endpoint_frame(rows: list[dict], card) -> tuple[pd.DataFrame, dict]:
    """One row per image with ``y:e`` / ``p:e`` / ``d:e`` / ``d05:e`` per endpoint; thresholds are
    tuned on the validation rows only and applied unchanged to test. ``rows`` are image rows from
    :func:`image_rows` (where a VLM's answers have already been through Φ)."""
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
            thresholds[label] = num(t)
            df[f"d:{label}"] = (P[:, j] >= t).astype(float)
            df[f"d05:{label}"] = (P[:, j] >= 0.5).astype(float)
            own = [r.get("decisions") for r in rows]
            if any(d is not None and d[j] is not None for d in own):
                # The backend made its own decisions (e.g. group-specific thresholds post-processed on
                # validation, backends/image/recipe.py); rows without one keep the tuned threshold.
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


def image_rows(rows: list[dict], card) -> list[dict]:
    """Stored request rows -> one row per image, in order. ``predict`` rows are images already (valid
    when every probability is a finite number); a VLM's per-label question rows are gathered into the
    image's ``vlm_answers`` and mapped through Φ here, once, from the stored answers, so ``fairbench
    score`` re-applies a changed vocabulary without running the model."""
    out: dict[str, dict] = {}
    for r in rows:
        if r.get("method", "predict") == "predict":
            probs = r.get("probs")
            ok = probs is not None and all(isinstance(x, (int, float)) and math.isfinite(x) for x in probs)
            out[r["id"]] = {**r, "valid": ok, "probs": probs if ok else None}
            continue
        image = out.setdefault(r["id"], {k: r[k] for k in IMAGE_FIELDS if k in r} | {"vlm_answers": {}, "method": r["method"]})
        answer = {"option_logprobs": r["option_logprobs"]} if r.get("option_logprobs") is not None else {"raw_output": r.get("raw_output")}
        if r.get("extra"):
            answer["extra"] = r["extra"]
        image["vlm_answers"][r["question_id"]] = answer
    images = list(out.values())
    for image in images:
        if "vlm_answers" in image:
            image.update(row_from_answers(image["vlm_answers"], card))
            generated = image.pop("method") == "generate"
            image["raw_output"] = json.dumps({k: v.get("raw_output") for k, v in image["vlm_answers"].items()}) if generated else None
    return images


def evaluate(kind, rows: list[dict], seed: int, run_info: dict, data_report: dict) -> tuple[list[dict], dict]:
    """Per-image probabilities -> thresholds tuned on validation -> the card's audits on test."""
    card = kind.card
    frame, thr = endpoint_frame(image_rows(rows, card), card)
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    audits = kind.run_audits(AuditData(instances=test, endpoints=card.endpoints()), seed)
    audit = audits.get("group", {"endpoints": {}, "warnings": []})
    if "correct_class" in test:
        ok = test[test["valid"]]
        audit["accuracy_multiclass"] = num(ok["correct_class"].mean()) if len(ok) else None
    n_invalid = int((~test["valid"]).sum())
    invalid_rate = num(n_invalid / len(test)) if len(test) else None
    audit["warnings"] = thr["notes"] + audit["warnings"]
    results = kind.envelope(
        run_info, headline(audit, card, invalid_rate, len(test)), audits, data_report,
        thresholds=thr["thresholds"], n_requests=len(rows), n_test=len(test), n_invalid=n_invalid, invalid_rate=invalid_rate,
    )
    return rows, results
