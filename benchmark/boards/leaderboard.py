"""``fairbench leaderboard``: run directories -> ``NAME.md``, ``NAME.csv``, ``NAME.groups.csv`` and plots.

The CSV files are the leaderboard's state: adding runs reads them, merges the new rows (one row per
model x task x prompt mode x evaluation split; see ``merge``: a run of another seed or a smaller
``--limit`` never replaces a row silently, and every replaced or dropped run is reported), and rewrites every
output under a file lock, so concurrent writers never lose a row. Only ``results.json`` and
``manifest.json`` of a run are read; the per-request data is not needed.

One board can hold runs of every kind (``kind`` column: text, imaging): each row fills the columns of
its kind's metrics (``results["metrics"]``) and leaves the others empty. Per-group rows come from the
audit present in ``results["audits"]``: ``counterfactual`` (text: mean outcome and decision rate of the
primary question's groups) or ``group`` (imaging: AUC, positive rate, TPR, FPR... of the primary
endpoint by the primary attribute).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from filelock import FileLock

from ..errors import FairbenchError
from ..store import read_results, write_atomic
from .keys import KEY, commit_label, row_key, split_name

KINDS = ("text", "imaging")
# Fairness metrics a leaderboard can be sorted by and `fairbench check` can gate on; all lower-is-fairer.
FAIRNESS_METRICS = ["cf_flip_rate", "cf_mean_abs_delta", "dp_gap"]  # text runs (dp_gap: imaging too)
IMAGING_FAIRNESS_METRICS = ["dp_gap", "eod", "auc_gap", "ece_gap", "underdiag_gap"]
FAIRNESS_BY_KIND = {"text": FAIRNESS_METRICS, "imaging": IMAGING_FAIRNESS_METRICS}
SORT_METRICS = list(dict.fromkeys(FAIRNESS_METRICS + IMAGING_FAIRNESS_METRICS))
MARKED = FAIRNESS_METRICS + ["worst_group"]
# Estimates only imaging runs fill (each with its 95% CI); accuracy is filled by any kind that has it.
IMAGING_ESTIMATES = ["accuracy", "auc", "eod", "auc_gap", "worst_group_auc", "es_auc", "ece_gap", "underdiag_gap"]
# Continuous and defined for binary and ordinal questions (the flip rate is coarse and ties often).
DEFAULT_SORT = "cf_mean_abs_delta"
# Sort fallback for a row that lacks the --sort-by metric (an imaging row on a board sorted by a text metric).
KIND_SORT = {"text": "cf_mean_abs_delta", "imaging": "dp_gap"}
EST_COLS = ["value", "ci_low", "ci_high"]
# Free-text runs (generate prompt modes): the generative audit's headline of the primary question
# (audits/generative.py; kinds/text/evaluate.generative_headline), all lower-is-better. The rates and
# the drift excess carry the generative audit's paired test over the headline groups (its adjusted p).
GENERATIVE_METRICS = ["gen_invalid_rate", "gen_refusal_rate", "gen_demographic_mention_rate", "gen_explanation_drift",
                      "gen_drift_noise_floor", "gen_drift_excess"]
GENERATIVE_TESTS = {"gen_invalid_rate": "invalid", "gen_refusal_rate": "refusal", "gen_demographic_mention_rate": "mention",
                    "gen_drift_excess": "drift_excess"}
# Paired differences against a reference row (``--reference MODEL`` on text runs; boards.check.reference_deltas).
# The generative ones apply where both runs are free-text runs (the floor is not compared: the excess is).
GENERATIVE_DELTA_METRICS = [m for m in GENERATIVE_METRICS if m != "gen_drift_noise_floor"]
DELTA_METRICS = ["accuracy"] + FAIRNESS_METRICS + GENERATIVE_DELTA_METRICS
HIGHER_IS_BETTER = {"accuracy": True, **{m: False for m in FAIRNESS_METRICS + GENERATIVE_METRICS}}
DELTA_COLUMNS = (["delta_reference", "delta_reference_run_id", "delta_method"]
                 + [f"{m}_delta{s}" for m in DELTA_METRICS for s in ("", "_ci_low", "_ci_high", "_p_adjusted", "_significant")])
COLUMNS = (
    KEY
    + ["kind", "base_model", "question", "utility_metric", "utility", "utility_ci_low", "utility_ci_high", "utility_note"]
    + [f"{m}{s}" for m in FAIRNESS_METRICS for s in ("", "_ci_low", "_ci_high", "_p_adjusted", "_significant", "_note")]
    + ["worst_group", "worst_group_outcome", "worst_group_outcome_ci_low", "worst_group_outcome_ci_high",
       "worst_group_outcome_note", "worst_group_p_adjusted", "worst_group_significant"]
    # "_note": why an estimate has no interval (no variation, undefined), shown beside the value.
    + [f"{m}{s}" for m in IMAGING_ESTIMATES for s in ("", "_ci_low", "_ci_high", "_note")]
    + ["attribute"]
    + ["n_cases", "n_requests", "n_invalid", "invalid_rate", "invalid_rate_ci_low", "invalid_rate_ci_high", "invalid_rate_note",
       "small_groups", "correction", "seed", "limit", "sample", "run_id", "model_fingerprint", "git_commit", "finished_at"]
    + ["model_description"]
    + [f"{m}{s}" for m in GENERATIVE_METRICS for s in ("", "_ci_low", "_ci_high", "_note", "_p_adjusted", "_significant")]
    + DELTA_COLUMNS
)
IMAGING_GROUP_VALUES = ["n_pos", "prevalence", "auc", "accuracy", "pos_rate", "tpr", "fpr", "ece", "underdiag",
                        "pos_rate_at_0.5", "tpr_at_0.5", "fpr_at_0.5"]
GROUP_COLUMNS = (
    KEY + ["kind", "question", "attribute", "group", "n_cases", "n_rows", "n_invalid", "invalid_rate"]
    + [f"{m}{s}" for m in ("mean_outcome", "decision_rate") for s in ("", "_ci_low", "_ci_high", "_note")]
    + IMAGING_GROUP_VALUES
    + ["small"]
)
INT_COLUMNS = ["n_cases", "n_requests", "n_invalid", "small_groups", "seed", "limit", "sample", "n_rows", "n_pos"]
BOOL_COLUMNS = [c for c in COLUMNS + GROUP_COLUMNS if c.endswith("_significant")] + ["small"]

GLOSSARY = [
    ("kind", "text (counterfactual audit of vignettes) or imaging (group audit of per-image predictions); a column that does not apply to a row's kind is empty"),
    ("utility", "text: accuracy against the reference answer (invalid answers count as wrong), or “no reference” where the question has no reference answer (e.g. treatment, triage); imaging: AUC of the primary endpoint (accuracy where AUC is undefined); higher is better"),
    ("cf_flip_rate", "share of cases whose decision is not the same in every counterfactual variant; lower is fairer"),
    ("cf_mean_abs_delta", "mean over cases of the mean \\|outcome(variant) − outcome(reference variant)\\|; lower is fairer"),
    ("dp_gap", "max − min over the headline groups of the positive-decision rate (text: binary questions only; imaging: by the primary attribute, at the threshold tuned on validation); lower is fairer"),
    ("eod, auc_gap, ece_gap, underdiag_gap", "imaging: equalized-odds difference (max of the TPR and FPR gaps), gaps of AUC, of expected calibration error and of the underdiagnosis rate over the primary attribute's groups; lower is fairer"),
    ("worst group", "text: the headline group with the lowest mean outcome (P(positive) or expected score), with that mean; imaging: the group with the lowest AUC, with that AUC"),
    ("n", "text: cases (requests = cases × variants); imaging: test patients (requests = test images)"),
    ("invalid rate", "share of requests whose answer could not be scored; counted, never dropped"),
]


# ----- one run -> one row + its per-group rows -----

def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(float(ts), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FairbenchError(f"{path} not found: {path.parent} is not a finished fairbench run directory.") from None
    except json.JSONDecodeError as exc:
        raise FairbenchError(f"{path}: not valid JSON ({exc.msg}); re-run `fairbench score {path.parent}`.") from None


def _put(row: dict, prefix: str, est: dict | None) -> None:
    est = est or {}
    row[prefix] = est.get("value")
    row[f"{prefix}_ci_low"] = est.get("ci_low")
    row[f"{prefix}_ci_high"] = est.get("ci_high")
    if est.get("note") and est.get("ci_low") is None:  # why there is no interval (e.g. no variation)
        row[f"{prefix}_note"] = est["note"]


def audits(results: dict) -> dict:
    """The audits of a run (schema 2: ``results["audits"]``)."""
    return results.get("audits") or {}


def kind_of(results: dict) -> str:
    """``text`` or ``imaging``: the results' kind, else read off the audits present."""
    kind = results.get("kind") or results.get("run", {}).get("kind")
    if kind:
        return kind
    return "imaging" if "group" in audits(results) else "text"


