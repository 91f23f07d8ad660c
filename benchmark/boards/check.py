"""``fairbench check``: the CI fairness regression gate.

Compares a candidate run with a baseline row of a leaderboard CSV. A fairness metric regresses when
its increase exceeds the tolerance (``--max-increase METRIC=DELTA``, default 0) *significantly*:

- **paired** (per-request data of both runs available): restrict both runs to the (case, variant)
  pairs they share, resample cases with replacement (the same resample for both runs, seeded with the
  candidate run's seed), and compute the metric difference candidate − baseline on each resample. The
  one-sided p-value of H0 "increase <= tolerance" is the share of resampled differences at or below the
  tolerance; p-values of the gated metrics are Holm-corrected together; a metric regresses when its
  adjusted p < alpha.
- **CI** (otherwise): the metric regresses when the candidate's 95% CI lies entirely above the
  baseline's 95% CI plus the tolerance (conservative); without CIs, when the point estimate does.

Text runs gate the counterfactual metrics (cf_flip_rate, cf_mean_abs_delta, dp_gap). Imaging runs gate
the group-audit gaps of the primary endpoint by the primary attribute (dp_gap, eod, auc_gap, ece_gap,
underdiag_gap; all lower-is-fairer); their paired test resamples the **patients** of the test images both
runs share (all images of a patient move together), each run keeping its own validation-tuned threshold,
and recomputes the gaps with :mod:`benchmark.audits.group`'s functions. ``invalid_rate`` is gated when
named in ``--max-increase``.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from ..audits.stats import gap, no_variation, r6
from ..errors import FairbenchError
from ..store import read_requests, read_results
from .leaderboard import (
    COLUMNS,
    DELTA_COLUMNS,
    DELTA_METRICS,
    FAIRNESS_BY_KIND,
    GENERATIVE_DELTA_METRICS,
    FAIRNESS_METRICS,
    _records,
    audits,
    kind_of,
    split_name,
)

GATE_METRICS = FAIRNESS_METRICS + ["invalid_rate"]  # text runs
GATE_METRICS_BY_KIND = {k: v + ["invalid_rate"] for k, v in FAIRNESS_BY_KIND.items()}
ALPHA = 0.05


def parse_tolerances(items: list[str] | None, kind: str = "text") -> dict[str, float]:
    """``["dp_gap=0.05", ...]`` -> tolerances for the default fairness metrics of ``kind`` plus those named."""
    kind = kind if kind in FAIRNESS_BY_KIND else "text"
    gate = GATE_METRICS_BY_KIND[kind]
    tol = {m: 0.0 for m in FAIRNESS_BY_KIND[kind]}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in gate:
            raise FairbenchError(
                f"--max-increase {item!r}: expected METRIC=DELTA with METRIC one of {', '.join(gate)} ({kind} runs), e.g. dp_gap=0.05."
            )
        try:
            delta = float(value)
        except ValueError:
            raise FairbenchError(f"--max-increase {item!r}: DELTA must be a number, e.g. {name}=0.05.") from None
        if not math.isfinite(delta) or delta < 0:
            raise FairbenchError(f"--max-increase {item!r}: DELTA must be a finite number >= 0.")
        tol[name] = delta
    return tol


def baseline_row(csv_path: Path, run: dict, baseline_model: str | None) -> dict:
    """The baseline leaderboard row for the candidate's task and prompt mode: the row of
    ``baseline_model``, else of the candidate's own model, else the only row of that task and mode."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FairbenchError(f"--baseline {csv_path} not found; give a leaderboard CSV written by `fairbench leaderboard`.")
    rows = [r for r in _records(csv_path, COLUMNS) if r["task"] == run["task"] and r["prompt_mode"] == run["prompt_mode"]]
    split = split_name(run.get("eval_split"))
    same_split = [r for r in rows if r["eval_split"] == split] or rows
    if not rows:
        raise FairbenchError(
            f"{csv_path}: no row for task {run['task']!r}, prompt mode {run['prompt_mode']!r}; add a baseline run with "
            f"`fairbench leaderboard RUN_DIR --output {csv_path.with_suffix('')}`."
        )
    want = baseline_model or run["model"]
    hits = [r for r in same_split if r["model"] == want]
    if hits:
        return hits[0]
    if baseline_model is None and len(same_split) == 1:
        return same_split[0]
    names = ", ".join(sorted({r["model"] for r in same_split}))
    raise FairbenchError(f"{csv_path}: no row for model {want!r} on {run['task']}/{run['prompt_mode']}; choose one with --baseline-model ({names}).")


# ----- per-case metrics from stored requests -----
# Hand-written on purpose: the audit computes these once with CIs and tests; the paired bootstrap needs
# them thousands of times on resampled cases, so they are vectorised over a cases x variants layout.
# The definitions match benchmark/audits/counterfactual.py (a test checks the full-sample values agree).

