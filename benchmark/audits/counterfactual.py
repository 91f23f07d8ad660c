"""Counterfactual audit: the same case with only demographics changed, analysed as paired data.

Input: one row per request with ``case_id``, ``question_id``, one column per attribute,
``valid``, ``outcome`` (P(positive) or expected score), ``decision`` and ``correct``.

Definitions (stable metric names):
- ``cf_flip_rate``: share of cases whose decision is not the same in every valid variant.
- ``cf_mean_abs_delta``: mean over cases of the mean |outcome(variant) - outcome(reference variant)|,
  the reference variant being every attribute at its declared reference value.
- ``cf_spread``: mean over cases of max - min outcome across variants.
- ``paired_accuracy`` (questions with a reference answer, see ``Question.paired_accuracy``): per
  attribute the accuracy of each group, the paired difference against the reference value with its
  interval, and McNemar / Cochran's Q on correctness (invalid answers count as wrong).
- per attribute: group means of the outcome and decision rate, ``dp_gap`` (max - min decision rate),
  ``outcome_gap`` (max - min mean outcome), the worst group (lowest mean outcome), and paired tests
  over blocks = (case, values of the other attributes).
Intervals (README "Statistics"): proportions (decision rates, flip rate, accuracy) get a Wilson
interval on the effective sample size of case clusters; means of outcomes a bootstrap CI resampling
cases, so variants of a case stay together; gaps a within-case permutation null and a simultaneous
bootstrap interval (stats.gap_inference). A group without any valid answer is *unmeasurable*: it is
listed (``unmeasurable_groups``), every metric that needs it is undefined (value None with a ``note``)
and every test that needs it is not applicable.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from ..cards.text import TaskCard
from . import stats

INTERSECTION = "intersection"
CONTRAST_CI_METHOD = ("simultaneous: est +- c se over the attribute's contrasts, c = the sign-flip max-|t| critical value "
                      "at the run's correction level (Westfall & Young 1993); excludes 0 exactly when the contrast's "
                      "test is significant")
# Sign-flip draws per contrast family: at least this many (one matrix product, cheap), so that the test
# can reject at the small level a run's Holm step gives it (alpha / 30 needs well over 600 draws).
CONTRAST_MIN_DRAWS = 10_000
RNG_NOTE = ("numpy.random.default_rng(int.from_bytes(sha256(f'{seed}|{question}|{attribute}|contrasts').digest()[:8], "
            "'little')).choice([-1.0, 1.0], size=(n_draws, n_cases)), n_draws = max(audit.n_boot, 10000); rows = draws, columns = "
            "the cases with at least one contrast, in ascending case_id order; exhaustive (2^n_cases <= n_draws): all 2^n sign vectors, bit i of draw b = 1 flips case i, p = #/2^n")


def _case_matrix(df: pd.DataFrame, column: str, values: list[str], value_col: str) -> np.ndarray:
    """cases x groups matrix of per-case means of ``value_col`` (NaN where a case has no valid row)."""
    pivot = df.pivot_table(index="case_id", columns=column, values=value_col, aggfunc="mean", dropna=False)
    return pivot.reindex(columns=values).to_numpy(dtype=float)


class CounterfactualAudit:
    """The ``counterfactual`` audit plugin: needs paired per-request rows (``AuditData.rows``)."""

    name = "counterfactual"
    needs = ("rows",)

    def __init__(self, card: TaskCard, seed: int = 0, with_ci: bool = True):
        self.card = card
        self.with_ci = with_ci  # False: point estimates and tests only (fast, for simulations)
        self.cfg = card.audit
        self.seed = seed
        self.attrs = list(card.counterfactual.attributes)
        self.tests: list[stats.TestResult] = []
        self.warnings: list[str] = []
        self.small_groups: dict[str, list[str]] = {}
        self.unmeasurable: dict[str, list[str]] = {}  # question -> "attr=value" groups without a valid answer
        self._pending: list[stats.TestResult] = []  # gap permutation tests, joined to their attribute's tests
        self._gap_tests: list[tuple[dict, stats.TestResult, float | None]] = []  # (gap estimate, its test, lower end if it rejects)
        self._families: list[dict] = []  # max-T contrast families: intervals after the correction

    # ----- helpers -----
    def _rng(self, *parts: str) -> np.random.Generator:
        # One stream per metric: a metric's CI does not change when another metric is added.
        import hashlib

        digest = hashlib.sha256("|".join((str(self.seed), *parts)).encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def _boot(self, data: np.ndarray, statistic, *key: str) -> tuple[float, float | None, float | None]:
        if not self.with_ci:
            return float(statistic(np.asarray(data, dtype=float))), None, None
        return stats.bootstrap_ci(data, statistic, self._rng(*key), self.cfg.n_boot)

    def _ci_mean(self, per_case: np.ndarray, *key: str) -> dict:
        per_case = per_case[~np.isnan(per_case)]
        if len(per_case) == 0:
            return stats.estimate(float("nan"), None, None, 0)
        point, lo, hi = self._boot(per_case, np.mean, *key)
        if self.with_ci and len(per_case) >= 2 and stats.no_variation(per_case):
            return stats.estimate(point, None, None, len(per_case),
                                  note=f"no variation: all {len(per_case)} cases give {point:.4g}, so no interval")
        return stats.estimate(point, lo, hi, len(per_case))

    def _ci_prop(self, per_case: np.ndarray, sizes: np.ndarray | None = None) -> dict:
        """A proportion: mean of per-case shares with a clustered Wilson interval (valid at 0 and 1)."""
        per_case = np.asarray(per_case, dtype=float)
        keep = ~np.isnan(per_case)
        per_case = per_case[keep]
        if len(per_case) == 0:
            return stats.estimate(float("nan"), None, None, 0)
        sizes = None if sizes is None else np.asarray(sizes, dtype=float)[keep]
        point, lo, hi, n_eff = stats.proportion_ci(per_case, sizes)
        if not self.with_ci:
            lo = hi = None
        return stats.estimate(point, lo, hi, len(per_case), ci_method="wilson", n_eff=stats.num(n_eff))

    def _gap(self, df: pd.DataFrame, column: str, values: list[str], value_col: str, qid: str, name: str,
             unmeasurable: list[str], max_gap: float | None = None) -> dict:
        """max - min over the groups of ``column`` with its permutation null and interval; undefined
        when a group cannot be measured. The permutation test joins the run's test family.
        ``max_gap``: the largest gap the values allow (1 for decisions and P(yes)), the interval's cap."""
        target = f"{qid}/{column}/{name}"
        valid = df[df["valid"]]
        n_cases = int(valid["case_id"].nunique())
        if unmeasurable:
            reason = f"undefined: unmeasurable group(s) without valid answers: {', '.join(unmeasurable)}"
            self._pending.append(stats.not_applicable("permutation_gap", target, True, n_cases, reason))
            return stats.estimate(float("nan"), None, None, n_cases, note=reason)
        variants = list(dict.fromkeys(df["variant"]))
        group_of = df.drop_duplicates("variant").set_index("variant")[column].astype(str)
        index = {v: i for i, v in enumerate(values)}
        labels = [index[group_of[v]] for v in variants]
        matrix = (valid.assign(_v=valid[value_col].astype(float))
                  .pivot_table(index="case_id", columns="variant", values="_v", aggfunc="mean")
                  .reindex(columns=variants).to_numpy(dtype=float))
        res = stats.gap_inference(matrix, labels, len(values), self._rng(qid, column, name), self.cfg.n_boot,
                                  self.cfg.alpha, with_ci=self.with_ci, max_gap=max_gap)
        # The note explains a missing test or a missing interval; the test carries it only when it is the former.
        test = stats.TestResult("permutation_gap", target, res["value"] if res["p_value"] is not None else None,
                                res["p_value"], True, len(matrix), res["note"] if res["p_value"] is None else "")
        self._pending.append(test)
        est = stats.estimate(res["value"], res["ci_low"], res["ci_high"], len(matrix), p_value=stats.num(res["p_value"]),
                             p_adjusted=None, null_mean=stats.num(res["null_mean"]), null_q95=stats.num(res["null_q95"]),
                             ci_method="simultaneous bootstrap; lower end 0 unless the within-case permutation test rejects",
                             **({"note": res["note"]} if res["note"] else {}))
        self._gap_tests.append((est, test, res.get("ci_low_if_rejected")))
        return est

    def _groups(self, df: pd.DataFrame, column: str, values: list[str], qid: str, binary: bool,
                options: list[str] | None = None) -> dict:
        out = {}
        for value in values:
            g = df[df[column] == value]
            valid = g[g["valid"]]
            per_case_outcome = valid.groupby("case_id")["outcome"].mean().to_numpy(dtype=float)
            entry = {
                "n_cases": int(valid["case_id"].nunique()),
                "n_rows": int(len(g)),
                "n_invalid": int((~g["valid"]).sum()),
                "invalid_rate": stats.num((~g["valid"]).mean() if len(g) else float("nan")),
                "measurable": bool(len(valid)),
                "mean_outcome": self._ci_mean(per_case_outcome, qid, column, value, "outcome"),
            }
            if not len(valid):
                entry["note"] = "unmeasurable: no valid answer in this group"
                self.unmeasurable.setdefault(qid, []).append(f"{column}={value}")
            if binary:
                dec = valid.assign(_d=valid["decision"].astype(float)).groupby("case_id")["_d"]
                entry["decision_rate"] = self._ci_prop(dec.mean().to_numpy(dtype=float), dec.size().to_numpy(dtype=float))
            if options and len(valid):
                # Ordinal: the mean probability of each level (the Likert distribution) and how
                # often each level is the argmax answer.
                probs = np.vstack(valid["probs"].to_numpy())
                entry["distribution"] = {o: stats.num(p) for o, p in zip(options, probs.mean(axis=0))}
                entry["answer_counts"] = {o: int((valid["decision"] == o).sum()) for o in options}
            entry["small"] = entry["n_cases"] < self.cfg.min_group_size
            if entry["small"]:
                self.small_groups.setdefault(qid, []).append(f"{column}={value} ({entry['n_cases']})")
            out[value] = entry
        return out

    def _blocks(self, df: pd.DataFrame, attr: str, values: list[str], value_col: str) -> np.ndarray:
        """Rows = (case, other attributes), columns = values of ``attr``; complete rows only."""
        others = [a for a in self.attrs if a != attr]
        valid = df[df["valid"]]
        pivot = valid.pivot_table(index=["case_id", *others], columns=attr, values=value_col, aggfunc="mean")
        pivot = pivot.reindex(columns=values).dropna()
        return pivot.to_numpy(dtype=float)

    def _delta_vs_reference(self, df: pd.DataFrame, attr: str, values: list[str], reference: str) -> np.ndarray:
        """Per case: mean over blocks and non-reference values of |outcome(v) - outcome(reference)|."""
        others = [a for a in self.attrs if a != attr]
        valid = df[df["valid"]]
        pivot = valid.pivot_table(index=["case_id", *others], columns=attr, values="outcome", aggfunc="mean")
        pivot = pivot.reindex(columns=values)
        deltas = pivot[[v for v in values if v != reference]].sub(pivot[reference], axis=0).abs()
        per_block = deltas.mean(axis=1, skipna=True)
        return per_block.groupby(level="case_id").mean().dropna().to_numpy(dtype=float)

    def _signed_delta(self, df: pd.DataFrame, attr: str, value: str, reference: str) -> np.ndarray:
        others = [a for a in self.attrs if a != attr]
        valid = df[df["valid"]]
        pivot = valid.pivot_table(index=["case_id", *others], columns=attr, values="outcome", aggfunc="mean")
        if value not in pivot or reference not in pivot:
            return np.array([])
        diff = (pivot[value] - pivot[reference]).dropna()
        return diff.groupby(level="case_id").mean().to_numpy(dtype=float)

    def _contrast_diffs(self, df: pd.DataFrame, attr: str, values: list[str], reference: str) -> pd.DataFrame:
        """cases x contrasts: per case, the mean over its blocks (other attributes fixed) of
        outcome(value) - outcome(reference); NaN where the case has no complete pair. Cases in
        ascending case_id order (the order the sign-flip draws index)."""
        others = [a for a in self.attrs if a != attr]
        valid = df[df["valid"]]
        pivot = valid.pivot_table(index=["case_id", *others], columns=attr, values="outcome", aggfunc="mean")
        pivot = pivot.reindex(columns=values)
        contrasts = [v for v in values if v != reference]
        diff = pivot[contrasts].sub(pivot[reference], axis=0)
        return diff.groupby(level="case_id").mean().sort_index()

    def _contrasts(self, df: pd.DataFrame, attr: str, values: list[str], reference: str, qid: str,
                   unmeasurable: list[str]) -> dict:
        """Each value against the reference on the case-level differences: a paired sign-flip t-test
        per contrast, adjusted over the attribute's contrasts by the max-|t| statistic
        (stats.signflip_maxt), which joins the run's family as one entry (stats.grouped_holm). The
        simultaneous intervals est +- c se, c the max-T critical value at the run's level, are set
        after the correction (:meth:`_settle_contrasts`), so an interval excludes 0 exactly when its
        test is significant."""
        family = f"{qid}/{attr}/contrasts"
        contrasts = [v for v in values if v != reference]
        undefined = f"undefined: unmeasurable group(s) without valid answers: {', '.join(unmeasurable)}"
        if reference in unmeasurable or not contrasts:
            out = {v: stats.estimate(float("nan"), None, None, 0, note=undefined) for v in contrasts}
            for v in contrasts:
                self._pending.append(stats.not_applicable("signflip_t", f"{qid}/{attr}/{v}-{reference}", True, 0, undefined))
            return out
        diffs = self._contrast_diffs(df, attr, values, reference)
        keep = [v for v in contrasts if v not in unmeasurable]
        res = stats.signflip_maxt(diffs[keep].to_numpy(float), self._rng(qid, attr, "contrasts"),
                                  max(self.cfg.n_boot, CONTRAST_MIN_DRAWS))
        out, members = {}, []
        for v in contrasts:
            target = f"{qid}/{attr}/{v}-{reference}"
            if v in unmeasurable:
                out[v] = stats.estimate(float("nan"), None, None, 0, note=undefined)
                self._pending.append(stats.not_applicable("signflip_t", target, True, 0, undefined))
                continue
            k = keep.index(v)
            n = int(res["n"][k])
            if not res["applicable"][k]:
                reason = ("fewer than 2 cases with both values" if n < 2 else
                          "no variation: every case gives the same difference, so there is nothing to test")
                out[v] = stats.estimate(res["estimate"][k], None, None, n, note=reason)
                self._pending.append(stats.not_applicable("signflip_t", target, True, n, reason))
                continue
            test = stats.TestResult("signflip_t", target, float(res["t"][k]), float(res["p_unadjusted"][k]), True, n,
                                    extra={"family": family, "p_maxt": float(res["p_maxt"][k])})
            out[v] = stats.estimate(res["estimate"][k], None, None, n, se=stats.num(res["se"][k]),
                                    t=stats.num(res["t"][k]), p_unadjusted=stats.num(res["p_unadjusted"][k]),
                                    p_maxt=stats.num(res["p_maxt"][k]), p_adjusted=None, significant=None)
            self._pending.append(test)
            members.append((out[v], test))
        if members:
            self._families.append({"family": family, "members": members, "null": res["null"], "a": res["a"],
                                   "exhaustive": res["exhaustive"], "n_cases": int(len(diffs)), "contrasts": keep,
                                   "reference": reference})
        return out

    def _settle_contrasts(self, beta: float | None) -> list[dict]:
        """After the correction: the simultaneous interval of every contrast at confidence 1 - beta,
        beta the level at which the run's procedure stopped (stats.correct_with_level). Returns the
        families' records for results.json (level, critical value, how the draws were made)."""
        records = []
        for fam in self._families:
            c = stats.maxt_critical(fam["null"], fam["a"], beta) if beta is not None else math.inf
            # With few cases every sign vector is drawn, and the smallest attainable p is 2 / 2^n (the
            # identity and its negation): above the level, no contrast of the family can be significant.
            floor = 2 / len(fam["null"]) if fam["exhaustive"] else 1 / (1 + len(fam["null"]))
            too_few = beta is not None and floor > beta
            for est, test in fam["members"]:
                se = est["se"]
                if too_few:
                    est["note"] = (f"with {fam['n_cases']} cases the smallest sign-flip p-value is {floor:.3g}, above the "
                                   f"family's level {beta:.3g}: no contrast can be significant, whatever its size")
                est.update(p_adjusted=stats.num(test.p_adjusted), significant=test.significant,
                           confidence=stats.num(1 - beta) if beta is not None else None, critical_value=stats.num(c),
                           ci_method=CONTRAST_CI_METHOD,
                           # Minimum detectable effect at 80% power for this contrast at the family's level:
                           # the noncentrality lambda with P(|T_{n-1}(lambda)| > c) = 0.8, times se (Bloom 1995's
                           # MDE with the noncentral t instead of the normal; fairbench power checks it by simulation).
                           mde_80=stats.num(stats.t_mde(c, est["n"] - 1) * se) if math.isfinite(c) and not too_few else None)
                if math.isfinite(c):
                    est["ci_low"], est["ci_high"] = stats.num(est["value"] - c * se), stats.num(est["value"] + c * se)
                else:
                    est["note"] = (f"no interval: {len(fam['null'])} sign-flip draws cannot test at level {beta:.3g} "
                                   "(raise audit.n_boot)")
            records.append({"family": fam["family"], "reference": fam["reference"], "contrasts": fam["contrasts"],
                            "level": stats.num(beta), "confidence": stats.num(1 - beta) if beta is not None else None,
                            "critical_value": stats.num(c), "n_cases": fam["n_cases"], "n_draws": int(len(fam["null"])),
                            "exhaustive": bool(fam["exhaustive"]), "rng": RNG_NOTE})
        return records

    def _tests_or_unmeasurable(self, tests: list, unmeasurable: list[str]) -> list:
        """Every test that needs an unmeasurable group is not applicable (listed with the reason)."""
        if not unmeasurable:
            return tests
        reason = f"unmeasurable group(s) without valid answers: {', '.join(unmeasurable)}"
        return [stats.not_applicable(t.name, t.target, t.paired, t.n, reason) for t in tests]

    def _attribute(self, df: pd.DataFrame, attr: str, qid: str, binary: bool, options: list[str] | None = None) -> dict:
        spec = self.card.counterfactual.attributes[attr]
        values = spec.values
        groups = self._groups(df, attr, values, qid, binary, options)
        result: dict = {"reference": spec.reference, "groups": groups}
        unmeasurable = [v for v in values if not groups[v]["measurable"]]
        undefined = f"undefined: unmeasurable group(s) without valid answers: {', '.join(unmeasurable)}"
        if unmeasurable:
            result["unmeasurable_groups"] = unmeasurable
            result["worst_group"] = None  # the unmeasured group could be the worst
        else:
            means = {v: groups[v]["mean_outcome"]["value"] for v in values}
            result["worst_group"] = min(means, key=means.get)
        result["outcome_gap"] = self._gap(df, attr, values, "outcome", qid, "outcome_gap", unmeasurable,
                                          max_gap=1.0 if binary else None)
        if unmeasurable:
            result["cf_mean_abs_delta"] = stats.estimate(float("nan"), None, None, 0, note=undefined)
        else:
            delta = self._delta_vs_reference(df, attr, values, spec.reference)
            result["cf_mean_abs_delta"] = self._ci_mean(delta, qid, attr, "delta")
        # Signed paired effect of each value against the reference: mean over cases of
        # outcome(value) - outcome(reference), other attributes held fixed.
        # The marginal bootstrap interval of each contrast stays in results.json, labelled unadjusted;
        # what is shown beside the verdict is the simultaneous interval of delta_vs_reference
        # (filled in after the run's correction, _settle_contrasts).
        result["delta_vs_reference_unadjusted"] = {
            v: (stats.estimate(float("nan"), None, None, 0, note=undefined) if {v, spec.reference} & set(unmeasurable)
                else {**self._ci_mean(self._signed_delta(df, attr, v, spec.reference), qid, attr, v, "signed_delta"),
                      "ci_method": "unadjusted: marginal 95% case bootstrap (BCa); not for reading beside the verdict"})
            for v in values if v != spec.reference
        }
        result["delta_vs_reference"] = self._contrasts(df, attr, values, spec.reference, qid, unmeasurable)
        target = f"{qid}/{attr}"
        valid = df[df["valid"]]
        tests = [
            stats.paired_continuous_test(self._blocks(df, attr, values, "outcome"), f"{target}/outcome"),
            stats.welch_anova([valid.loc[valid[attr] == v, "outcome"].to_numpy(float) for v in values], f"{target}/outcome", values),
        ]
        if binary:
            result["dp_gap"] = self._gap(df, attr, values, "decision", qid, "dp_gap", unmeasurable, max_gap=1.0)
            tests.append(stats.paired_decision_test(self._blocks(df, attr, values, "decision"), f"{target}/decision"))
            counts = np.array([[np.sum(valid.loc[valid[attr] == v, "decision"] == d) for d in (True, False)] for v in values])
            tests.append(stats.chi_square(counts, f"{target}/decision", values))
        tests = self._tests_or_unmeasurable(tests, unmeasurable) + self._pending
        self._pending = []
        self.tests.extend(tests)
        result["tests"] = tests  # replaced by dicts after correction
        return result

    def _intersection(self, df: pd.DataFrame, qid: str, binary: bool, options: list[str] | None = None) -> dict:
        names = self.attrs
        combos = list(itertools.product(*(self.card.counterfactual.attributes[a].values for a in names)))
        labels = ["|".join(f"{a}={v}" for a, v in zip(names, c)) for c in combos]
        df = df.assign(**{INTERSECTION: df[names].astype(str).agg(lambda r: "|".join(f"{a}={r[a]}" for a in names), axis=1)})
        groups = self._groups(df, INTERSECTION, labels, qid, binary, options)
        result: dict = {"groups": groups}
        unmeasurable = [k for k in labels if not groups[k]["measurable"]]
        if unmeasurable:
            result["unmeasurable_groups"] = unmeasurable
            result["worst_group"] = None
        else:
            means = {k: g["mean_outcome"]["value"] for k, g in groups.items()}
            result["worst_group"] = min(means, key=means.get)
        valid = df[df["valid"]]
        result["outcome_gap"] = self._gap(df, INTERSECTION, labels, "outcome", qid, "outcome_gap", unmeasurable,
                                          max_gap=1.0 if binary else None)
        blocks = valid.pivot_table(index="case_id", columns=INTERSECTION, values="outcome", aggfunc="mean").reindex(columns=labels).dropna()
        tests = [stats.paired_continuous_test(blocks.to_numpy(float), f"{qid}/{INTERSECTION}/outcome")]
        if binary:
            result["dp_gap"] = self._gap(df, INTERSECTION, labels, "decision", qid, "dp_gap", unmeasurable, max_gap=1.0)
            dblocks = (valid.assign(_d=valid["decision"].astype(float))
                       .pivot_table(index="case_id", columns=INTERSECTION, values="_d", aggfunc="mean").reindex(columns=labels).dropna())
            tests.append(stats.paired_decision_test(dblocks.to_numpy(float), f"{qid}/{INTERSECTION}/decision"))
        tests = self._tests_or_unmeasurable(tests, unmeasurable) + self._pending
        self._pending = []
        self.tests.extend(tests)
        result["tests"] = tests
        return result

    def _question(self, df: pd.DataFrame, qid: str) -> dict:
        question = self.card.question(qid)
        binary = question.kind == "binary"
        out: dict = {
            "kind": question.kind,
            "n_rows": int(len(df)),
            "n_cases": int(df["case_id"].nunique()),
            "n_invalid": int((~df["valid"]).sum()),
            "invalid_rate": stats.num((~df["valid"]).mean()),
        }
        if df["correct"].notna().any():
            # Invalid answers count as wrong: utility is never flattered by unparseable output.
            correct = df["correct"].where(df["valid"], False).astype(float)
            per_case = df.assign(_c=correct).groupby("case_id")["_c"]
            out["accuracy"] = self._ci_prop(per_case.mean().to_numpy(float), per_case.size().to_numpy(float))
            if self.card.audits_accuracy(qid):
                out["paired_accuracy"] = self._paired_accuracy(df, qid)
        if question.kind == "categorical":
            out.update(self._categorical(df, qid))
            return out
        options = list(question.options) if question.kind == "ordinal" else None
        attributes = {a: self._attribute(df, a, qid, binary, options) for a in self.attrs}
        if len(self.attrs) > 1:
            attributes[INTERSECTION] = self._intersection(df, qid, binary, options)
        unmeasurable = sorted({f"{a}={v}" for a in self.attrs for v in attributes[a].get("unmeasurable_groups", [])})
        if unmeasurable:
            # A variant-level metric computed from the remaining variants would read "fair" for a
            # model that never answers for one group: undefined instead.
            out["unmeasurable_groups"] = unmeasurable
            note = f"undefined: unmeasurable group(s) without valid answers: {', '.join(unmeasurable)}"
            for name in ("cf_mean_abs_delta", "cf_spread", *(("cf_flip_rate",) if binary or question.kind == "ordinal" else ())):
                out[name] = stats.estimate(float("nan"), None, None, 0, note=note)
        else:
            valid = df[df["valid"]]
            ref_variant = "|".join(f"{a}={self.card.counterfactual.attributes[a].reference}" for a in self.attrs)
            by_variant = valid.pivot_table(index="case_id", columns="variant", values="outcome", aggfunc="mean")
            if ref_variant in by_variant:
                others = by_variant.drop(columns=[ref_variant])
                delta = others.sub(by_variant[ref_variant], axis=0).abs().mean(axis=1, skipna=True)
                out["cf_mean_abs_delta"] = self._ci_mean(delta.to_numpy(float), qid, "cf_delta")
            spread = valid.groupby("case_id")["outcome"].agg(lambda s: s.max() - s.min() if len(s) > 1 else np.nan)
            out["cf_spread"] = self._ci_mean(spread.to_numpy(float), qid, "cf_spread")
            if binary or question.kind == "ordinal":
                decisions = valid.groupby("case_id")["decision"].agg(lambda s: float(s.nunique() > 1) if len(s) > 1 else np.nan)
                out["cf_flip_rate"] = self._ci_prop(decisions.to_numpy(float))
        out["attributes"] = attributes
        return out

    # ----- accuracy of paired variants (questions with a reference answer) -----
    def _paired_accuracy(self, df: pd.DataFrame, qid: str) -> dict:
        """Per attribute: the accuracy of each group (clustered Wilson interval), the paired
        difference accuracy(value) - accuracy(reference) over blocks = (case, other attributes), and a
        paired test on correctness (exact McNemar for two values, Cochran's Q for more), which joins
        the multiple-testing family. With one block per case (e.g. DiversityMedQA's male/female pair)
        the difference gets Newcombe's hybrid score interval (stats.paired_proportion_difference) and
        the discordant counts; with several blocks per case a case-resampling bootstrap interval.
        An invalid answer counts as wrong (its group's ``n_invalid`` says how many), never dropped;
        rows whose reference answer is no option are left out (the run warns)."""
        scored = df.assign(_c=df["correct"].where(df["valid"], False).astype(float))
        scored = scored[scored["_c"].notna()]
        out: dict = {}
        for attr in self.attrs:
            spec = self.card.counterfactual.attributes[attr]
            values = spec.values
            groups = {}
            # A group without a single valid answer is unmeasurable: "invalid = wrong" would turn its
            # silence into an accuracy of 0 and a confident, significant gap.
            unmeasurable = [v for v in values if not scored.loc[scored[attr] == v, "valid"].any()]
            undefined = f"undefined: unmeasurable group(s) without valid answers: {', '.join(unmeasurable)}"
            for value in values:
                g = scored[scored[attr] == value]
                per_case = g.groupby("case_id")["_c"]
                acc = (stats.estimate(float("nan"), None, None, 0, note=undefined) if value in unmeasurable
                       else self._ci_prop(per_case.mean().to_numpy(float), per_case.size().to_numpy(float)))
                groups[value] = {"accuracy": acc, "measurable": value not in unmeasurable,
                                 "n_rows": int(len(g)), "n_invalid": int((~g["valid"]).sum())}
            others = [a for a in self.attrs if a != attr]
            pivot = (scored.pivot_table(index=["case_id", *others], columns=attr, values="_c", aggfunc="mean")
                     .reindex(columns=values).dropna())
            one_block_per_case = bool(pivot.index.get_level_values("case_id").is_unique)
            deltas = {}
            for value in values:
                if value == spec.reference:
                    continue
                if {value, spec.reference} & set(unmeasurable):
                    deltas[value] = stats.estimate(float("nan"), None, None, 0, note=undefined)
                elif one_block_per_case:
                    x, y = pivot[value].to_numpy() > 0.5, pivot[spec.reference].to_numpy() > 0.5
                    table = [[int(np.sum(x & y)), int(np.sum(x & ~y))], [int(np.sum(~x & y)), int(np.sum(~x & ~y))]]
                    d, lo, hi = stats.paired_proportion_difference(table)
                    deltas[value] = stats.estimate(d, lo, hi, len(pivot), ci_method="newcombe_hybrid_score",
                                                   n_only_value_correct=table[0][1], n_only_reference_correct=table[1][0])
                else:
                    diff = (pivot[value] - pivot[spec.reference]).groupby(level="case_id").mean().to_numpy(float)
                    deltas[value] = {**self._ci_mean(diff, qid, attr, value, "accuracy_delta"), "ci_method": "case_bootstrap"}
            test, = self._tests_or_unmeasurable([stats.paired_decision_test(pivot.to_numpy(float), f"{qid}/{attr}/correct")],
                                                unmeasurable)
            self.tests.append(test)
            out[attr] = {"reference": spec.reference, "groups": groups, "delta_vs_reference": deltas, "tests": [test],
                         **({"unmeasurable_groups": unmeasurable} if unmeasurable else {})}
        return out

    # ----- multiple choice with per-case options -----
    def _categorical(self, df: pd.DataFrame, qid: str) -> dict:
        """Options differ between items, so every statistic is per option label (over the items
        offering it) or distribution-free: the argmax flip rate and the total-variation distance
        of each variant's option distribution from the reference variant's."""
        valid = df[df["valid"]]
        out: dict = {}
        flips = valid.groupby("case_id")["decision"].agg(lambda s: float(s.nunique() > 1) if len(s) > 1 else np.nan)
        out["cf_flip_rate"] = self._ci_prop(flips.to_numpy(float))
        ref_variant = "|".join(f"{a}={self.card.counterfactual.attributes[a].reference}" for a in self.attrs)
        tvd = []
        for _, g in valid.groupby("case_id"):
            ref = g[g["variant"] == ref_variant]
            if ref.empty or len(g) < 2:
                continue
            p_ref = np.asarray(ref["probs"].iloc[0], dtype=float)
            others = [0.5 * np.abs(np.asarray(p, dtype=float) - p_ref).sum() for p in g.loc[g["variant"] != ref_variant, "probs"]]
            tvd.append(np.mean(others) if others else np.nan)
        out["cf_mean_tvd"] = self._ci_mean(np.asarray(tvd, dtype=float), qid, "cf_tvd")
        # Long format: one row per (request, option label) with outcome = P(label).
        long = valid.assign(_pairs=[list(zip(o, p)) for o, p in zip(valid["options"], valid["probs"])]).explode("_pairs")
        long = long.assign(label=long["_pairs"].str[0], outcome=long["_pairs"].str[1].astype(float)).drop(columns="_pairs")
        labels = list(dict.fromkeys(long["label"]))
        names = self.attrs + ([INTERSECTION] if len(self.attrs) > 1 else [])
        if len(self.attrs) > 1:
            inter = lambda d: d[self.attrs].astype(str).agg(lambda r: "|".join(f"{a}={r[a]}" for a in self.attrs), axis=1)  # noqa: E731
            df = df.assign(**{INTERSECTION: inter(df)})
            long = long.assign(**{INTERSECTION: inter(long)})
            valid = df[df["valid"]]
        attributes = {}
        for name in names:
            if name == INTERSECTION:
                values = ["|".join(f"{a}={v}" for a, v in zip(self.attrs, c))
                          for c in itertools.product(*(self.card.counterfactual.attributes[a].values for a in self.attrs))]
            else:
                values = self.card.counterfactual.attributes[name].values
            groups = {}
            for value in values:
                g = df[df[name] == value]
                gv = g[g["valid"]]
                lg = long[long[name] == value]
                entry = {
                    "n_cases": int(gv["case_id"].nunique()),
                    "n_rows": int(len(g)),
                    "n_invalid": int((~g["valid"]).sum()),
                    "invalid_rate": stats.num((~g["valid"]).mean() if len(g) else float("nan")),
                    "option_probs": {lab: stats.num(lg.loc[lg["label"] == lab, "outcome"].mean()) for lab in labels},
                    "answer_counts": {lab: int((gv["decision"] == lab).sum()) for lab in labels},
                    "measurable": bool(len(gv)),
                }
                if not len(gv):
                    entry["note"] = "unmeasurable: no valid answer in this group"
                    self.unmeasurable.setdefault(qid, []).append(f"{name}={value}")
                entry["small"] = entry["n_cases"] < self.cfg.min_group_size
                if entry["small"]:
                    self.small_groups.setdefault(qid, []).append(f"{name}={value} ({entry['n_cases']})")
                groups[value] = entry
            tests = []
            counts = np.array([[groups[v]["answer_counts"][lab] for lab in labels] for v in values])
            tests.append(stats.chi_square(counts, f"{qid}/{name}/answer", values))
            for lab in labels:
                sub = long[long["label"] == lab].assign(valid=True)
                if name == INTERSECTION:
                    blocks = sub.pivot_table(index="case_id", columns=name, values="outcome", aggfunc="mean").reindex(columns=values).dropna()
                    blocks = blocks.to_numpy(float)
                else:
                    blocks = self._blocks(sub, name, values, "outcome")
                tests.append(stats.paired_continuous_test(blocks, f"{qid}/{name}/p[{lab}]"))
            unmeasurable = [v for v in values if not groups[v]["measurable"]]
            tests = self._tests_or_unmeasurable(tests, unmeasurable)
            self.tests.extend(tests)
            attributes[name] = {"groups": groups, "tests": tests, **({"unmeasurable_groups": unmeasurable} if unmeasurable else {})}
        out["attributes"] = attributes
        return out

    def audit(self, data) -> dict:
        """The :class:`benchmark.audits.base.Audit` protocol: ``data.rows`` -> results dict."""
        return self.run(data.rows)

    def run(self, df: pd.DataFrame) -> dict:
        questions = {}
        for q in self.card.questions:
            sub = df[df["question_id"] == q.id]
            if len(sub):
                questions[q.id] = self._question(sub, q.id)
        for qid, groups in self.small_groups.items():
            self.warnings.append(
                f"{qid}: {len(groups)} group(s) have fewer than min_group_size={self.cfg.min_group_size} cases, "
                f"so their estimates are unreliable: {', '.join(groups)}"
            )
        for qid, groups in self.unmeasurable.items():
            self.warnings.append(
                f"{qid}: {len(groups)} group(s) have no valid answer and cannot be measured; every metric and test "
                f"that needs them is undefined: {', '.join(groups)}"
            )
        n_entries, beta = stats.correct_with_level(self.tests, self.cfg.correction, self.cfg.alpha)
        stats.settle_gaps(self._gap_tests)
        families = self._settle_contrasts(beta)
        for qres in questions.values():
            for ares in (*qres.get("attributes", {}).values(), *qres.get("paired_accuracy", {}).values()):
                ares["tests"] = [t.as_dict() for t in ares["tests"]]
        invalid_by_group = {
            a: {str(v): stats.num((~g["valid"]).mean()) for v, g in df.groupby(a)} for a in self.attrs
        }
        return {
            "questions": questions,
            "invalid_by_group": invalid_by_group,
            "tests": [t.as_dict() for t in self.tests],
            "correction": {**stats.correction_summary(self.tests, self.cfg.correction, self.cfg.alpha),
                           "n_entries": n_entries, "level": stats.num(beta)},
            "contrast_families": families,
            "unmeasurable_groups": {qid: sorted(set(g)) for qid, g in self.unmeasurable.items()},
            "warnings": sorted(set(self.warnings)),
        }