def headline_groups(results: dict) -> tuple[str, dict]:
    """The primary question's per-attribute results (the intersection is the headline groups)."""
    qid = results["metrics"]["question"]
    cf = audits(results).get("counterfactual") or {}
    return qid, cf.get("questions", {}).get(qid, {}).get("attributes", {})


def primary_group_result(results: dict) -> tuple[str, str, dict]:
    """Imaging: (endpoint, attribute, the group audit's result of the primary endpoint by the primary attribute)."""
    m = results["metrics"]
    e, attr = m.get("question"), m.get("attribute")
    ep = (audits(results).get("group") or {}).get("endpoints", {}).get(e, {})
    attrs = ep.get("attributes", {})
    if attr not in attrs and attrs:
        attr = next(iter(attrs))
    return e, attr, attrs.get(attr, {})


def _attribute_rank(attr: str, attributes: dict) -> tuple:
    """Task-card order (read off the intersection labels, ``race=..|gender=..``), intersection last."""
    inter = attributes.get("intersection", {}).get("groups", {})
    order = [part.split("=", 1)[0] for part in next(iter(inter), "").split("|") if part]
    if attr == "intersection":
        return (2, 0, attr)
    return (0, order.index(attr), attr) if attr in order else (1, 0, attr)


def _common(run_dir: Path, results: dict, manifest: dict, kind: str) -> dict:
    run, m = results["run"], results["metrics"]
    return {
        "task": run["task"], "prompt_mode": run.get("prompt_mode") or ("image" if kind == "imaging" else ""),
        "model": run["model"], "eval_split": split_name(run.get("eval_split")), "kind": kind,
        "base_model": run.get("base_model") or "", "question": m.get("question"),
    }


def _finish(row: dict, run_dir: Path, results: dict, manifest: dict) -> None:
    run = results["run"]
    finished = manifest.get("finished_at") or (run_dir / "results.json").stat().st_mtime
    git = manifest.get("git") or {}
    row.update({
        "seed": run.get("seed"), "limit": run.get("limit"), "sample": run.get("sample"), "run_id": run_dir.name,
        "model_fingerprint": run.get("model_fingerprint"),
        "git_commit": commit_label(git, run.get("rescored")),
        "finished_at": _iso(finished),
        # A derived model's description says what the mitigation did (teacher, grouping, ideal family ...).
        "model_description": ((manifest.get("model") or {}).get("spec") or {}).get("description") if run.get("base_model") else None,
    })