@dataclass
class PerCase:
    cases: list[str]
    flip: np.ndarray  # cases: 1 if the decision differs between valid variants (NaN if < 2 valid)
    delta: np.ndarray  # cases: mean |outcome(variant) - outcome(reference)| (NaN without reference)
    invalid: np.ndarray  # cases: share of invalid requests
    decisions: np.ndarray | None  # cases x headline groups: per-case decision rate (binary only)
    correct: np.ndarray | None = None  # cases: share of requests answered correctly (invalid = wrong); None without a reference
    unmeasurable: list[str] = field(default_factory=list)  # "attr=value" groups without one valid answer on the shared pairs
    # Free-text runs: the generative audit's per-case values (``gen_*`` name -> cases; NaN where not measured).
    generative: dict[str, np.ndarray] = field(default_factory=dict)

    def case_values(self, metric: str) -> np.ndarray | None:
        """The per-case values whose mean is ``metric`` (NaN where a case does not measure it), or None
        for a metric that is not a mean over cases (dp_gap: a gap between group rates)."""
        if metric in self.generative:
            return self.generative[metric]
        if metric == "accuracy":
            return self.correct
        return {"cf_flip_rate": self.flip, "cf_mean_abs_delta": self.delta, "invalid_rate": self.invalid}.get(metric)

    def value(self, metric: str, idx: np.ndarray) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if metric in self.generative:
                return float(np.nanmean(self.generative[metric][idx]))
            if metric == "accuracy" and self.correct is not None:
                # Requests per case are equal (variants), so the mean of case means is the audit's accuracy.
                return float(np.nanmean(self.correct[idx]))
            if metric == "cf_flip_rate":
                return float(np.nanmean(self.flip[idx]))
            if metric == "cf_mean_abs_delta":
                return float(np.nanmean(self.delta[idx]))
            if metric == "invalid_rate":
                return float(np.nanmean(self.invalid[idx]))
            if metric == "dp_gap" and self.decisions is not None:
                return gap(self.decisions[idx])
        return float("nan")


def _reference_variant(results: dict, question: str) -> dict[str, str]:
    attrs = audits(results)["counterfactual"]["questions"].get(question, {}).get("attributes", {})
    return {a: v["reference"] for a, v in attrs.items() if "reference" in v}


def load_rows(run_dir: Path, question: str) -> list[dict]:
    return [r for r in read_requests(Path(run_dir)) if r.get("question_id") == question]


def per_case(rows: list[dict], keys: set[tuple[str, str]], reference: dict[str, str], binary: bool) -> PerCase:
    import pandas as pd

    recs = [
        {"case_id": r["case_id"], "variant": r["variant"], "valid": bool(r["scored"]["valid"]),
         "outcome": r["scored"].get("outcome"), "decision": r["scored"].get("decision"), "correct": r["scored"].get("correct")}
        for r in rows if (r["case_id"], r["variant"]) in keys
    ]
    df = pd.DataFrame.from_records(recs)
    df["outcome"] = pd.to_numeric(df["outcome"], errors="coerce")
    cases = sorted(df["case_id"].unique())
    ref = next((v for v in df["variant"].unique() if dict(p.split("=", 1) for p in v.split("|")) == reference), None)
    valid = df[df["valid"]]
    flip = valid.groupby("case_id")["decision"].agg(lambda s: float(s.astype(str).nunique() > 1) if len(s) > 1 else np.nan)
    by_variant = valid.pivot_table(index="case_id", columns="variant", values="outcome", aggfunc="mean")
    if ref is not None and ref in by_variant:
        delta = by_variant.drop(columns=[ref]).sub(by_variant[ref], axis=0).abs().mean(axis=1, skipna=True)
    else:
        delta = pd.Series(dtype=float)
    invalid = (~df["valid"]).groupby(df["case_id"]).mean()
    decisions = None
    if binary:
        dec = valid.assign(decision=valid["decision"].astype(float))
        decisions = dec.pivot_table(index="case_id", columns="variant", values="decision", aggfunc="mean", dropna=False)
        decisions = decisions.reindex(index=cases).to_numpy(dtype=float)
    scored = df[df["correct"].notna()]
    correct = None
    if len(scored):  # invalid answers count as wrong, as in the audit's accuracy
        hit = (scored["correct"].astype(bool) & scored["valid"]).astype(float)
        correct = hit.groupby(scored["case_id"]).mean().reindex(cases).to_numpy(dtype=float)
    # A group (attribute value) whose every shared request is invalid cannot be measured: the metrics
    # that compare groups would otherwise be computed from the others and read as fairer.
    has_valid: dict[str, bool] = {}
    for variant, ok in df.groupby("variant")["valid"].any().items():
        for part in str(variant).split("|"):
            has_valid[part] = has_valid.get(part, False) or bool(ok)
    return PerCase(
        unmeasurable=sorted(g for g, ok in has_valid.items() if not ok),
        cases=cases,
        flip=flip.reindex(cases).to_numpy(dtype=float),
        delta=delta.reindex(cases).to_numpy(dtype=float),
        invalid=invalid.reindex(cases).to_numpy(dtype=float),
        decisions=decisions,
        correct=correct,
    )


