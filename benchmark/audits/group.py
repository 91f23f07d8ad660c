"""Group audit for imaging (and any per-instance classifier output): performance and fairness
by sex, age group, race and their intersections, with patient-level bootstrap CIs.

Input: one row per test image with ``patient_id``, the attribute columns, ``valid`` and for each
endpoint ``e``: ``y:e`` (0/1, NaN = masked), ``p:e`` (P(positive)), ``d:e`` (decision at the
threshold frozen from validation) and ``d05:e`` (decision at 0.5).

Metric definitions (gaps are max - min over groups with at least ``min_group_size`` images and,
for AUC, both classes):
- ``dp_gap``: positive-prediction rate gap (FairMed-VLM Eq. 1); ``eod``: equalized-odds
  difference, max of the TPR gap and the FPR gap (fairlearn's definition);
- ``auc_gap``, ``worst_group_auc``; ``es_auc`` = AUC / (1 + sum_g |AUC - AUC_g|) (equity-scaled AUC);
- ``ece_gap``: gap of expected calibration error (equal-width bins);
- ``underdiag_gap``: gap of the underdiagnosis rate -- FPR of the "No Finding" endpoint
  (predicted healthy, actually ill) or, for a disease endpoint, its FNR.
CIs: 95% bootstrap resampling **patients** (all images of a patient move together) for AUC, ECE,
``worst_group_auc``, ``es_auc`` and the gaps; clustered Wilson for proportions. No interval, with the
reason in ``note``, when every resample of patients gives the same value.
Tests: chi-square of decision x group and a permutation test per gap, per attribute, Holm-corrected
across all applicable tests of the run.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame

from . import stats

GAPS = ("dp_gap", "eod", "auc_gap", "worst_group_auc", "es_auc", "ece_gap", "underdiag_gap")
HIGHER_IS_BETTER = {"accuracy": True, "auc": True, "worst_group_auc": True, "es_auc": True}
# The max - min gaps: each gets a patient-level permutation null and a test in the run's family.
PERMUTED = ("dp_gap", "eod", "auc_gap", "ece_gap", "underdiag_gap", "dp_gap_at_0.5", "eod_at_0.5")
# Per-group values each gap needs: a gap over a group where one of them is undefined is undefined.
NEEDS = {"dp_gap": ("pos_rate",), "eod": ("tpr", "fpr"), "auc_gap": ("auc",), "ece_gap": ("ece",),
         "underdiag_gap": ("underdiag",), "dp_gap_at_0.5": ("pos_rate_at_0.5",), "eod_at_0.5": ("tpr_at_0.5", "fpr_at_0.5")}
GAP_CI_METHOD = "patient bootstrap (BCa); lower end 0 unless the patient-level permutation test rejects"


# Hand-written because the bootstrap calls them ~10^4 times per run, where sklearn's input
# validation dominates; tests cross-check them against sklearn and fairlearn.
def fast_auc(y: np.ndarray, p: np.ndarray) -> float:
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    # Sort once; within tied scores a positive counts half of each tied negative (Mann-Whitney).
    order = np.argsort(p, kind="mergesort")
    ps, ys = p[order], y[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(ps)) + 1])
    pos = np.add.reduceat(ys, starts)
    neg = np.diff(np.append(starts, len(ps))) - pos
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (n1 * n0))


def ece(y: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of P(positive): sum_b n_b/n |mean(y)_b - mean(p)_b|."""
    if len(y) == 0:
        return float("nan")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    sy = np.bincount(idx, weights=y, minlength=bins)
    sp = np.bincount(idx, weights=p, minlength=bins)
    return float(np.abs(sy - sp).sum() / len(y))


def _rate(d: np.ndarray, mask: np.ndarray) -> float:
    return float(d[mask].mean()) if mask.any() else float("nan")