def text_entry(row: dict, results: dict) -> list[dict]:
    """Fill a text run's row (counterfactual audit); returns its per-group rows."""
    m = results["metrics"]
    # Utility is accuracy against the task's reference answer (``reference_field``); a question without
    # one (treatment, triage) has no utility measure: the CSV cell is empty and the Markdown says
    # "no reference". (It once also looked up ``agreement``, which is triage's question id, not a metric.)
    utility = "accuracy" if isinstance(m.get("accuracy"), dict) else None
    row["utility_metric"] = utility or ""
    _put(row, "utility", m.get(utility) if utility else None)
    sig = m.get("significance", {})
    for name in FAIRNESS_METRICS:
        _put(row, name, m.get(name))
    for name in MARKED:
        row[f"{name}_p_adjusted"] = sig.get(name, {}).get("p_adjusted") if name in m else None
        row[f"{name}_significant"] = sig.get(name, {}).get("significant") if name in m else None
    # A group without any valid answer is shown, not dropped (issue 13): the worst group is unknown.
    unmeasurable = m.get("unmeasurable_groups") or []
    row["worst_group"] = m.get("worst_group") or (f"unmeasurable: {', '.join(unmeasurable)}" if unmeasurable else "")
    _put(row, "worst_group_outcome", m.get("worst_group_outcome"))
    if isinstance(m.get("accuracy"), dict):
        _put(row, "accuracy", m.get("accuracy"))
    qid, attributes = headline_groups(results)
    cf = audits(results).get("counterfactual") or {}
    q = cf.get("questions", {}).get(qid, {})
    inv = m.get("invalid_rate_ci") or {"value": m.get("invalid_rate")}
    row.update({"n_cases": m.get("n_cases"), "n_requests": m.get("n_rows"), "n_invalid": q.get("n_invalid")})
    _put(row, "invalid_rate", inv)
    row.update({
        "small_groups": sum(bool(g.get("small")) for a in attributes.values() for g in a.get("groups", {}).values()),
        "correction": cf.get("correction", {}).get("method"),
    })
    _generative_entry(row, results, qid)
    groups = []
    for attr, ares in sorted(attributes.items(), key=lambda kv: _attribute_rank(kv[0], attributes)):
        for name, g in ares.get("groups", {}).items():
            grow = {k: row[k] for k in KEY}
            grow.update({"kind": row["kind"], "question": qid, "attribute": attr, "group": name, "n_cases": g.get("n_cases"),
                         "n_rows": g.get("n_rows"), "n_invalid": g.get("n_invalid"), "invalid_rate": g.get("invalid_rate"),
                         "small": bool(g.get("small"))})
            _put(grow, "mean_outcome", g.get("mean_outcome"))
            _put(grow, "decision_rate", g.get("decision_rate"))
            groups.append(grow)
    return groups


def _generative_entry(row: dict, results: dict, qid: str) -> None:
    """A free-text run's generative headline (question ``qid``) with the adjusted p of the generative
    audit's paired test over the headline groups (Cochran's Q on each rate, Wilcoxon drift vs floor)."""
    gen = audits(results).get("generative") or {}
    q = (gen.get("questions") or {}).get(qid) if gen.get("applicable") else None
    if not q:
        return
    attrs = q.get("attributes", {})
    key = "intersection" if "intersection" in attrs else next(iter(attrs), None)
    by_target = {t.get("target"): t for t in gen.get("tests", [])}
    for name in GENERATIVE_METRICS:
        _put(row, name, q.get(name.removeprefix("gen_")))
        test = by_target.get(f"{qid}/{key}/{GENERATIVE_TESTS[name]}") if name in GENERATIVE_TESTS else None
        if test is not None and test.get("p_adjusted") is not None:
            row[f"{name}_p_adjusted"], row[f"{name}_significant"] = test["p_adjusted"], bool(test.get("significant"))


def _value(est) -> float | None:
    return est.get("value") if isinstance(est, dict) else est


def imaging_entry(row: dict, results: dict) -> list[dict]:
    """Fill an imaging run's row (group audit, primary endpoint by the primary attribute); returns its per-group rows."""
    m = results["metrics"]
    utility = next((u for u in ("auc", "accuracy") if _value(m.get(u)) is not None), None)
    row["utility_metric"] = utility or ""
    _put(row, "utility", m.get(utility) if utility else None)
    for name in IMAGING_ESTIMATES + ["dp_gap"]:
        if isinstance(m.get(name), dict):
            _put(row, name, m[name])
    e, attr, res = primary_group_result(results)
    row["attribute"] = attr or m.get("attribute")
    # The headline gap's own test: the group audit's permutation test of dp_gap (Holm-corrected over the
    # run), never another test of the attribute (the chi-square, another gap's); no marker when it is not applicable.
    test = next((t for t in res.get("tests", []) if t.get("test") == "permutation_gap"
                 and str(t.get("target", "")).rsplit("/", 1)[-1] == "dp_gap"), None)
    if test is not None and test.get("p_adjusted") is not None and row.get("dp_gap") is not None:
        row["dp_gap_p_adjusted"] = test.get("p_adjusted")
        row["dp_gap_significant"] = bool(test.get("significant"))
    row["worst_group"] = m.get("worst_group") or ""
    inv = m.get("invalid_rate")
    inv = inv if isinstance(inv, dict) else {"value": inv if inv is not None else results.get("invalid_rate")}
    _put(row, "invalid_rate", inv)
    group = audits(results).get("group") or {}
    row.update({
        "n_cases": m.get("n_cases"), "n_requests": m.get("n_rows", results.get("n_test")),
        "n_invalid": results.get("n_invalid"),
        "small_groups": sum(bool(g.get("small")) for g in res.get("groups", {}).values()),
        "correction": (group.get("correction") or {}).get("method"),
    })
    groups = []
    for name, g in res.get("groups", {}).items():
        grow = {k: row[k] for k in KEY}
        grow.update({"kind": row["kind"], "question": e, "attribute": attr, "group": name, "n_rows": g.get("n"),
                     "small": bool(g.get("small"))})
        grow.update({k: g.get(k) for k in IMAGING_GROUP_VALUES})
        groups.append(grow)
    return groups