# ----- per-patient imaging metrics from stored requests -----
# The stored request rows are turned into per-image frames exactly as `fairbench score` does
# (kinds.image.evaluate: thresholds tuned on each run's own validation rows); the gaps are computed
# with the group audit's own functions (audits.group.gap_metrics) on the test images both runs share.

IMAGING_GAPS = ("dp_gap", "eod", "auc_gap", "ece_gap", "underdiag_gap", "worst_group_auc", "es_auc")
# Metrics that compare groups: undefined when a group has no valid answers (text: cf_flip_rate and
# cf_mean_abs_delta compare variants, i.e. groups, within a case).
GROUP_METRICS = frozenset({"cf_flip_rate", "cf_mean_abs_delta", *IMAGING_GAPS})


@dataclass
class _Endpoint:
    y: np.ndarray  # common test images: label (NaN = masked)
    p: np.ndarray  # P(positive)
    d: np.ndarray  # decision at the run's tuned threshold
    include: np.ndarray  # groups that enter the gaps (not small in this run), fixed from the full sample
    underdiag_is_fpr: bool


@dataclass
class PerPatient:
    """One run on the test images both runs share, in the same image order as the other run's."""
    cases: list[str]  # patient ids (the resampling units)
    clusters: object  # audits.group._Clusters over the common images
    codes: np.ndarray  # images: group code of the primary attribute, -1 unknown
    n_groups: int
    valid: np.ndarray  # images: the run's answer is valid
    main: _Endpoint
    underdiag: _Endpoint  # the endpoint of the headline underdiag_gap (the "No Finding" one when the card names it)
    bins: int
    unmeasurable: list[str] = field(default_factory=list)  # groups large enough overall but without enough valid answers

    def _gaps(self, ep: _Endpoint, rows: np.ndarray) -> dict[str, float]:
        from ..audits.group import gap_metrics

        keep = rows[self.valid[rows] & ~np.isnan(ep.y[rows]) & (self.codes[rows] >= 0)]
        return gap_metrics(ep.y[keep], ep.p[keep], ep.d[keep], self.codes[keep], self.n_groups, self.bins,
                           ep.underdiag_is_fpr, ep.include)

    def case_values(self, metric: str) -> None:
        """None: every imaging metric is computed over the images of the resampled patients (a gap,
        an AUC), not a mean of per-patient values, and every shared patient enters both sides."""
        return None

    def value(self, metric: str, idx: np.ndarray) -> float:
        rows = self.clusters.rows(idx)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if metric == "invalid_rate":
                return float(np.mean(~self.valid[rows])) if len(rows) else float("nan")
            if metric == "underdiag_gap":
                return float(self._gaps(self.underdiag, rows)["underdiag_gap"])
            if metric in IMAGING_GAPS:
                return float(self._gaps(self.main, rows)[metric])
        return float("nan")


def imaging_frame(run_dir: Path, card):
    """The per-image test frame of a stored imaging run (y:/p:/d:/d05: columns), by image id."""
    from ..kinds.image.evaluate import endpoint_frame, image_rows

    frame, _ = endpoint_frame(image_rows(read_requests(Path(run_dir)), card), card)
    test = frame[frame["split"] == "test"]
    return test.drop_duplicates("id").set_index("id")


def per_patient(base_frame, cand_frame, card, endpoint: str, attribute: str) -> tuple[PerPatient, PerPatient, int]:
    """Both runs restricted to their common test images, aligned; returns (base, candidate, n images)."""
    from ..audits.group import GroupAudit, _Clusters

    ids = sorted(set(base_frame.index) & set(cand_frame.index))
    b, c = base_frame.loc[ids].reset_index(), cand_frame.loc[ids].reset_index()
    labels = GroupAudit.group_column(c, attribute)
    names = sorted({str(v) for v in labels.dropna()})
    codes = np.array([names.index(str(v)) if v is not None and not (isinstance(v, float) and math.isnan(v)) else -1
                      for v in labels], dtype=int)
    clusters = _Clusters(c["patient_id"].astype(str).to_numpy())
    nf = card.audit.no_finding_label
    ud_endpoint = nf if nf and nf != endpoint and f"y:{nf}" in c else endpoint
    min_n = card.audit.min_group_size

    def one(df) -> PerPatient:
        valid = df["valid"].to_numpy(dtype=bool)

        def ep(e: str) -> _Endpoint:
            y = df[f"y:{e}"].to_numpy(dtype=float)
            ok = valid & ~np.isnan(y) & (codes >= 0)
            counts = np.bincount(codes[ok], minlength=len(names)) if len(names) else np.zeros(0, int)
            return _Endpoint(y, df[f"p:{e}"].to_numpy(dtype=float), df[f"d:{e}"].to_numpy(dtype=float),
                             counts >= min_n, e == nf)

        patients = sorted(set(df["patient_id"].astype(str)))
        main = ep(endpoint)
        # Groups that would enter the gaps on their labelled images but drop out for lack of valid answers.
        y = df[f"y:{endpoint}"].to_numpy(dtype=float)
        labelled = ~np.isnan(y) & (codes >= 0)
        sized = np.bincount(codes[labelled], minlength=len(names)) >= min_n if len(names) else np.zeros(0, bool)
        lost = [f"{attribute}={names[i]}" for i in np.nonzero(sized & ~main.include)[0]]
        return PerPatient(patients, clusters, codes, len(names), valid, main, ep(ud_endpoint), card.audit.ece_bins, lost)

    return one(b), one(c), len(ids)


