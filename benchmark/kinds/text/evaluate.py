"""Stored rows -> scored rows -> audits -> ``results.json``. Used by ``run`` and by ``score``,
so re-scoring a run directory with unchanged code reproduces its results byte for byte."""

from __future__ import annotations

import pandas as pd

from ...audits.stats import num
from ...cards.text import TaskCard
from ...errors import FairbenchError
from ..base import AuditData
from .generation import generation_frame
from .scoring import score_row


# Score reasons that mean the backend's option scores cannot tell the options apart.
SCORE_FAULTS = ("count", "impossible", "tie")


def score_rows(rows: list[dict], card: TaskCard) -> list[dict]:
    """Add the parsed answer and outcome to each stored row (raw fields are left untouched).

    Rows whose option scores cannot tell the options apart are invalid and counted; when that is
    systematic (more than half of the choice rows, at least 2), the backend is not usable and the run
    stops with a one-line error instead of reporting metrics of ties."""
    scored = [{**row, "scored": score_row(row, card.question(row["question_id"]))} for row in rows]
    choice = [r for r in scored if r.get("method") == "choice" and not (r.get("extra") or {}).get("choice_fallback")]
    faults: dict[str, int] = {}
    for r in choice:
        reason = r["scored"].get("invalid_reason")
        if reason in SCORE_FAULTS:
            faults[reason] = faults.get(reason, 0) + 1
    if sum(faults.values()) >= 2 and sum(faults.values()) * 2 > len(choice):
        what = ", ".join(f"{n} {k}" for k, n in sorted(faults.items()))
        raise FairbenchError(
            f"task {card.name}: {sum(faults.values())} of {len(choice)} option scores cannot tell the options apart ({what}: "
            f"count = not one score per option, impossible = a log-likelihood above 0 or probabilities summing above 1, "
            f"tie = the best score shared); the backend's log-probabilities are not usable (e.g. a server echoing 0.0 "
            f"for every prompt token). Fix the backend or serve the model without echo."
        )
    return scored


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
            # option-text modes score the texts; the audit compares the labels ("A".."E")
            "options": (row.get("meta") or {}).get("option_labels") or row["options"],
            "reference": (row.get("meta") or {}).get("reference", ""),
            "sample": int(row.get("sample") or 0),
            "text": row.get("raw_output") if row.get("method") == "generate" else None,
            "invalid_reason": s.get("invalid_reason"),
        }
        rec.update({a: row["attributes"][a] for a in attrs})
        records.append(rec)
    df = pd.DataFrame.from_records(records)
    df["outcome"] = pd.to_numeric(df["outcome"], errors="coerce")
    return df


def endpoint_frame(df: pd.DataFrame, card: TaskCard) -> tuple[pd.DataFrame, list[str]]:
    """The per-request frame as group-audit endpoints: one endpoint per binary question with a
    reference answer (``y`` = the reference is the positive option, ``p`` = P(positive), ``d`` = the
    positive option was chosen). Requests are the instances and cases the resampling unit
    (``patient_id``), so the group audit's bootstrap keeps a case's variants together."""
    endpoints = [q.id for q in card.questions if q.kind == "binary" and q.reference_field]
    out = df[[a for a in card.counterfactual.attributes]].copy()
    out["patient_id"] = df["case_id"].astype(str)
    out["valid"] = df["valid"].astype(bool)
    for qid in endpoints:
        q = card.question(qid)
        mine = (df["question_id"] == qid).to_numpy()
        ref = df["reference"].where(mine & (df["reference"].astype(str) != ""))
        out[f"y:{qid}"] = ref.map(lambda r: None if r is None or r != r else float(str(r).lower() == q.positive.lower())).astype(float)
        out[f"p:{qid}"] = df["outcome"].where(mine).astype(float)
        # A binary question's decision is already "the positive option was chosen" (scoring.py).
        out[f"d:{qid}"] = df["decision"].where(mine & df["valid"]).map(lambda d: None if d is None or d != d else float(bool(d))).astype(float)
        out[f"d05:{qid}"] = (out[f"p:{qid}"] >= 0.5).astype(float).where(out[f"p:{qid}"].notna())
    return out, endpoints


def headline(audit: dict, card: TaskCard) -> dict:
    """The flat metrics of the primary (first) question, for tables, leaderboards and the CI gate."""
    primary = card.questions[0].id
    q = audit["questions"].get(primary, {})
    out = {"question": primary, "invalid_rate": q.get("invalid_rate"), "n_rows": q.get("n_rows"), "n_cases": q.get("n_cases")}
    for name in ("cf_flip_rate", "cf_mean_abs_delta", "cf_spread", "accuracy"):
        if name in q:
            out[name] = q[name]
    paired = q.get("paired_accuracy") or {}
    if len(paired) == 1:
        deltas = next(iter(paired.values()))["delta_vs_reference"]
        if len(deltas) == 1:  # two groups: one signed accuracy difference (value - reference)
            out["accuracy_delta"] = next(iter(deltas.values()))
    inter = q.get("attributes", {}).get("intersection") or next(iter(q.get("attributes", {}).values()), {})
    if "dp_gap" in inter:
        out["dp_gap"] = inter["dp_gap"]
    if "worst_group" in inter:
        out["worst_group"] = inter["worst_group"]
        if inter["worst_group"] is not None:
            out["worst_group_outcome"] = inter["groups"][inter["worst_group"]]["mean_outcome"]
    # Groups without any valid answer: the leaderboard and the gate show them; the metrics that
    # need them are undefined (value None), never computed from the other groups.
    unmeasurable = q.get("unmeasurable_groups") or []
    if unmeasurable:
        out["unmeasurable_groups"] = list(unmeasurable)
    return out