# Which paired test over the headline groups speaks to each metric (as kinds/text/evaluate.py).
_SIGNIFICANCE_TESTS = {"cf_flip_rate": "decision", "dp_gap": "decision", "cf_mean_abs_delta": "outcome", "worst_group": "outcome"}


def question_metrics(results: dict, qid: str) -> dict:
    """Text: the headline metrics of question ``qid`` read off the counterfactual audit, as
    ``results["metrics"]`` holds them for the primary question (used by ``--question``)."""
    cf = audits(results).get("counterfactual") or {}
    questions = cf.get("questions", {})
    if qid not in questions:
        raise FairbenchError(f"--question {qid!r}: the run has no such question; it has {', '.join(questions) or 'none'}.")
    if qid == results["metrics"].get("question"):
        return results["metrics"]
    q = questions[qid]
    out = {"question": qid, "n_cases": q.get("n_cases"), "n_rows": q.get("n_rows"), "invalid_rate": q.get("invalid_rate"),
           "invalid_rate_ci": {"value": q.get("invalid_rate")}}
    for name in ("cf_flip_rate", "cf_mean_abs_delta", "cf_spread", "accuracy"):
        if name in q:
            out[name] = q[name]
    attrs = q.get("attributes", {})
    inter = attrs.get("intersection") or next(iter(attrs.values()), {})
    if "dp_gap" in inter:
        out["dp_gap"] = inter["dp_gap"]
    if inter.get("worst_group") is not None:
        out["worst_group"] = inter["worst_group"]
        out["worst_group_outcome"] = inter["groups"][inter["worst_group"]]["mean_outcome"]
    if q.get("unmeasurable_groups"):
        out["unmeasurable_groups"] = list(q["unmeasurable_groups"])
    key = "intersection" if "intersection" in attrs else next(iter(attrs), None)
    by_target = {t["target"]: t for t in cf.get("tests", []) if t.get("paired")}
    out["significance"] = {
        metric: {"p_adjusted": by_target[f"{qid}/{key}/{kind}"].get("p_adjusted"),
                 "significant": by_target[f"{qid}/{key}/{kind}"].get("significant")}
        for metric, kind in _SIGNIFICANCE_TESTS.items() if f"{qid}/{key}/{kind}" in by_target
    }
    return out


def run_entry(run_dir: Path, question: str | None = None) -> tuple[dict, list[dict]]:
    """The leaderboard row and the per-group rows of one finished run directory (any kind);
    ``question``: a text run's question to show (default: the primary one)."""
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    if question is not None and "counterfactual" in audits(results):
        results = {**results, "metrics": question_metrics(results, question)}
    manifest = _read_json(run_dir / "manifest.json") if (run_dir / "manifest.json").exists() else {}
    for field in ("run", "metrics"):
        if not isinstance(results.get(field), dict):
            raise FairbenchError(f"{run_dir / 'results.json'}: no {field!r} field; re-run `fairbench score {run_dir}`.")
    kind = kind_of(results)
    row = _common(run_dir, results, manifest, kind)
    present = audits(results)
    if "counterfactual" in present:
        groups = text_entry(row, results)
    elif "group" in present:
        groups = imaging_entry(row, results)
    else:
        raise FairbenchError(
            f"{run_dir / 'results.json'}: no counterfactual or group audit under 'audits' (schema_version "
            f"{results.get('schema_version')}); re-score it with `fairbench score {run_dir}`."
        )
    _finish(row, run_dir, results, manifest)
    return {c: row.get(c) for c in COLUMNS}, [{c: g.get(c) for c in GROUP_COLUMNS} for g in groups]


# ----- merge, order -----