# ----- comparisons -----

@dataclass
class Comparison:
    metric: str
    tolerance: float
    baseline: tuple  # (value, ci_low, ci_high)
    candidate: tuple
    diff: float | None = None
    diff_ci: tuple = (None, None)
    p_value: float | None = None
    p_adjusted: float | None = None
    regressed: bool = False
    note: str = ""
    significant: bool = False  # two-sided comparisons: the Holm-adjusted p < alpha
    testable: bool = True  # False when even the smallest p the paired cases allow is not below alpha


@dataclass
class CheckResult:
    method: str  # "paired" | "ci"
    detail: str
    comparisons: list[Comparison]

    @property
    def regressions(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.regressed]

    @property
    def untestable(self) -> list[Comparison]:
        """Comparisons the gate could not have failed (too few paired cases): a pass says nothing."""
        return [c for c in self.comparisons if not c.testable]


def _rng(seed: int, metric: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}|check|{metric}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def paired(base: PerCase, cand: PerCase, tolerances: dict[str, float], seed: int, n_boot: int = 2000,
           two_sided: bool = False) -> list[Comparison]:
    """Paired bootstrap of candidate − baseline per metric over the shared cases (patients), with a
    95% percentile CI. One-sided (the gate): p of H0 "increase <= tolerance". ``two_sided`` (the
    leaderboard's Δ vs a reference): p of H0 "no difference" = 2 x the smaller tail share at 0
    (capped at 1). Either p is floored at the smallest p an exact paired (sign-flip) test on n cases can
    give (1 / 2^n one-sided, 2 / 2^n two-sided); where that floor is not below alpha the comparison is
    marked ``testable=False`` with a note. The p-values of the tested metrics are Holm-corrected together
    (statsmodels ``multipletests``)."""
    n = len(cand.cases)
    everyone = np.arange(n)
    out = []
    for metric, tol in tolerances.items():
        b, c = base.value(metric, everyone), cand.value(metric, everyone)
        comp = Comparison(metric, tol, (r6(b), None, None), (r6(c), None, None))
        lost_b, lost_c = (getattr(x, "unmeasurable", []) if metric in GROUP_METRICS else [] for x in (base, cand))
        if lost_b or lost_c:
            # Computed from the remaining groups it would look fairer: undefined. For the gate, a group
            # that the baseline measured and the candidate no longer can is a regression.
            which = "; ".join(f"{name}: {', '.join(lost)}" for name, lost in (("baseline", lost_b), ("candidate", lost_c)) if lost)
            comp.baseline, comp.candidate = ((None, None, None) if lost else x for lost, x in ((lost_b, comp.baseline), (lost_c, comp.candidate)))
            comp.note = f"undefined: group(s) without valid answers ({which})"
            comp.regressed = bool(lost_c) and not lost_b and not two_sided
            out.append(comp)
            continue
        if math.isnan(b) or math.isnan(c):
            comp.note = "not defined for this task"
            out.append(comp)
            continue
        # Paired means the same cases on both sides: a case that one run does not measure (e.g. no
        # embedded rationale, fewer than two valid variants) is left out of both, and the note says so.
        pair = everyone
        bv, cv = base.case_values(metric), cand.case_values(metric)
        if bv is not None and cv is not None:
            pair = np.flatnonzero(np.isfinite(bv) & np.isfinite(cv))
            if len(pair) < n:
                comp.note = f"paired on the {len(pair)} of {n} shared cases that both runs measure"
        m = len(pair)
        comp.diff = r6(cand.value(metric, pair) - base.value(metric, pair)) if m else None
        if m < 2:  # e.g. two seeded subsets that share one case: nothing to resample
            comp.note = "; ".join(filter(None, [comp.note, f"{m} shared case(s): too few for a paired test"]))
            out.append(comp)
            continue

        def diff(idx, metric=metric):
            idx = idx.astype(int)
            return cand.value(metric, idx) - base.value(metric, idx)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sps.bootstrap((pair,), diff, n_resamples=n_boot, vectorized=False, method="percentile",
                                confidence_level=0.95, random_state=_rng(seed, metric))
        dist = np.asarray(res.bootstrap_distribution, dtype=float)
        comp.diff_ci = (r6(res.confidence_interval.low), r6(res.confidence_interval.high))
        # One-sided bootstrap p-value of H0 "increase <= tolerance"; a NaN resample counts for H0.
        at_or_below = np.sum(np.isnan(dist) | (dist <= tol + 1e-12))
        comp.p_value = float((1 + at_or_below) / (len(dist) + 1))
        # A bootstrap over few cases has few distinct resamples, and its p can fall far below what n
        # paired cases can show: floor it at the exact sign-flip test's smallest p (one-sided 1 / 2^n,
        # two-sided 2 / 2^n). When that floor is not below alpha, no data on these cases can reject.
        floor = min(1.0, 2.0 ** ((1 if two_sided else 0) - m))
        comp.p_value = max(comp.p_value, floor)
        if floor >= ALPHA:
            comp.testable = False
            comp.note = "; ".join(filter(None, [comp.note, (
                f"{m} shared cases: the smallest p a paired test on {m} cases can give is {floor:.3g}, not below "
                f"alpha {ALPHA}, so no difference could be detected; compare runs with more cases")]))
        if no_variation(dist) and abs(comp.diff) <= 1e-12:
            # The runs agree on every resample (e.g. the same answers): there is no difference to test,
            # and a placeholder p of 1 would only dilute the family. (A constant non-zero difference is
            # tested: every case moving the same way is evidence, p floored as above.)
            comp.p_value, comp.diff_ci = None, (None, None)
            comp.note = "; ".join(filter(None, [comp.note, f"no variation: no difference on any resample of the {m} shared cases"]))
            out.append(comp)
            continue
        if no_variation(dist):  # tested, but a zero-width interval would claim certainty: none
            comp.diff_ci = (None, None)
            comp.note = "; ".join(filter(None, [comp.note, f"no variation: the difference is {comp.diff:+.4g} on every resample"]))
        if two_sided:  # H0 "no difference": both tails at 0, NaN resamples counted for H0 in each
            at_or_above = np.sum(np.isnan(dist) | (dist >= -1e-12))
            comp.p_value = max(floor, min(1.0, 2 * float((1 + min(at_or_below, at_or_above)) / (len(dist) + 1))))
        out.append(comp)
    tested = [c for c in out if c.p_value is not None]
    if tested:
        reject, adjusted, _, _ = multipletests([c.p_value for c in tested], alpha=ALPHA, method="holm")
        for c, rej, adj in zip(tested, reject, adjusted):
            c.p_adjusted = r6(adj)
            c.significant = bool(rej)
            c.regressed = bool(rej) and c.diff > c.tolerance and not two_sided
            c.p_value = r6(c.p_value)
    return out