def group_values(y, p, d, codes, n_groups, bins, underdiag_is_fpr) -> dict[str, np.ndarray]:
    """Per-group n, AUC, positive rate, TPR, FPR, ECE, underdiagnosis rate (arrays over groups)."""
    out = {k: np.full(n_groups, np.nan) for k in ("n", "auc", "pos_rate", "tpr", "fpr", "ece", "underdiag", "accuracy")}
    for g in range(n_groups):
        m = codes == g
        out["n"][g] = m.sum()
        if not m.any():
            continue
        yg, pg, dg = y[m], p[m], d[m]
        pos, neg = yg == 1, yg == 0
        out["auc"][g] = fast_auc(yg, pg)
        out["pos_rate"][g] = dg.mean()
        out["accuracy"][g] = (dg == yg).mean()
        out["tpr"][g] = _rate(dg, pos)
        out["fpr"][g] = _rate(dg, neg)
        out["ece"][g] = ece(yg, pg, bins)
        out["underdiag"][g] = out["fpr"][g] if underdiag_is_fpr else 1 - out["tpr"][g]
    return out


def _spread(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.max() - x.min()) if len(x) >= 2 else float("nan")


def gap_metrics(y, p, d, codes, n_groups, bins, underdiag_is_fpr, include=None) -> dict[str, float]:
    """``include``: the groups that enter the gaps, fixed from the observed data (not re-decided
    in each bootstrap resample, which would change the estimand); default all."""
    v = group_values(y, p, d, codes, n_groups, bins, underdiag_is_fpr)
    big = np.ones(n_groups, bool) if include is None else np.asarray(include, bool)
    auc_ok = big & ~np.isnan(v["auc"])
    overall_auc = fast_auc(y, p)
    aucs = v["auc"][auc_ok]
    return {
        "dp_gap": _spread(np.where(big, v["pos_rate"], np.nan)),
        "eod": max(_spread(np.where(big, v["tpr"], np.nan)), _spread(np.where(big, v["fpr"], np.nan))),
        "auc_gap": _spread(aucs),
        "worst_group_auc": float(aucs.min()) if len(aucs) else float("nan"),
        "es_auc": float(overall_auc / (1 + np.abs(overall_auc - aucs).sum())) if len(aucs) else float("nan"),
        "ece_gap": _spread(np.where(big, v["ece"], np.nan)),
        "underdiag_gap": _spread(np.where(big, v["underdiag"], np.nan)),
    }


def _wilson(x: np.ndarray, patients: np.ndarray) -> dict:
    """A proportion over images with a Wilson interval clustered by patient (stats.proportion_ci on the
    per-patient shares, as the text audit does per case). ``patients``: any labels, one per image."""
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return stats.estimate(float("nan"), None, None, 0, ci_method="wilson", n_eff=None,
                              note="undefined: no images")
    _, pid = np.unique(np.asarray(patients), return_inverse=True)
    sizes = np.bincount(pid).astype(float)
    shares = np.bincount(pid, weights=x) / sizes
    point, lo, hi, n_eff = stats.proportion_ci(shares, sizes)
    return stats.estimate(point, lo, hi, len(sizes), ci_method="wilson", n_eff=stats.num(n_eff))


def _group_intervals(y, d, d05, patients, mask) -> dict:
    """Wilson intervals (clustered by patient) of a group's proportions."""
    out = {}
    for suffix, dec in (("", d), ("_at_0.5", d05)):
        out[f"accuracy{suffix}"] = _wilson((dec == y)[mask], patients[mask])
        out[f"pos_rate{suffix}"] = _wilson(dec[mask], patients[mask])
        out[f"tpr{suffix}"] = _wilson(dec[mask & (y == 1)], patients[mask & (y == 1)])
        out[f"fpr{suffix}"] = _wilson(dec[mask & (y == 0)], patients[mask & (y == 0)])
    return out


def _no_interval_note(point: float, low: float | None, seen: list[float]) -> str:
    """Why a patient bootstrap gave no interval (``""`` when it gave one or the value is undefined).
    ``seen``: the statistic on every resample. A statistic that every resample repeats (e.g. an AUC of
    1.0 on perfectly separated classes) has no interval: [1.0, 1.0] would claim a certainty that the
    patients do not hold. Otherwise the metric was undefined in some resamples (e.g. a group drawn
    without positives), which leaves the bootstrap without a finite interval."""
    if low is not None or not np.isfinite(point):
        return ""
    seen = np.asarray(seen, dtype=float)
    if stats.no_variation(np.append(seen, point)):
        where = " where it is defined" if not np.isfinite(seen).all() else ""
        return f"no variation: every resample of patients{where} gives {point:.4g}, so no interval"
    return "no interval: the metric is undefined in some resamples of patients"