GENERATIVE_HEADLINE = ("invalid_rate", "refusal_rate", "demographic_mention_rate", "explanation_drift",
                       "drift_noise_floor", "drift_excess")


def generative_headline(gen: dict | None, card: TaskCard) -> dict:
    """The generative audit's per-question summary of the primary question, as flat ``gen_*``
    metrics (``gen_refusal_rate``, ``gen_drift_excess`` ...); nothing for a run without generated text."""
    q = ((gen or {}).get("questions") or {}).get(card.questions[0].id) or {}
    return {f"gen_{name}": q[name] for name in GENERATIVE_HEADLINE if name in q}


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
    paired = audit["questions"].get(primary, {}).get("paired_accuracy") or {}
    if len(paired) == 1 and f"{primary}/{next(iter(paired))}/correct" in by_target:
        t = by_target[f"{primary}/{next(iter(paired))}/correct"]
        out["accuracy_delta"] = {"test": t["test"], "target": t["target"], "p_adjusted": t["p_adjusted"], "significant": t["significant"]}
    for metric, kind in SIGNIFICANCE_TESTS.items():
        t = by_target.get(f"{primary}/{key}/{kind}")
        if t is not None:
            out[metric] = {"test": t["test"], "target": t["target"], "p_adjusted": t["p_adjusted"], "significant": t["significant"]}
    return out


def invalid_rate_ci(df: pd.DataFrame, card: TaskCard, seed: int) -> dict:
    """Invalid rate of the primary question with a 95% Wilson interval on the effective number of
    cases (variants of a case are not independent, so a per-request binomial interval would be too
    narrow; valid at 0 and 1). ``seed`` is kept for the signature: the interval is not resampled."""
    from ...audits.stats import estimate, proportion_ci

    sub = df[df["question_id"] == card.questions[0].id]
    per_case = (~sub["valid"]).groupby(sub["case_id"])
    means = per_case.mean().to_numpy(dtype=float)
    if len(means) == 0:
        return estimate(float("nan"), None, None, 0)
    point, low, high, n_eff = proportion_ci(means, per_case.size().to_numpy(dtype=float))
    return estimate(point, low, high, len(means), ci_method="wilson", n_eff=n_eff)


def evaluate(kind, rows: list[dict], seed: int, run_info: dict, data_report: dict) -> tuple[list[dict], dict]:
    """Score every row, run the card's audits on the per-request frame, and build ``results.json``
    (headline metrics from the counterfactual audit of the primary question)."""
    card = kind.card
    scored = score_rows(rows, card)
    every = frame(scored, card)
    # The audited answers are sample 0; extra samples of a variant (a mode's ``samples``) only give the
    # generative audit its noise floor, so every other audit sees one answer per variant.
    df = every[every["sample"] == 0].reset_index(drop=True)
    mode = card.prompt_modes.get(run_info.get("prompt_mode") or "")
    generations, embed_note = (None, "")
    if mode is not None and mode.method == "generate":
        generations, embed_note = generation_frame(every, card)
    attrs = list(card.counterfactual.attributes)
    instances, endpoints = endpoint_frame(df, card)
    data = AuditData(rows=df, instances=instances, endpoints=endpoints,
                     attributes=attrs + (["*".join(attrs)] if len(attrs) > 1 else []),
                     decision_rule="the answer chosen (highest option probability, or the parsed free-text answer); *_at_0.5 use P(positive) >= 0.5",
                     generations=generations)
    audits = kind.run_audits(data, seed)
    if embed_note and "generative" in audits:
        audits["generative"].setdefault("warnings", []).append(embed_note)
    cf = audits.get("counterfactual", {"questions": {}, "tests": []})
    unknown_refs: dict[str, set] = {}
    for r in scored:
        if "reference_unknown" in r["scored"]:
            unknown_refs.setdefault(r["question_id"], set()).add(r["scored"]["reference_unknown"])
    for qid, refs in sorted(unknown_refs.items()):
        q = card.question(qid)
        cf.setdefault("warnings", []).append(
            f"{qid}: reference answer(s) {', '.join(sorted(map(repr, refs)))} in field {q.reference_field} are not options "
            f"{q.options or '(per case)'}; those rows are left out of accuracy")
    metrics = {
        **headline(cf, card),
        **generative_headline(audits.get("generative"), card),
        "significance": headline_significance(cf, card),
        "invalid_rate_ci": invalid_rate_ci(df, card, seed),
    }
    results = kind.envelope(
        run_info, metrics, audits, data_report,
        n_requests=len(rows), n_invalid=int((~df["valid"]).sum()), invalid_rate=num((~df["valid"]).mean()),
    )
    return scored, results