# ----- paired differences against a reference row (fairbench leaderboard --reference) -----

def generative_per_case(results: dict, question: str):
    """The generative audit's per-case values of ``question`` (``audits.generative.questions[q].per_case``)
    as ``gen_<name>`` -> pandas Series indexed by case id, for :data:`GENERATIVE_DELTA_METRICS`; None for a
    choice run or a free-text run scored before the per-case values were stored."""
    import pandas as pd

    gen = audits(results).get("generative") or {}
    records = ((gen.get("questions") or {}).get(question) or {}).get("per_case") if gen.get("applicable") else None
    if not records:
        return None
    df = pd.DataFrame.from_records(records).set_index("case_id").astype(float)
    return {m: df[m.removeprefix("gen_")] for m in GENERATIVE_DELTA_METRICS if m.removeprefix("gen_") in df}


def versus_reference(reference_dir: Path, run_dir: Path, seed: int = 0, n_boot: int = 2000) -> CheckResult:
    """Two-sided paired differences run − reference of the text headline metrics (``DELTA_METRICS``:
    accuracy where the question has reference answers, cf_flip_rate, cf_mean_abs_delta, dp_gap on
    binary questions; where both are free-text runs also the generative audit's per-case invalid,
    refusal and demographic-mention rates, explanation drift and drift excess over the noise floor, on
    the cases both runs share) on the (case, variant) pairs both runs share: the gate's paired bootstrap
    (:func:`paired`, cases resampled, ``n_boot`` resamples, seeded), Holm-corrected over the metrics
    tested for this run. A metric undefined for the task is noted and left out of the family."""
    ref_results, results = read_results(Path(reference_dir)), read_results(Path(run_dir))
    if kind_of(results) != "text" or kind_of(ref_results) != "text":
        raise FairbenchError(f"{run_dir}: paired differences against a reference are for text runs; imaging boards compare "
                             "seeds (`fairbench run --seeds N`, then `fairbench leaderboard SEEDS_DIR... --reference MODEL`).")
    question = results["metrics"]["question"]
    if ref_results["metrics"]["question"] != question:
        raise FairbenchError(f"{reference_dir}: primary question differs from {run_dir}'s ({question}); compare runs of the same task.")
    ref_rows, rows = load_rows(reference_dir, question), load_rows(run_dir, question)
    keys = {(r["case_id"], r["variant"]) for r in ref_rows} & {(r["case_id"], r["variant"]) for r in rows}
    n_cases = len({k[0] for k in keys})
    if n_cases < 2:
        return CheckResult("none", f"only {n_cases} case(s) in common with the reference run", [])
    qkind = audits(results)["counterfactual"]["questions"].get(question, {}).get("kind")
    reference = _reference_variant(results, question)
    base_pc = per_case(ref_rows, keys, reference, qkind == "binary")
    cand_pc = per_case(rows, keys, reference, qkind == "binary")
    base_gen, cand_gen = generative_per_case(ref_results, question), generative_per_case(results, question)
    if base_gen is not None and cand_gen is not None:
        base_pc.generative = {m: v.reindex(base_pc.cases).to_numpy(float) for m, v in base_gen.items()}
        cand_pc.generative = {m: v.reindex(cand_pc.cases).to_numpy(float) for m, v in cand_gen.items()}
    comps = paired(base_pc, cand_pc, {m: 0.0 for m in DELTA_METRICS}, seed, n_boot, two_sided=True)
    for c in comps:
        if c.metric == "accuracy" and c.diff is None:
            c.note = "no reference answer"
        if c.metric in GENERATIVE_DELTA_METRICS and c.diff is None and (base_gen is None or cand_gen is None):
            c.note = ("not a free-text run" if base_gen is None and cand_gen is None else
                      "one run has no per-case generative values: re-score it with `fairbench score RUN_DIR`")
    detail = (f"paired bootstrap over {n_cases} common cases ({len(keys)} case×variant pairs), {n_boot} resamples, seed {seed}, "
              f"two-sided, Holm-corrected over {sum(c.p_value is not None for c in comps)} metrics, alpha {ALPHA}")
    return CheckResult("paired", detail, comps)