class _Clusters:
    """Maps resampled patient indices to their rows (vectorised)."""

    def __init__(self, patients: np.ndarray):
        order = np.argsort(patients, kind="stable")
        uniq, starts, counts = np.unique(patients[order], return_index=True, return_counts=True)
        self.order, self.starts, self.counts, self.n = order, starts, counts, len(uniq)
        self.single = bool((counts == 1).all())
        self.ids = np.unique(patients, return_inverse=True)[1].reshape(-1)  # patient index of each row

    def rows(self, pidx: np.ndarray) -> np.ndarray:
        pidx = np.asarray(pidx).astype(int)  # bootstrap_ci hands over floats
        if self.single:
            return self.order[pidx]
        lens = self.counts[pidx]
        offs = np.repeat(self.starts[pidx] - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
        return self.order[offs + np.arange(lens.sum())]


class GroupAudit:
    """The ``group`` audit plugin: needs per-instance endpoint rows (``AuditData.instances``)."""

    name = "group"
    needs = ("instances",)

    def __init__(self, card, seed: int = 0):
        self.card, self.cfg, self.seed = card, card.audit, seed
        # Imaging cards declare these; a text card's group audit gets them from its kind (AuditData).
        self.attributes: list[str] = list(getattr(self.cfg, "attributes", []))
        self.ece_bins: int = getattr(self.cfg, "ece_bins", 15)
        self.no_finding_label: str | None = getattr(self.cfg, "no_finding_label", None)
        self.decision_rule = f"{getattr(self.cfg, 'threshold', 'max_f1')} on validation (argmax for multiclass), frozen for test; *_at_0.5 use 0.5"
        self.tests: list[stats.TestResult] = []
        self._gap_tests: list[tuple[dict, stats.TestResult, float | None]] = []
        self.warnings: list[str] = []

    def _rng(self, *parts: str) -> np.random.Generator:
        digest = hashlib.sha256("|".join((str(self.seed), *parts)).encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def _ci_many(self, clusters: _Clusters, fn_all, names, *key: str) -> dict[str, dict]:
        """CIs of several metrics computed together from the same resamples: every metric's
        bootstrap uses the same seed, so the per-resample dict is computed once and looked up."""
        memo: dict[bytes, dict] = {}

        def stat(name, seen):
            def f(pidx):
                k = np.asarray(pidx).astype(np.int64).tobytes()
                if k not in memo:
                    memo[k] = fn_all(clusters.rows(pidx))
                seen.append(memo[k][name])
                return memo[k][name]
            return f

        out = {}
        for name in names:
            seen: list[float] = []  # the statistic on every resample (and the jackknife): why there is no interval
            point, lo, hi = stats.bootstrap_ci(np.arange(clusters.n), stat(name, seen), self._rng(*key), self.cfg.n_boot)
            note = _no_interval_note(point, lo, seen) if clusters.n >= 2 else "fewer than 2 patients: no interval"
            out[name] = stats.estimate(point, lo, hi, clusters.n, **({"note": note} if note else {}))
        return out

    def _permutation_gaps(self, res: dict, table: dict, names: list[str], kc: _Clusters, codes: np.ndarray,
                          all_gaps, e: str, attr: str) -> list[stats.TestResult]:
        """Permutation null of each max - min gap, in place in ``res``; returns the tests (one per gap).

        Imaging has no within-case pairing, so the group labels are shuffled across *patients*: each
        patient's label (its images' most frequent label when they differ) is permuted among the
        patients and given to all of the patient's images, which keeps the within-patient correlation
        under the null. p = (1 + #{null >= observed}) / (1 + B), B = ``audit.n_boot``. A gap is
        undefined (not applicable) when an included group lacks a value it needs (e.g. a TPR without
        positive images), and not applicable when no shuffle can change it (no variation)."""
        n_p, n_groups = kc.n, len(names)
        counts = np.zeros((n_p, n_groups))
        np.add.at(counts, (kc.ids, codes), 1)
        plabel = counts.argmax(axis=1)
        mixed = int(((counts > 0).sum(axis=1) > 1).sum())
        B = int(self.cfg.n_boot)
        null = np.full((B, len(PERMUTED)), np.nan)
        rows = np.arange(len(codes))
        rng = self._rng(e, attr, "permutation")
        if n_p >= 2:
            for b in range(B):
                g = all_gaps(rows, plabel[rng.permutation(n_p)][kc.ids])
                null[b] = [g[name] for name in PERMUTED]
        included = [g for g in names if not table[g]["small"]]
        tests = []
        for j, name in enumerate(PERMUTED):
            target = f"{e}/{attr}/{name}"
            est = res[name]
            missing = sorted({g for g in included for k in NEEDS[name] if table[g].get(k) is None})
            reason = ""
            if missing:
                reason = (f"undefined: group(s) {', '.join(missing)} have no value for "
                          f"{'/'.join(NEEDS[name])} (no positive or no negative images)")
            elif est["value"] is None:
                reason = est.get("note") or "undefined: fewer than 2 groups with data"
            elif n_p < 2:
                reason = "fewer than 2 patients"
            nul = null[:, j][np.isfinite(null[:, j])]
            if not reason and (len(nul) == 0 or stats.no_variation(np.append(nul, est["value"]))):
                reason = "no variation: every shuffle of the group labels gives the same gap"
            if reason:
                value = None if (missing or est["value"] is None) else est["value"]
                est.update(value=value, ci_low=None, ci_high=None, p_value=None, p_adjusted=None, null_mean=None,
                           null_q95=None, ci_method=GAP_CI_METHOD, note=reason)
                tests.append(stats.not_applicable("permutation_gap", target, False, n_p, reason))
                continue
            obs = float(est["value"])
            tol = stats.TOLERANCE * max(1.0, abs(obs))
            p = (1 + int(np.sum(nul >= obs - tol))) / (1 + len(nul))
            note = f"{mixed} patient(s) with images in several groups shuffled under their most frequent group" if mixed else ""
            test = stats.TestResult("permutation_gap", target, obs, p, False, n_p, note)
            low_if_rejected = None if est["ci_low"] is None else max(0.0, est["ci_low"])
            if p >= self.cfg.alpha and est["ci_high"] is not None:
                est["ci_low"] = 0.0  # the data do not exclude "no gap" (no interval at all stays none: see its note)
            elif est["ci_low"] is not None:
                est["ci_low"] = max(0.0, est["ci_low"])
            if est["ci_high"] is not None:
                est["ci_high"] = max(est["ci_high"], obs)
            est.update(p_value=p, p_adjusted=None, null_mean=stats.num(nul.mean()),
                       null_q95=stats.num(np.quantile(nul, 0.95)), ci_method=GAP_CI_METHOD)
            self._gap_tests.append((est, test, low_if_rejected))
            tests.append(test)
        return tests

    @staticmethod
    def group_column(df: pd.DataFrame, attribute: str) -> pd.Series:
        parts = attribute.split("*")
        if len(parts) == 1:
            return df[attribute].where(df[attribute].notna(), None)
        cols = [df[a] for a in parts]
        known = np.logical_and.reduce([c.notna().to_numpy() for c in cols])
        label = pd.Series(["|".join(f"{a}={v}" for a, v in zip(parts, vals)) for vals in zip(*cols)], index=df.index)
        return label.where(known, None)

    def _groups_table(self, y, p, d, d05, labels: pd.Series, underdiag_is_fpr: bool, patients: np.ndarray | None = None) -> dict:
        """Per-group point estimates through fairlearn's MetricFrame (index trick: y_pred carries
        row indices so each metric can read scores and both decisions)."""
        bins = self.ece_bins

        def m(fn):
            return lambda yt, idx: fn(np.asarray(yt, dtype=float), np.asarray(idx, dtype=int))

        metrics = {
            "n": m(lambda yt, i: float(len(yt))),
            "n_pos": m(lambda yt, i: float(yt.sum())),
            "auc": m(lambda yt, i: fast_auc(yt, p[i])),
            "accuracy": m(lambda yt, i: float((d[i] == yt).mean())),
            "pos_rate": m(lambda yt, i: float(d[i].mean())),
            "tpr": m(lambda yt, i: _rate(d[i], yt == 1)),
            "fpr": m(lambda yt, i: _rate(d[i], yt == 0)),
            "ece": m(lambda yt, i: ece(yt, p[i], bins)),
            "pos_rate_at_0.5": m(lambda yt, i: float(d05[i].mean())),
            "tpr_at_0.5": m(lambda yt, i: _rate(d05[i], yt == 1)),
            "fpr_at_0.5": m(lambda yt, i: _rate(d05[i], yt == 0)),
        }
        mf = MetricFrame(metrics=metrics, y_true=y, y_pred=np.arange(len(y)), sensitive_features=labels.to_numpy())
        table = {}
        for group, row in mf.by_group.iterrows():
            entry = {k: stats.num(v) for k, v in row.items()}
            entry["n"], entry["n_pos"] = int(row["n"]), int(row["n_pos"])
            entry["prevalence"] = stats.num(row["n_pos"] / row["n"]) if row["n"] else None
            entry["underdiag"] = entry["fpr"] if underdiag_is_fpr else (None if entry["tpr"] is None else stats.num(1 - row["tpr"]))
            entry["small"] = entry["n"] < self.cfg.min_group_size
            entry["measurable"] = True
            if patients is not None:
                entry["intervals"] = _group_intervals(y, d, d05, patients, labels.to_numpy() == group)
            table[str(group)] = entry
        return table

    def _endpoint(self, df: pd.DataFrame, e: str) -> dict:
        labelled = df[df[f"y:{e}"].notna()]  # every instance of the endpoint, valid or not
        keep = df["valid"].to_numpy() & df[f"y:{e}"].notna().to_numpy()
        sub = df[keep].reset_index(drop=True)
        n_masked = int((df["valid"] & df[f"y:{e}"].isna()).sum())
        y = sub[f"y:{e}"].to_numpy(dtype=float)
        p = sub[f"p:{e}"].to_numpy(dtype=float)
        d = sub[f"d:{e}"].to_numpy(dtype=float)
        d05 = sub[f"d05:{e}"].to_numpy(dtype=float)
        out = {"n_images": int(len(sub)), "n_masked_labels": n_masked, "attributes": {}}
        if len(sub) == 0:
            self.warnings.append(f"{e}: no valid test images with a label")
            return out
        clusters = _Clusters(sub["patient_id"].astype(str).to_numpy())
        out["n_patients"] = clusters.n
        bins = self.ece_bins
        def overall(r):
            return {"accuracy": float((d[r] == y[r]).mean()), "accuracy_at_0.5": float((d05[r] == y[r]).mean()),
                    "auc": fast_auc(y[r], p[r]), "pos_rate": float(d[r].mean()), "ece": ece(y[r], p[r], bins)}

        out.update(self._ci_many(clusters, overall, ["auc", "ece"], e, "overall"))
        pid = clusters.ids
        out["accuracy"] = _wilson(d == y, pid)
        out["accuracy_at_0.5"] = _wilson(d05 == y, pid)
        out["pos_rate"] = _wilson(d, pid)
        out["prevalence"] = stats.num(y.mean())
        underdiag_is_fpr = e == self.no_finding_label
        for attr in self.attributes:
            labels = self.group_column(sub, attr)
            known = labels.notna().to_numpy()
            if known.sum() == 0:
                continue
            lab = labels[known].astype(str).reset_index(drop=True)
            yk, pk, dk, d05k = y[known], p[known], d[known], d05[known]
            names = sorted(lab.unique())
            codes = lab.map({g: i for i, g in enumerate(names)}).to_numpy()
            pk_ids = sub.loc[known, "patient_id"].astype(str).to_numpy()
            table = self._groups_table(yk, pk, dk, d05k, lab, underdiag_is_fpr, pk_ids)
            # A group whose every instance is invalid has no row in ``sub``: it is unmeasurable, listed,
            # and every gap (which needs all groups) is undefined rather than computed from the others.
            everyone = self.group_column(labelled, attr)
            unmeasurable = sorted(set(everyone[everyone.notna()].astype(str)) - set(table))
            for g in unmeasurable:
                table[g] = {"n": 0, "n_pos": 0, "measurable": False, "small": True,
                            "note": "unmeasurable: no valid prediction in this group"}
            small = [g for g, v in table.items() if v["small"] and v.get("measurable", True)]
            if small:
                self.warnings.append(f"{e}/{attr}: group(s) {', '.join(small)} have fewer than {self.cfg.min_group_size} images; left out of the gaps")
            kc = _Clusters(sub.loc[known, "patient_id"].astype(str).to_numpy())
            include = np.array([not table[g]["small"] for g in names])
            res = {"groups": table, "n_unknown": int((~known).sum()), "small_groups": small}
            def all_gaps(r, c=codes):
                args = (c[r], len(names), bins, underdiag_is_fpr, include)
                tuned = gap_metrics(yk[r], pk[r], dk[r], *args)
                fixed = gap_metrics(yk[r], pk[r], d05k[r], *args)
                return {**tuned, "dp_gap_at_0.5": fixed["dp_gap"], "eod_at_0.5": fixed["eod"]}

            gap_names = [*GAPS, "dp_gap_at_0.5", "eod_at_0.5"]
            if unmeasurable:
                reason = f"undefined: unmeasurable group(s) without valid predictions: {', '.join(unmeasurable)}"
                res["unmeasurable_groups"] = unmeasurable
                self.warnings.append(f"{e}/{attr}: {reason}")
                res.update({g: stats.estimate(float("nan"), None, None, kc.n, note=reason) for g in gap_names})
                res["worst_group"] = None
                test = stats.not_applicable("chi_square", f"{e}/{attr}/decision", False, int(len(dk)), reason)
                gap_tests = [stats.not_applicable("permutation_gap", f"{e}/{attr}/{g}", False, kc.n, reason) for g in PERMUTED]
                self.tests.extend([test, *gap_tests])
                res["tests"] = [test, *gap_tests]
                out["attributes"][attr] = res
                continue
            res.update(self._ci_many(kc, all_gaps, gap_names, e, attr))
            gap_tests = self._permutation_gaps(res, table, names, kc, codes, all_gaps, e, attr)
            aucs = {g: v["auc"] for g, v in table.items() if not v["small"] and v["auc"] is not None}
            res["worst_group"] = min(aucs, key=aucs.get) if aucs else None
            counts = np.array([[((codes == i) & (dk == 1)).sum(), ((codes == i) & (dk == 0)).sum()] for i in range(len(names))])
            test = stats.chi_square(counts, f"{e}/{attr}/decision", names)
            self.tests.extend([test, *gap_tests])
            res["tests"] = [test, *gap_tests]
            out["attributes"][attr] = res
        return out

    def audit(self, data) -> dict:
        """The :class:`benchmark.audits.base.Audit` protocol: ``data.instances`` -> results dict."""
        if data.attributes is not None:
            self.attributes = list(data.attributes)
        if data.decision_rule is not None:
            self.decision_rule = data.decision_rule
        return self.run(data.instances, data.endpoints)

    def run(self, df: pd.DataFrame, endpoints: list[str]) -> dict:
        result = {"endpoints": {e: self._endpoint(df, e) for e in endpoints}}
        stats.correct(self.tests, self.cfg.correction, self.cfg.alpha)
        stats.settle_gaps(self._gap_tests)  # lower ends follow the corrected tests
        for ep in result["endpoints"].values():
            for res in ep["attributes"].values():
                res["tests"] = [t.as_dict() for t in res["tests"]]
        result["warnings"] = self.warnings
        result["tests"] = [t.as_dict() for t in self.tests]
        result["correction"] = stats.correction_summary(self.tests, self.cfg.correction, self.cfg.alpha)
        result["definitions"] = {
            "gap": "max - min over groups with at least min_group_size images",
            "eod": "max(TPR gap, FPR gap)",
            "es_auc": "AUC / (1 + sum_g |AUC - AUC_g|)",
            "underdiag_gap": f"gap of FPR of {self.no_finding_label!r}" if self.no_finding_label else "gap of FNR (missed positives)",
            "ci": "95% bootstrap (BCa, percentile fallback) resampling patients (AUC, ECE, worst_group_auc, es_auc); "
                  "proportions (accuracy, pos_rate, per-group tpr/fpr): Wilson on the patients' effective number "
                  "(ci_method wilson, n_eff); gaps: lower end 0 unless the patient-level permutation test rejects after the run's correction",
            "gap_null": "group labels shuffled across patients (all images of a patient move together); "
                        "p_value = (1 + #{null >= observed}) / (1 + n_boot), null_mean, null_q95",
            "threshold": self.decision_rule,
        }
        return result