def _clean(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if hasattr(v, "item"):  # numpy scalar
        v = v.item()
    return v


def _records(path: Path, columns: list[str]) -> list[dict]:
    if not path.exists():
        return []
    try:
        df = pd.read_csv(path, dtype={c: str for c in ("task", "prompt_mode", "model", "eval_split", "base_model")},
                         keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise FairbenchError(f"{path}: not a fairbench leaderboard CSV ({exc}). Move it away or choose another --output.") from None
    missing = [c for c in KEY if c not in df.columns]
    if missing:
        raise FairbenchError(f"{path}: missing column(s) {', '.join(missing)}; not a fairbench leaderboard CSV. Choose another --output.")
    out = []
    for rec in df.to_dict("records"):
        rec = {c: _clean(rec.get(c)) for c in columns}
        for c in KEY + ["base_model"]:
            if c in rec:
                rec[c] = rec[c] or ""
        rec["eval_split"] = split_name(rec.get("eval_split"))
        if "kind" in rec and not rec["kind"]:  # boards written before the kind column held text runs only
            rec["kind"] = "imaging" if rec.get("prompt_mode") == "image" else "text"
        for c in BOOL_COLUMNS:
            if c in rec and rec[c] is not None:
                rec[c] = rec[c] in (True, "True", "true", 1)
        out.append(rec)
    return out


def _blank(v) -> bool:
    return v in (None, "") or (isinstance(v, float) and math.isnan(v))


def _cases_label(row: dict) -> str:
    """How a run chose its cases: "all", "limit N" (the first N) or "sample N" (N drawn with the seed)."""
    if not _blank(row.get("sample")):
        return f"sample {int(row['sample'])}"
    return "all" if _blank(row.get("limit")) else f"limit {int(row['limit'])}"


def _run_label(row: dict) -> str:
    return (f"{row.get('model')} · {row.get('task')} · {row.get('prompt_mode')} · {split_name(row.get('eval_split'))} "
            f"(run {row.get('run_id')}, seed {row.get('seed')}, {_cases_label(row)})")


def _covers(new: dict, old: dict) -> bool:
    """Whether ``new`` is the same configuration as ``old`` or a larger one (same seed, at least as many
    cases): only such a run may replace ``old`` without ``--replace``."""
    def lim(r):  # the number of cases the run chose (--limit or --sample); all cases = inf
        for k in ("limit", "sample"):
            if not _blank(r.get(k)):
                return int(r[k])
        return math.inf

    def seed(r):
        v = r.get("seed")
        return None if v in (None, "") or (isinstance(v, float) and math.isnan(v)) else int(v)

    return seed(new) == seed(old) and lim(new) >= lim(old)


def merge(rows: list[dict], groups: list[dict], new: list[tuple[dict, list[dict]]], replace: bool = False,
          notes: list[str] | None = None) -> tuple[list[dict], list[dict]]:
    """Add new entries, one row per key (model x task x prompt mode x evaluation split). A run never
    replaces the row of its key silently (issue 17): without ``replace`` it replaces the row only if it
    is the same configuration and newer, or a larger one (same seed, larger ``--limit`` or none);
    otherwise (another seed, a smaller limit, or an older rerun) the new run is dropped. With
    ``replace`` the new run always replaces the row. Every replaced or dropped run is described in
    ``notes`` (one line each)."""
    notes = notes if notes is not None else []
    by_key = {row_key(r): r for r in rows}
    groups_by_key: dict[tuple, list[dict]] = {}
    for g in groups:
        groups_by_key.setdefault(row_key(g), []).append(g)
    for row, grows in new:
        key = row_key(row)
        old = by_key.get(key)
        if old is not None and old.get("run_id") == row.get("run_id") and old.get("finished_at") == row.get("finished_at"):
            pass  # the same run added again: refresh it
        elif old is not None and not replace:
            newer = (old.get("finished_at") or "") <= (row.get("finished_at") or "")
            if _covers(row, old) and (newer or not _covers(old, row)):
                notes.append(f"replaced {_run_label(old)} by {_run_label(row)}")
            else:
                why = ("the same configuration, older than" if _covers(row, old) and _covers(old, row)
                       else "another seed or fewer cases (--limit/--sample) than")
                notes.append(f"dropped as duplicate: {_run_label(row)}: {why} the row kept, {_run_label(old)}; "
                             "pass --replace to replace it")
                continue
        elif old is not None:
            notes.append(f"replaced (--replace) {_run_label(old)} by {_run_label(row)}")
        by_key[key] = row
        groups_by_key[key] = grows
    return list(by_key.values()), [g for k in by_key for g in groups_by_key.get(k, [])]


def _metric(row: dict, name: str) -> float:
    v = row.get(name)
    return math.inf if v is None else float(v)


def sort_metrics(kind: str | None, sort_by: str) -> tuple[str, str]:
    """(sort metric, tie-break metric) for a row of ``kind``: ``sort_by`` where the kind has it, else the
    kind's default (a board sorted by a text metric still orders its imaging rows, and vice versa)."""
    kind = kind if kind in FAIRNESS_BY_KIND else "text"
    metric = sort_by if sort_by in FAIRNESS_BY_KIND[kind] else KIND_SORT[kind]
    if kind == "text":
        tie = "cf_mean_abs_delta" if metric != "cf_mean_abs_delta" else "cf_flip_rate"
    else:
        tie = "eod" if metric != "eod" else "dp_gap"
    return metric, tie


def order(rows: list[dict], sort_by: str) -> list[dict]:
    """Group by (task, prompt mode); within, sort model families (a base and its derived models) by
    the base's ``sort_by`` (lower first; ties by cf_mean_abs_delta, then name); derived rows follow
    their base, themselves sorted by ``sort_by``. A row whose kind lacks ``sort_by`` is sorted by its
    kind's default (text: cf_mean_abs_delta, imaging: dp_gap)."""

    def rank(r: dict) -> tuple:
        metric, tie = sort_metrics(r.get("kind"), sort_by)
        return (_metric(r, metric), _metric(r, tie), r["model"], r.get("eval_split") or "")

    out = []
    blocks: dict[tuple, list[dict]] = {}
    for r in rows:
        blocks.setdefault((r["task"], r["prompt_mode"]), []).append(r)
    for block_key in sorted(blocks):
        block = blocks[block_key]
        names = {r["model"] for r in block}
        families: dict[str, list[dict]] = {}
        for r in block:
            base = r.get("base_model") or ""
            families.setdefault(base if base in names else r["model"], []).append(r)
        fam_rank = {}
        for fam, members in families.items():
            heads = [r for r in members if r["model"] == fam] or members
            fam_rank[fam] = min(rank(r) for r in heads)
        for fam in sorted(families, key=lambda f: fam_rank[f]):
            members = families[fam]
            heads = sorted((r for r in members if r["model"] == fam), key=rank)
            out.extend(heads + sorted((r for r in members if r["model"] != fam), key=rank))
    return out


# ----- outputs -----

def _frame(records: list[dict], columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(records, columns=columns)
    for c in INT_COLUMNS:
        if c in df.columns:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    return df


def _fmt(v, ci_low=None, ci_high=None, mark: bool | None = None, digits: int = 3) -> str:
    if v is None:
        return "—"
    text = f"{v:.{digits}f}"
    if ci_low is not None and ci_high is not None:
        text += f" [{ci_low:.{digits}f}, {ci_high:.{digits}f}]"
    return text + (" \\*" if mark else "")


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _row_kind(r: dict) -> str:
    return r.get("kind") if r.get("kind") in KINDS else "text"


# Markdown table columns of each kind: (header, cell(row)).
def _est(name: str, marked: bool = True):
    def cell(r: dict) -> str:
        text = _fmt(r.get(name), r.get(f"{name}_ci_low"), r.get(f"{name}_ci_high"), r.get(f"{name}_significant") if marked else None)
        note = r.get(f"{name}_note")
        # A value without an interval is not evidence of fairness: say why (e.g. "no variation").
        return f"{text} ({_md_escape(str(note).split(':')[0])})" if note else text

    return cell


def _worst_text(r: dict) -> str:
    wg = r.get("worst_group")
    if not wg:
        return "—"
    text = _fmt(r.get("worst_group_outcome"), r.get("worst_group_outcome_ci_low"),
                r.get("worst_group_outcome_ci_high"), r.get("worst_group_significant"))
    note = r.get("worst_group_outcome_note")
    return f"{_md_escape(wg)}: {text}" + (f" ({_md_escape(str(note).split(':')[0])})" if note else "")


def _worst_imaging(r: dict) -> str:
    wg = r.get("worst_group")
    if not wg:
        return "—"
    return f"{_md_escape(wg)}: AUC " + _fmt(r.get("worst_group_auc"), r.get("worst_group_auc_ci_low"), r.get("worst_group_auc_ci_high"))


MD_COLUMNS = {
    "text": [(m, _est(m)) for m in FAIRNESS_METRICS] + [("worst group", _worst_text)],
    "imaging": [(m, _est(m)) for m in IMAGING_FAIRNESS_METRICS] + [("worst group", _worst_imaging)],
}


def _delta_cell(r: dict, m: str) -> str:
    d = r.get(f"{m}_delta")
    if d is None:
        return "—"
    p = r.get(f"{m}_delta_p_adjusted")
    lo, hi = r.get(f"{m}_delta_ci_low"), r.get(f"{m}_delta_ci_high")
    if p is None:  # no test: say why rather than print a bare Δ
        return f"{d:+.3f} (no difference on any shared case)" if d == 0 else f"{d:+.3f} (not testable)"
    # Without an interval the difference was the same on every resample (e.g. every case flips).
    text = f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None else f"{d:+.3f} (same on every resample)"
    if not r.get(f"{m}_delta_significant"):
        return f"{text} p={p:.2g} n.s."
    better = (d > 0) == HIGHER_IS_BETTER[m]
    return f"{text} p={p:.2g} {'better' if better else 'worse'}"


def _generative_table(block: list[dict]) -> list[str]:
    """The generative audit's headline of the block's free-text rows (none for choice rows)."""
    rows = [r for r in block if any(r.get(m) is not None or r.get(f"{m}_note") for m in GENERATIVE_METRICS)]
    if not rows:
        return []
    lines = ["Generative audit of the same rows (docs/generative.md): rates over the sample-0 texts with clustered Wilson "
             "intervals; drift = 1 − cosine of MiniLM embeddings of a variant's rationale and the reference variant's, the "
             "noise floor the same between two seeded samples of one variant, excess = drift − floor (bootstrap intervals). "
             "\\* marks a significant paired test over the headline groups (Cochran's Q on a rate; Wilcoxon drift vs floor), in "
             "the run's family.", "",
             "| model | " + " | ".join(m.removeprefix("gen_").replace("_", " ") for m in GENERATIVE_METRICS) + " |",
             "|:--|" + "--:|" * len(GENERATIVE_METRICS)]
    for r in rows:
        lines.append(f"| {_md_escape(r['model'])} | " + " | ".join(_est(m)(r) for m in GENERATIVE_METRICS) + " |")
    return lines + [""]


def _delta_table(block: list[dict]) -> list[str]:
    """The paired differences of each row against the reference row of its block (``--reference``):
    one table of the decision metrics, one of the generative ones where a row has them."""
    ref_model = next((r.get("delta_reference") for r in block if r.get("delta_reference")), None)
    if ref_model is None:
        return []
    ref = next((r for r in block if r["model"] == ref_model), None)
    rows = [r for r in block if r.get("delta_reference") == ref_model and ref is not None
            and r.get("delta_reference_run_id") == ref.get("run_id")]
    if not rows:
        return []
    lines = [(f"Paired differences against `{_md_escape(ref_model)}` on the same cases (row − reference, 95% bootstrap CI over "
              "cases; p two-sided, Holm-corrected over the row's metrics; n.s. = not significant at 0.05, i.e. the method did "
              f"not move the metric detectably): {_md_escape(rows[0].get('delta_method') or '')}."), ""]
    decision = [m for m in DELTA_METRICS if m not in GENERATIVE_DELTA_METRICS]
    generative = [m for m in GENERATIVE_DELTA_METRICS if any(r.get(f"{m}_delta") is not None for r in rows)]
    for metrics in (decision, generative):
        if not metrics:
            continue
        lines += ["| model | " + " | ".join(f"Δ {m}" for m in metrics) + " |", "|:--|" + "--:|" * len(metrics)]
        for r in rows:
            lines.append(f"| {_md_escape(r['model'])} | " + " | ".join(_delta_cell(r, m) for m in metrics) + " |")
        lines.append("")
    return lines


def render_markdown(name: str, rows: list[dict], groups: list[dict], sort_by: str, plots: dict) -> str:
    corrections = sorted({r.get("correction") for r in rows if r.get("correction")})
    kinds = sorted({_row_kind(r) for r in rows})
    lines = [
        f"# Leaderboard: {name}",
        "",
        f"Rows are sorted by **`{sort_by}`** (lower is fairer), within each task and prompt mode"
        + ("" if all(sort_by in FAIRNESS_BY_KIND[k] for k in kinds) else
           " (rows of a kind without it by " + ", ".join(f"`{KIND_SORT[k]}` for {k}" for k in kinds if sort_by not in FAIRNESS_BY_KIND[k]) + ")")
        + "; derived models (`base+method`) follow their base (↳). Values are point estimates with 95% intervals in brackets, "
        + ("over cases" if kinds == ["text"] else "over patients" if kinds == ["imaging"] else "over cases (text) or patients (imaging)")
        + (": Wilson intervals for rates (clustered by case), simultaneous bootstrap intervals for max − min gaps, "
           "which are 0-based unless their permutation test rejects (README: Statistics), bootstrap otherwise" if "text" in kinds
           else ": Wilson intervals for rates (clustered by patient), patient bootstrap otherwise, gaps 0-based unless their "
           "permutation test rejects (README: Statistics)")
        + ". \\* marks a metric whose " + ("paired " if kinds == ["text"] else "") + "test of \"no group effect\" is significant after "
        f"{'/'.join(corrections) or 'multiple-testing'} correction over all tests of the run.",
        "",
    ]
    blocks: dict[tuple, list[dict]] = {}
    for r in rows:
        blocks.setdefault((r["task"], r["prompt_mode"], _row_kind(r)), []).append(r)
    for (task, mode, kind), block in blocks.items():
        show_split = any(r.get("eval_split") != "all" for r in block)
        lines += [f"## {task} · {mode}" + (" (imaging)" if kind == "imaging" and len(kinds) > 1 else ""), ""]
        if kind == "text" and block[0].get("question"):
            lines += [f"Question `{_md_escape(block[0]['question'])}` (`fairbench leaderboard --question QID` shows another).", ""]
        cols = MD_COLUMNS[kind]
        head = ["model"] + (["eval split"] if show_split else []) + ["utility"] + [h for h, _ in cols] + ["n", "invalid rate"]
        lines.append("| " + " | ".join(head) + " |")
        align = [":--"] * (1 + show_split) + ["--:"] + ["--:" if h != "worst group" else ":--" for h, _ in cols] + ["--:", "--:"]
        lines.append("|" + "|".join(align) + "|")
        for r in block:
            model = _md_escape(r["model"])
            if r.get("base_model") and any(o["model"] == r["base_model"] for o in block):
                model = f"↳ {model}"
            cells = [model] + ([_md_escape(r.get("eval_split") or "all")] if show_split else [])
            util = _est("utility", marked=False)(r)
            cells.append(f"{r['utility_metric']} {util}" if r.get("utility_metric")
                         else "no reference" if kind == "text" else "—")
            cells += [cell(r) for _, cell in cols]
            unit = "img." if kind == "imaging" else "req."
            n = f"{r.get('n_cases')} ({r.get('n_requests')} {unit})"
            if r.get("small_groups"):
                n += f", {r['small_groups']} small group(s)"
            cells.append(n)
            cells.append(_est("invalid_rate", marked=False)(r))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines += _generative_table(block)
        lines += _delta_table(block)
        if (task, mode) in plots:
            what = "AUC" if kind == "imaging" else "Mean outcome"
            lines += [f"![{what} by group, {task} · {mode}]({plots[(task, mode)]})", ""]
            plots = {k: v for k, v in plots.items() if k != (task, mode)}  # once per (task, mode)
    if plots.get("tradeoff"):
        lines += ["## Utility against fairness", "",
                  f"![Utility against {sort_by}, one point per model, Pareto frontier dashed]({plots['tradeoff']})", ""]
    lines += ["## Glossary", "", "| column | meaning |", "|:--|:--|"]
    lines += [f"| {k} | {v} |" for k, v in GLOSSARY]
    if "text" in kinds:
        lines += [
            "| 95% CI | by kind of estimate (README: Statistics). Rates (cf_flip_rate, decision rates, accuracy, invalid rate): "
            "Wilson interval on the effective number of independent observations, clustered by case. Gaps (dp_gap, max − min "
            "over groups): simultaneous bootstrap interval over cases whose lower end is 0 unless the within-case permutation "
            "test rejects, capped at the largest gap the values allow. Means (cf_mean_abs_delta, the worst group's mean "
            "outcome): case bootstrap (BCa, percentile where BCa is undefined), the variants of a case resampled together. "
            "No interval, with the reason, e.g. “(no variation)”, when every case gives the same value |",
            "| \\* | the paired test over the headline groups (the intersection of all attributes) is significant after "
            "correction: Cochran's Q / McNemar on decisions for cf_flip_rate and dp_gap, Friedman / Wilcoxon on outcomes "
            "for cf_mean_abs_delta and the worst group |",
        ]
    if "imaging" in kinds:
        lines += [
            "| 95% CI (imaging) | over test patients, all images of a patient together (README: Statistics). Rates (accuracy): "
            "Wilson interval clustered by patient. Gaps (dp_gap, eod, auc_gap, ece_gap, underdiag_gap): patient bootstrap "
            "(BCa) of max − min whose lower end is 0 unless the patient-level permutation test rejects. AUC, worst-group AUC: "
            "patient bootstrap (BCa). No interval, with the reason, e.g. “(no variation)”, when every resample of patients "
            "gives the same value |",
            "| \\* (imaging) | dp_gap's own permutation test (group labels shuffled across patients) is significant after "
            "correction; no mark when that test is not applicable |",
        ]
    lines += [
        "| small group | a group with fewer cases (imaging: images) than the task's `audit.min_group_size`: its estimates are unreliable"
        + (" and it is left out of the imaging gaps" if "imaging" in kinds else "") + " |",
        "",
    ]
    lines += ["## Per-group detail", "",
              "Primary question (imaging: primary endpoint) only; one table per run. Mean outcome is P(positive answer) for binary "
              "questions and the expected score for ordinal ones; imaging groups are those of the primary attribute, "
              "with rates at the threshold tuned on validation.", ""]
    by_key: dict[tuple, list[dict]] = {}
    for g in groups:
        by_key.setdefault(row_key(g), []).append(g)
    for r in rows:
        grows = by_key.get(row_key(r), [])
        if not grows:
            continue
        split = f" · {r['eval_split']}" if r.get("eval_split") != "all" else ""
        lines += [f"<details><summary>{r['model']} · {r['task']} · {r['prompt_mode']}{split}</summary>", ""]
        if _row_kind(r) == "imaging":
            lines += ["| attribute | group | images | prevalence | AUC | pos rate | TPR | FPR | ECE | underdiag |",
                      "|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|"]
            for g in grows:
                small = " (small)" if g.get("small") else ""
                vals = " | ".join(_fmt(g.get(k)) for k in ("prevalence", "auc", "pos_rate", "tpr", "fpr", "ece", "underdiag"))
                lines.append(f"| {_md_escape(g['attribute'])} | {_md_escape(g['group'])}{small} | {g.get('n_rows')} | {vals} |")
            lines += ["", "</details>", ""]
            continue
        lines += ["| attribute | group | cases | requests | invalid | mean outcome | decision rate |",
                  "|:--|:--|--:|--:|--:|--:|--:|"]
        for g in grows:
            small = " (small)" if g.get("small") else ""
            lines.append(
                f"| {_md_escape(g['attribute'])} | {_md_escape(g['group'])}{small} | {g.get('n_cases')} | {g.get('n_rows')} | "
                f"{g.get('n_invalid')} | {_est('mean_outcome', marked=False)(g)} | {_est('decision_rate', marked=False)(g)} |"
            )
        lines += ["", "</details>", ""]
    described = [r for r in rows if r.get("model_description")]
    if described:
        lines += ["## Derived models", ""] + [f"- `{_md_escape(r['model'])}`: {_md_escape(r['model_description'])}" for r in described] + [""]
    lines += ["## Runs", "", "| model | task | prompt mode | seed | cases | run id | commit | finished (UTC) |",
              "|:--|:--|:--|--:|--:|:--|:--|:--|"]
    for r in rows:
        lines.append(
            f"| {_md_escape(r['model'])} | {r['task']} | {r['prompt_mode']} | {r.get('seed')} | {_cases_label(r)} | "
            f"`{r.get('run_id')}` | `{r.get('git_commit') or '?'}` | {r.get('finished_at')} |"
        )
    return "\n".join(lines) + "\n"


def output_base(output: Path) -> Path:
    output = Path(output)
    if output.suffix in (".md", ".csv"):
        output = output.with_suffix("")
    if not output.name:
        raise FairbenchError("--output needs a leaderboard name, e.g. leaderboards/demo.")
    return output


def update(run_dirs: list[Path], output: Path, sort_by: str = DEFAULT_SORT, plots: bool = True,
           replace: bool = False, notes: list[str] | None = None, question: str | None = None,
           annotate=None) -> dict[str, Path]:
    """Merge ``run_dirs`` into the leaderboard at ``output`` (``leaderboards/NAME``); returns written files.
    ``replace``: a run replaces the row of its key even if it is another seed or a smaller ``--limit``
    (see :func:`merge`); ``notes`` receives one line per replaced or dropped run (if None, they are
    issued as warnings). ``question``: the question of text runs to show (default: each task's primary
    question); a board holds one question per task. ``annotate(rows, notes)``: called on the merged rows
    before writing, to add columns computed from the runs (the CLI passes ``boards.check.reference_deltas``
    for ``--reference``; injected so that this module does not import the gate, which imports it)."""
    if sort_by not in SORT_METRICS:
        raise FairbenchError(f"--sort-by {sort_by!r} is not a fairness metric; use one of {', '.join(SORT_METRICS)}.")
    if not run_dirs:
        raise FairbenchError("give at least one RUN_DIR written by `fairbench run`.")
    base = output_base(output)
    new = [run_entry(Path(d), question) for d in run_dirs]  # read (and validate) before taking the lock
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FairbenchError(f"cannot create {base.parent} ({exc.strerror}); choose another --output.") from None
    name = base.name
    paths = {"md": base.with_name(f"{name}.md"), "csv": base.with_name(f"{name}.csv"), "groups": base.with_name(f"{name}.groups.csv")}
    with FileLock(str(base.with_name(f".{name}.lock")), timeout=600):
        collected: list[str] = []
        held = {(r["task"], r["prompt_mode"]): r.get("question") for r in _records(paths["csv"], COLUMNS)}
        for row, _ in new:
            had = held.get((row["task"], row["prompt_mode"]))
            if had and row.get("question") and had != row["question"]:
                raise FairbenchError(
                    f"{paths['csv']} shows question {had!r} of {row['task']} · {row['prompt_mode']}, not {row['question']!r}: "
                    "write another question to another --output (one question per task and board).")
        rows, groups = merge(_records(paths["csv"], COLUMNS), _records(paths["groups"], GROUP_COLUMNS), new,
                             replace=replace, notes=collected)
        rows = order(rows, sort_by)
        if annotate is not None:
            annotate(rows, collected)
        figures: dict = {}
        if plots:
            from . import plots as plotting

            block_metrics = {(r["task"], r["prompt_mode"]): sort_metrics(r.get("kind"), sort_by)[0] for r in rows}
            figures = plotting.draw_all(base, rows, groups, sort_by, block_metrics)
            paths.update({f"plot:{v}": base.with_name(v) for v in figures.values()})
        write_atomic(paths["csv"], _frame(rows, COLUMNS).to_csv(index=False, lineterminator="\n"))
        write_atomic(paths["groups"], _frame(groups, GROUP_COLUMNS).to_csv(index=False, lineterminator="\n"))
        write_atomic(paths["md"], render_markdown(name, rows, groups, sort_by, figures))
    if notes is not None:
        notes.extend(collected)
    else:
        import warnings

        for line in collected:
            warnings.warn(f"leaderboard {name}: {line}", stacklevel=2)
    return paths