def reference_deltas(rows: list[dict], notes: list[str], reference: str, run_dirs: list[Path], n_boot: int = 2000) -> None:
    """Fill the Δ-vs-reference columns of every text row (except the reference's own) in place: for each
    (task, prompt mode, evaluation split) block, :func:`versus_reference` against the row of model
    ``reference`` in the same block. Run directories are the given ``run_dirs`` or, for rows already
    on the board, ``<parent of a given run dir>/<run id>``. A row whose run directory is not found keeps
    its stored Δ only if it was computed against the reference run now on the board; otherwise its Δ
    is cleared and a note says so."""
    dirs = {Path(d).name: Path(d) for d in run_dirs}
    parents = {Path(d).parent for d in run_dirs}

    def find(run_id):
        if run_id in dirs:
            return dirs[run_id]
        hit = next((p / run_id for p in parents if (p / run_id / "requests.jsonl").is_file()), None)
        return hit

    blocks: dict[tuple, list[dict]] = {}
    for r in rows:
        if (r.get("kind") or "text") == "text":
            blocks.setdefault((r["task"], r["prompt_mode"], r.get("eval_split")), []).append(r)
    found_any = False
    for key, block in blocks.items():
        ref = next((r for r in block if r["model"] == reference), None)
        if ref is None:
            continue
        found_any = True
        ref_dir = find(ref.get("run_id"))
        for r in block:
            if r is ref:
                clear_deltas(r)
                continue
            run_dir = find(r.get("run_id"))
            if ref_dir is None or run_dir is None:
                if r.get("delta_reference_run_id") != ref.get("run_id"):
                    if r.get("delta_reference_run_id"):
                        notes.append(f"{r['model']} · {key[0]} · {key[1]}: Δ vs {reference} cleared (the reference row changed and "
                                     "a run directory is missing); pass both run directories with --reference")
                    clear_deltas(r)
                continue
            result = versus_reference(ref_dir, run_dir, int(r.get("seed") or 0), n_boot)
            clear_deltas(r)
            r.update({"delta_reference": reference, "delta_reference_run_id": ref.get("run_id"), "delta_method": result.detail})
            if result.untestable:
                notes.append(f"{r['model']} · {key[0]} · {key[1]}: Δ vs {reference} not testable: {result.untestable[0].note}")
            for c in result.comparisons:
                if c.diff is None:
                    continue
                r.update({f"{c.metric}_delta": c.diff, f"{c.metric}_delta_ci_low": c.diff_ci[0], f"{c.metric}_delta_ci_high": c.diff_ci[1],
                          f"{c.metric}_delta_p_adjusted": c.p_adjusted, f"{c.metric}_delta_significant": c.significant})
    if not found_any:
        models = sorted({r["model"] for b in blocks.values() for r in b})
        raise FairbenchError(f"--reference {reference!r} is not a text row of the board; its models are {', '.join(models) or 'none'}.")


def clear_deltas(row: dict) -> None:
    for c in DELTA_COLUMNS:
        row[c] = None


def by_ci(base_row: dict, cand_metrics: dict, tolerances: dict[str, float]) -> list[Comparison]:
    out = []
    for metric, tol in tolerances.items():
        b = tuple(base_row.get(f"{metric}{s}") for s in ("", "_ci_low", "_ci_high"))
        est = cand_metrics.get("invalid_rate_ci" if metric == "invalid_rate" else metric)
        if metric == "invalid_rate" and not est:
            est = cand_metrics.get("invalid_rate")
            est = est if isinstance(est, dict) else {"value": est}
        est = est or {}
        c = (est.get("value"), est.get("ci_low"), est.get("ci_high"))
        comp = Comparison(metric, tol, b, c)
        if b[0] is None or c[0] is None:
            comp.note = "not defined for this task"
        else:
            comp.diff = r6(c[0] - b[0])
            if None not in (b[2], c[1]):
                comp.regressed = c[1] > b[2] + tol + 1e-12
                comp.note = "candidate CI entirely above baseline CI + tolerance" if comp.regressed else ""
            else:
                comp.regressed = c[0] > b[0] + tol + 1e-12
                comp.note = "no CI: point estimates compared"
        out.append(comp)
    return out


def find_baseline_run(row: dict, baseline_run: Path | None, runs_dir: Path | None) -> tuple[Path | None, str]:
    """The baseline's run directory when its per-request data is available and matches the row."""
    if baseline_run is not None:
        path = Path(baseline_run)
        if not (path / "requests.jsonl").is_file():
            raise FairbenchError(f"--baseline-run {path}: no requests.jsonl there; give a run directory written by `fairbench run`.")
    elif runs_dir is not None and row.get("run_id"):
        path = Path(runs_dir) / row["run_id"]
        if not (path / "requests.jsonl").is_file():
            return None, f"baseline per-request data not found under {runs_dir}"
    else:
        return None, "no baseline run directory given"
    run = read_results(path)["run"]
    for field in ("task", "prompt_mode", "model_fingerprint"):
        if row.get(field) and run.get(field) != row.get(field):
            return None, f"baseline run directory {path.name} does not match the leaderboard row ({field} differs)"
    return path, ""


def check(baseline_csv: Path, candidate: Path, max_increase: list[str] | None = None, baseline_model: str | None = None,
          baseline_run: Path | None = None, runs_dir: Path | None = Path("runs"), n_boot: int = 2000,
          tasks_dir: Path | None = None) -> tuple[CheckResult, dict, dict]:
    cand_results = read_results(Path(candidate))
    kind = kind_of(cand_results)
    tolerances = parse_tolerances(max_increase, kind)
    run = cand_results["run"]
    row = baseline_row(baseline_csv, run, baseline_model)
    if row.get("kind") and row["kind"] != kind:
        raise FairbenchError(f"{baseline_csv}: the baseline row of {row['model']} is a {row['kind']} run, the candidate a {kind} run.")
    base_dir, why = find_baseline_run(row, baseline_run, runs_dir)
    if kind == "imaging":
        return _check_imaging(cand_results, Path(candidate), row, base_dir, why, tolerances, n_boot, tasks_dir)
    question = cand_results["metrics"]["question"]
    cand_path = Path(candidate) / "requests.jsonl"
    if base_dir is not None and cand_path.is_file():
        base_results = read_results(base_dir)
        if base_results["metrics"]["question"] != question:
            raise FairbenchError(f"{base_dir}: primary question differs from the candidate's ({question}); compare runs of the same task.")
        base_rows, cand_rows = load_rows(base_dir, question), load_rows(candidate, question)
        keys = {(r["case_id"], r["variant"]) for r in base_rows} & {(r["case_id"], r["variant"]) for r in cand_rows}
        n_cases = len({k[0] for k in keys})
        if n_cases >= 2:
            qkind = audits(cand_results)["counterfactual"]["questions"].get(question, {}).get("kind")
            reference = _reference_variant(cand_results, question)
            base_pc = per_case(base_rows, keys, reference, qkind == "binary")
            cand_pc = per_case(cand_rows, keys, reference, qkind == "binary")
            comps = paired(base_pc, cand_pc, tolerances, int(run.get("seed") or 0), n_boot)
            detail = (f"paired bootstrap over {n_cases} common cases ({len(keys)} case×variant pairs), {n_boot} resamples, "
                      f"seed {run.get('seed')}, one-sided, Holm-corrected over {sum(c.p_value is not None for c in comps)} metrics, alpha {ALPHA}")
            return CheckResult("paired", detail, comps), row, run
        why = f"only {n_cases} case(s) in common with the baseline run"
    elif base_dir is not None:
        why = f"{cand_path} not found"
    comps = by_ci(row, cand_results["metrics"], tolerances)
    return CheckResult("ci", f"95% CIs compared ({why})", comps), row, run


def _check_imaging(cand_results: dict, candidate: Path, row: dict, base_dir: Path | None, why: str,
                   tolerances: dict[str, float], n_boot: int, tasks_dir: Path | None) -> tuple[CheckResult, dict, dict]:
    run, m = cand_results["run"], cand_results["metrics"]
    cand_path = candidate / "requests.jsonl"
    if base_dir is not None and cand_path.is_file():
        from ..cards import load_task

        base_results = read_results(base_dir)
        endpoint = m.get("question")
        if base_results["metrics"].get("question") != endpoint:
            raise FairbenchError(f"{base_dir}: primary endpoint differs from the candidate's ({endpoint}); compare runs of the same task.")
        try:
            card = load_task(run["task"], tasks_dir)
        except FairbenchError as exc:
            card, why = None, f"task card not found for the paired test: {exc}"
        if card is not None:
            attribute = m.get("attribute") or card.audit.primary_attribute
            base_pp, cand_pp, n_images = per_patient(imaging_frame(base_dir, card), imaging_frame(candidate, card), card, endpoint, attribute)
            n_patients = len(cand_pp.cases)
            if n_patients >= 2:
                comps = paired(base_pp, cand_pp, tolerances, int(run.get("seed") or 0), n_boot)
                detail = (f"paired bootstrap over {n_patients} common test patients ({n_images} images), endpoint {endpoint} by "
                          f"{attribute}, {n_boot} resamples of patients, seed {run.get('seed')}, one-sided, Holm-corrected over "
                          f"{sum(c.p_value is not None for c in comps)} metrics, alpha {ALPHA}")
                return CheckResult("paired", detail, comps), row, run
            why = f"only {n_patients} test patient(s) in common with the baseline run"
    elif base_dir is not None:
        why = f"{cand_path} not found"
    comps = by_ci(row, m, tolerances)
    return CheckResult("ci", f"95% CIs compared ({why})", comps), row, run


def render(result: CheckResult, row: dict, run: dict, console) -> None:
    from rich.markup import escape

    from .terminal import Col, estimate, show_table

    def est(t: tuple) -> str:
        if t[0] is None:
            return "-"
        return f"{t[0]:.4g}" + (f" [{t[1]:.4g}, {t[2]:.4g}]" if t[1] is not None and t[2] is not None else "")

    cols = [Col("metric"), Col("baseline", "right", "base"), Col("candidate", "right", "cand"),
            Col("increase [95% CI]", "right", "Δ [95% CI]"), Col("tol.", "right"), Col("p adj.", "right", "p"), Col("status", keep=True)]

    def table(comps: list[Comparison], title: str) -> None:
        rows = []
        for c in comps:
            inc = "-" if c.diff is None else f"{c.diff:+.4g}" + (f" [{c.diff_ci[0]:+.4g}, {c.diff_ci[1]:+.4g}]" if c.diff_ci[0] is not None else "")
            p = "-" if c.p_adjusted is None else f"{c.p_adjusted:.3g}"
            status = ("[bold red]REGRESSED[/]" if c.regressed else "n/a" if c.diff is None
                      else "[yellow]untestable[/]" if not c.testable else "ok")
            rows.append((c.metric, estimate(est(c.baseline)), estimate(est(c.candidate)), estimate(inc), f"{c.tolerance:g}", p, status))
        show_table(console, title, cols, rows)

    table(result.comparisons, escape(f"fairbench check: {run['model']} vs baseline {row['model']} on {run['task']} · {run['prompt_mode']}"))
    console.print(f"method: {result.detail}")
    for c in result.comparisons:
        if c.note:
            console.print(f"  {c.metric}: {c.note}")
    if result.regressions:
        table(result.regressions, "Fairness regressions")
        console.print(f"[bold red]FAIL[/]: {len(result.regressions)} fairness metric(s) regressed beyond tolerance.")
    elif result.untestable:
        # Not a pass: the gate could not have failed (exit 0 still, so a small smoke run does not break CI).
        console.print(f"[bold yellow]INCONCLUSIVE[/]: {len(result.untestable)} metric(s) could not be tested on so few "
                      "paired cases; no regression was detected, and none could have been.")
    else:
        console.print("[bold green]PASS[/]: no fairness metric regressed beyond its tolerance.")
