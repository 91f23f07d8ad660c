"""Statistics shared by the audits: intervals, paired and unpaired tests, gap nulls, and
multiple-testing correction. Thin wrappers over scipy.stats and statsmodels that fix the
conventions (seeded, degenerate inputs handled, results as plain dicts).

The rules at the edges (README, "Statistics"):

- Proportions (decision rates, flip rate, accuracy, invalid rate) get a Wilson interval
  (statsmodels ``proportion_confint``) on the effective number of independent observations when the
  variants of a case are correlated (:func:`proportion_ci`): valid at 0 and 1, never zero width.
- Means of continuous outcomes get a case-resampling bootstrap interval (BCa, percentile fallback).
- A max - min gap over groups is biased upward when there is no effect, so it gets a within-case
  permutation null (p-value, null mean and 95th percentile) and a simultaneous bootstrap interval whose
  lower end is 0 unless the permutation test rejects (:func:`gap_inference`).
- A test on data without variation (within :data:`TOLERANCE`), or on a table with an empty group, is
  *not applicable*: no statistic, no p-value, a reason. Only applicable tests (a finite p-value)
  enter the multiple-testing family (:func:`correct`).
- Chi-square: Pearson's statistic without continuity correction, for every table size.
- Stored values keep full float precision (:func:`num`); only display code rounds.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps
from statsmodels.stats.contingency_tables import cochrans_q, mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.oneway import anova_oneway
from statsmodels.stats.proportion import proportion_confint

CONFIDENCE = 0.95
# Values that differ by less than this (relative to their magnitude, at least 1) count as equal:
# floating-point noise (a variance of 3e-33) is not variation.
TOLERANCE = 1e-9


def num(x: float | None) -> float | None:
    """A finite float at full precision, None for None/NaN/inf (stored values: never rounded)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def r6(x: float | None) -> float | None:
    """6 significant digits, None for NaN/inf. For display and legacy callers only: results.json
    stores :func:`num` values."""
    x = num(x)
    return None if x is None else float(f"{x:.6g}")


def estimate(value: float, low: float | None, high: float | None, n: int, **extra) -> dict:
    return {"value": num(value), "ci_low": num(low), "ci_high": num(high), "n": int(n), **extra}


def no_variation(x) -> bool:
    """True when the finite values of ``x`` are all equal within :data:`TOLERANCE`."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return True
    return float(np.ptp(x)) <= TOLERANCE * max(1.0, float(np.max(np.abs(x))))


def bootstrap_ci(
    data: np.ndarray,
    statistic: Callable[[np.ndarray], float],
    rng: np.random.Generator,
    n_boot: int = 2000,
) -> tuple[float, float | None, float | None]:
    """Point estimate and 95% CI, resampling rows of ``data`` (rows are cases: a paired bootstrap
    when columns are variants of the same case). BCa, falling back to percentile when BCa is
    undefined (e.g. a degenerate jackknife). No interval (``None, None``) when ``data``, or the
    statistic over the resamples, has no variation: every resample would repeat the point estimate, and a zero-width interval would
    claim a certainty that a handful of identical cases does not hold."""
    data = np.asarray(data, dtype=float)
    point = float(statistic(data))
    if len(data) < 2 or not math.isfinite(point):
        return point, None, None
    if no_variation(data):
        return point, None, None
    seed = int(rng.integers(0, 2**32 - 1))
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Resample case indices, so a row (all variants of a case) always moves as one unit.
            res = sps.bootstrap(
                (np.arange(len(data)),),
                lambda idx: statistic(data[idx.astype(int)]),
                n_resamples=n_boot,
                vectorized=False,
                paired=False,
                confidence_level=CONFIDENCE,
                method=method,
                random_state=np.random.default_rng(seed),
            )
        if no_variation(res.bootstrap_distribution):
            # e.g. an AUC of 1 that every resample of patients repeats: a zero-width interval would
            # claim certainty; the caller says "no variation" instead.
            return point, None, None
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return point, low, high
    return point, None, None


def proportion_ci(per_case: np.ndarray, sizes: np.ndarray | None = None) -> tuple[float, float | None, float | None, float]:
    """Mean of per-case proportions with a 95% Wilson interval (statsmodels ``proportion_confint``).

    ``per_case[i]`` is the share of case i's ``sizes[i]`` 0/1 observations (its variants) that are 1.
    Variants of a case are correlated, so the interval uses the effective number of independent
    observations n_eff = p(1 - p) / Var_cluster(p) (the cluster-robust variance of the mean of
    per-case values), kept between the number of cases and the number of observations; at p = 0 or
    1, where that ratio is undefined, n_eff is the number of cases (each case one observation, the
    conservative end). Returns (point, low, high, n_eff)."""
    x = np.asarray(per_case, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return float("nan"), None, None, 0.0
    total = float(np.sum(sizes)) if sizes is not None else float(n)
    p = float(x.mean())
    n_eff = float(n)
    if n > 1 and 0.0 < p < 1.0:
        var = float(x.var(ddof=1)) / n
        n_eff = p * (1 - p) / var if var > 0 else total
        n_eff = min(max(n_eff, float(n)), max(total, float(n)))
    low, high = proportion_confint(p * n_eff, n_eff, alpha=1 - CONFIDENCE, method="wilson")
    # Rounding can leave 1 - 1e-16 at p = 1: the interval always contains the estimate, within [0, 1].
    return p, max(0.0, min(float(low), p)), min(1.0, max(float(high), p)), n_eff


def nanmean_columns(x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=0)


def gap(x: np.ndarray) -> float:
    """max - min over groups of the column means (the FairMed-VLM gap definition)."""
    means = nanmean_columns(x)
    means = means[~np.isnan(means)]
    return float(means.max() - means.min()) if len(means) else float("nan")


def _group_means(values: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """values (..., cases, variants) with NaN = invalid; onehot (variants, groups) -> (..., groups):
    per case the mean of each group's valid variants, then the mean over cases."""
    ok = np.isfinite(values)
    sums = np.einsum("...nv,vg->...ng", np.where(ok, values, 0.0), onehot)
    counts = np.einsum("...nv,vg->...ng", ok.astype(float), onehot)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_case = sums / np.where(counts > 0, counts, np.nan)
        return np.nanmean(per_case, axis=-2)


def _ranges(means: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmax(means, axis=-1) - np.nanmin(means, axis=-1)


def gap_inference(values: np.ndarray, labels: list[int] | np.ndarray, n_groups: int, rng: np.random.Generator,
                  n_resamples: int = 2000, alpha: float = 0.05, with_ci: bool = True,
                  max_gap: float | None = None) -> dict:
    """Inference for the max - min gap of group means, from the per-variant values of each case.

    ``values``: cases x variants (NaN = no valid answer), ``labels[v]``: the group of variant v.
    The gap is the range over groups of (mean over cases of the case's group mean).

    - Null: group labels are shuffled within each case (the variants of a case are exchangeable
      when the group has no effect); ``p_value`` = (1 + #{null gap >= observed}) / (1 + B),
      ``null_mean`` and ``null_q95`` are the noise-only level of the gap.
    - Interval: simultaneous bootstrap over cases. c = 95th percentile of the resampled range of the
      centred group means, max_g,h |(m*_g - m_g) - (m*_h - m_h)|, so every pairwise difference lies in
      d_gh +- c together and the gap in [gap - c, gap + c] (coverage checked by simulation,
      tests/test_planted_bias.py). The lower end is 0 unless the permutation test rejects at ``alpha``,
      so the interval excludes 0 no more often than alpha when there is no effect. No test when no
      shuffle changes the gap (e.g. no variation within cases), no interval when no resample changes
      the group differences (it would have zero width); ``note`` says which. The upper end is
      clipped to ``max_gap``, the largest gap the values' domain allows (1 for rates and probabilities):
      a gap of 0.78 + c must not read as a rate difference above 1.
    """
    values = np.asarray(values, dtype=float)
    labels = np.asarray(labels, dtype=int)
    onehot = np.eye(n_groups)[labels]
    n, v = values.shape
    means = _group_means(values, onehot)
    point = float(_ranges(means)) if np.isfinite(means).sum() >= 2 else float("nan")
    out = {"value": point, "ci_low": None, "ci_high": None, "p_value": None, "null_mean": None, "null_q95": None, "note": ""}
    if not math.isfinite(point) or n < 2:
        out["note"] = "fewer than 2 cases"
        return out
    if no_variation(values):
        out["note"] = "no variation: every value is the same, so there is nothing to test"
        return out
    B = int(n_resamples)
    order = rng.permuted(np.broadcast_to(np.arange(v), (B, n, v)), axis=2)
    shuffled = np.take_along_axis(np.broadcast_to(values, (B, n, v)), order, axis=2)
    null = _ranges(_group_means(shuffled, onehot))
    null = null[np.isfinite(null)]
    tol = TOLERANCE * max(1.0, abs(point))
    p = None
    if len(null) == 0 or no_variation(np.append(null, point)):
        # E.g. every case gives the same decision to all its variants: no shuffle can change the gap,
        # so the permutation p would be a placeholder 1. Not a test (left out of the family).
        out["note"] = "no variation under shuffling: every shuffle of the group labels within cases gives the same gap, so the permutation test cannot tell an effect from noise"
    else:
        p = (1 + int(np.sum(null >= point - tol))) / (1 + len(null))
        out.update(p_value=p, null_mean=float(null.mean()), null_q95=float(np.quantile(null, 0.95)))
    if with_ci:
        idx = rng.integers(0, n, (B, n))
        boot = _group_means(values[idx], onehot) - means
        c = float(np.quantile(_ranges(boot)[np.isfinite(_ranges(boot))], CONFIDENCE))
        if c <= tol:  # every resample of cases gives the same group differences: no zero-width interval
            out["note"] = out["note"] or "no variation: every resample of cases gives the same gap"
            return out
        out["ci_high"] = point + c if max_gap is None else min(point + c, float(max_gap))
        out["ci_low_if_rejected"] = max(0.0, point - c)
        out["ci_low"] = out["ci_low_if_rejected"] if p is not None and p < alpha else 0.0
    return out


GAP_DISAGREES = ("the permutation test rejects, but the bootstrap interval of the gap reaches 0: the two are different "
                 "procedures (a test of max - min against its within-group-label null; an interval for the gap's size)")


def settle_gaps(gap_tests: list[tuple[dict, TestResult, float | None]]) -> None:
    """After the run's correction, in place: each gap estimate gets its test's ``p_adjusted`` and
    ``significant``, and its interval's lower end is 0 unless the *corrected* test rejects (before the
    correction, :func:`gap_inference` used the raw p, so a gap could exclude 0 beside a verdict of
    "no effect found"). Where the test rejects and the interval still reaches 0, ``note`` says why."""
    for est, test, low in gap_tests:
        est["p_adjusted"] = num(test.p_adjusted)
        est["significant"] = test.significant
        if est.get("ci_high") is None:
            continue
        if test.significant:
            est["ci_low"] = num(low) if low is not None else est.get("ci_low")
            if not (est["ci_low"] or 0) > 0:
                est["note"] = GAP_DISAGREES
        else:
            est["ci_low"] = 0.0


@dataclass
class TestResult:
    """One test. ``p_value is None`` means *not applicable* (``note`` says why): it is listed, never
    counted in the multiple-testing family."""

    name: str  # e.g. "cochran_q", "friedman"
    target: str  # what was tested, e.g. "treat/race/decision"
    statistic: float | None
    p_value: float | None
    paired: bool
    n: int  # blocks (paired) or observations (unpaired)
    note: str = ""
    p_adjusted: float | None = None
    significant: bool | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.p_value is not None and not math.isfinite(float(self.p_value)):
            self.p_value, self.statistic = None, None
            self.note = self.note or "the test returned no p-value (degenerate data)"

    @property
    def applicable(self) -> bool:
        return self.p_value is not None

    def as_dict(self) -> dict:
        return {
            "test": self.name,
            "target": self.target,
            "statistic": num(self.statistic),
            "p_value": num(self.p_value),
            "p_adjusted": num(self.p_adjusted),
            "significant": self.significant,
            "applicable": self.applicable,
            "paired": self.paired,
            "n": self.n,
            "note": self.note,
            # A contrast of a max-T family: its family and the p-value it brings to the correction.
            **({"family": self.extra["family"], "p_maxt": num(self.extra.get("p_maxt"))} if self.extra.get("family") else {}),
        }


def not_applicable(name: str, target: str, paired: bool, n: int, reason: str) -> TestResult:
    return TestResult(name, target, None, None, paired, n, reason)


def paired_decision_test(blocks: np.ndarray, target: str) -> TestResult:
    """Decisions (0/1), rows = blocks (a case with the other attributes fixed), columns = groups.
    Two groups: exact McNemar. More: Cochran's Q. No discordant block: not applicable."""
    blocks = np.asarray(blocks, dtype=float)
    n, k = blocks.shape
    name = "mcnemar" if k == 2 else "cochran_q"
    if n < 2:
        return not_applicable(name, target, True, n, "fewer than 2 complete blocks")
    if all(no_variation(row) for row in blocks):
        return not_applicable(name, target, True, n, "no variation: no discordant blocks")
    if k == 2:
        a, b = blocks[:, 0].astype(bool), blocks[:, 1].astype(bool)
        table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
        res = mcnemar(table, exact=True)
        return TestResult(name, target, float(res.statistic), float(res.pvalue), True, n)
    res = cochrans_q(blocks.astype(int))
    return TestResult(name, target, float(res.statistic), float(res.pvalue), True, n)


def paired_continuous_test(blocks: np.ndarray, target: str) -> TestResult:
    """Probabilities or scores, rows = blocks, columns = groups. Two groups: Wilcoxon signed-rank.
    More: Friedman. No within-block differences: not applicable."""
    blocks = np.asarray(blocks, dtype=float)
    n, k = blocks.shape
    name = "wilcoxon" if k == 2 else "friedman"
    if n < 2:
        return not_applicable(name, target, True, n, "fewer than 2 complete blocks")
    if all(no_variation(row) for row in blocks):
        return not_applicable(name, target, True, n, "no variation: no within-block differences")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if k == 2:
            res = sps.wilcoxon(blocks[:, 0], blocks[:, 1], zero_method="wilcox")
        else:
            res = sps.friedmanchisquare(*blocks.T)
    return TestResult(name, target, float(res.statistic), float(res.pvalue), True, n)


def welch_anova(groups: list[np.ndarray], target: str, names: list[str] | None = None) -> TestResult:
    """Welch's ANOVA on outcomes by group (unpaired; the seed paper's test, reported for comparison).
    Not applicable when a group is empty or has fewer than 2 values, or when a group's values do not
    vary (Welch weights each group by n / variance: a zero variance leaves it undefined)."""
    groups = [np.asarray(g, dtype=float) for g in groups]
    names = names or [str(i) for i in range(len(groups))]
    n = sum(len(g) for g in groups)
    empty = [nm for nm, g in zip(names, groups) if len(g) == 0]
    if empty:
        return not_applicable("welch_anova", target, False, n, f"unmeasurable group(s) without valid answers: {', '.join(empty)}")
    if len(groups) < 2 or any(len(g) < 2 for g in groups):
        return not_applicable("welch_anova", target, False, n, "a group has fewer than 2 values")
    flat = [nm for nm, g in zip(names, groups) if no_variation(g)]
    if flat:
        return not_applicable("welch_anova", target, False, n, f"no variation within group(s) {', '.join(flat)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = anova_oneway(groups, use_var="unequal")
    return TestResult("welch_anova", target, float(res.statistic), float(res.pvalue), False, n)


def chi_square(counts: np.ndarray, target: str, names: list[str] | None = None) -> TestResult:
    """Pearson's chi-square test of independence on a groups x outcomes count table (unpaired; seed
    paper), without continuity correction for every table size (one rule; Yates' correction is not
    applied to 2x2 tables either). Not applicable when a group has no observations (it cannot be
    measured) or only one outcome occurs."""
    counts = np.asarray(counts, dtype=float)
    names = names or [str(i) for i in range(counts.shape[0])]
    n = int(counts.sum())
    empty = [nm for nm, row in zip(names, counts) if row.sum() == 0]
    if empty:
        return not_applicable("chi_square", target, False, n, f"unmeasurable group(s) without valid answers: {', '.join(empty)}")
    counts = counts[:, counts.sum(axis=0) > 0]
    if counts.shape[0] < 2:
        return not_applicable("chi_square", target, False, n, "fewer than 2 groups")
    if counts.shape[1] < 2:
        return not_applicable("chi_square", target, False, n, "no variation: a single outcome observed")
    res = sps.chi2_contingency(counts, correction=False)
    note = "an expected count is below 5: the chi-square approximation is rough" if (res.expected_freq < 5).any() else ""
    return TestResult("chi_square", target, float(res.statistic), float(res.pvalue), False, n, note)


# Comparisons of p-values with levels allow for float rounding of p * r (e.g. 0.025 * 2 vs 0.05).
_LEVEL_TOL = 1e-12


def _family_p(t: TestResult) -> float:
    """The p-value a test brings to the run's family: a contrast of a max-T family brings its
    single-step max-T p-value (``extra["p_maxt"]``), every other test its own p-value."""
    return float(t.extra["p_maxt"]) if t.extra.get("family") else float(t.p_value)


def grouped_holm(p: np.ndarray, family: list) -> tuple[np.ndarray, float]:
    """Holm's step-down over *entries*, where the hypotheses sharing a ``family`` label (the contrasts
    of one attribute, each with its single-step max-T p-value) count as one entry until every one of
    them is rejected; a label of None is an entry of its own. Returns (adjusted p-values, r_i in ascending-p
    order, that order).

    With p sorted ascending, r_i = the number of distinct entries among hypotheses i..N, the adjusted
    p of the i-th is min(1, max_{j <= i} r_j p_(j)) (Holm 1979 when every entry is a single test).
    This is the shortcut of the closed test whose local test of an intersection is Bonferroni over the
    entries it touches, each entry tested by its max-T statistic (Westfall & Young 1993, ch. 2 and 4;
    checked against the brute-force closure in tests/test_simultaneous_contrasts.py). Rejected =
    exactly the hypotheses whose p <= beta, beta = alpha / r_s at the first step s that fails (alpha
    when all are rejected; :func:`correct_with_level`): one level at which simultaneous intervals
    agree with the tests."""
    p = np.asarray(p, dtype=float)
    n = len(p)
    order = np.argsort(p, kind="stable")
    keys = [("single", i) if family[i] is None else ("family", family[i]) for i in range(n)]
    r = np.empty(n)
    seen: set = set()
    for pos in range(n - 1, -1, -1):  # distinct entries among the hypotheses from here to the end
        seen.add(keys[order[pos]])
        r[pos] = len(seen)
    adjusted_sorted = np.minimum(1.0, np.maximum.accumulate(r * p[order]))
    adjusted = np.empty(n)
    adjusted[order] = adjusted_sorted
    return adjusted, r, order


def correct_with_level(tests: list[TestResult], method: str = "holm", alpha: float = 0.05) -> tuple[int, float | None]:
    """:func:`correct`, also returning the level beta of the procedure: a test is significant exactly
    when the p-value it brings to the family (:func:`_family_p`) is <= beta. ``holm``: the grouped
    Holm step-down (:func:`grouped_holm`); ``fdr_bh``: Benjamini–Hochberg (statsmodels) over the same
    p-values, each contrast an entry of its own, beta = k alpha / m. Returns (number of entries,
    beta); beta is None without applicable tests."""
    idx = [i for i, t in enumerate(tests) if t.applicable]
    if not idx:
        return 0, None
    p = np.array([_family_p(tests[i]) for i in idx])
    if method == "holm":
        family = [tests[i].extra.get("family") for i in idx]
        adjusted, r, order = grouped_holm(p, family)
        reject = adjusted <= alpha * (1 + _LEVEL_TOL)
        fails = [pos for pos in range(len(idx)) if not reject[order[pos]]]
        beta = alpha / r[fails[0]] if fails else alpha
        n_entries = int(r[0])
    else:
        reject, adjusted, _, _ = multipletests(p, alpha=alpha, method=method)
        m = len(idx)
        k = int(np.sum(reject))
        beta = alpha * max(k, 1) / m if k else alpha / m
        n_entries = m
    for i, rej, adj in zip(idx, reject, adjusted):
        tests[i].p_adjusted = float(adj)
        tests[i].significant = bool(rej)
    return n_entries, float(beta)


def correct(tests: list[TestResult], method: str = "holm", alpha: float = 0.05) -> int:
    """Adjust the p-values of the applicable tests for multiplicity, in place (Holm: grouped as in
    :func:`grouped_holm`, which is plain Holm when no test belongs to a max-T family; other methods:
    statsmodels.multipletests); tests that were not applicable keep p_adjusted = None and
    significant = None. Returns the family size (entries)."""
    return correct_with_level(tests, method, alpha)[0]


def _signs(n: int, n_resamples: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Sign vectors (draws x cases) of a sign-flip test. All 2^n of them (exhaustive, exact) when
    2^n <= n_resamples, in the order of the binary numbers 0..2^n - 1 (bit i of b = 1: case i flipped);
    else ``rng.choice([-1.0, 1.0], size=(n_resamples, n))`` (numpy Generator, one call)."""
    if n <= 30 and 2 ** n <= n_resamples:
        bits = (np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1
        return 1.0 - 2.0 * bits, True
    return rng.choice([-1.0, 1.0], size=(int(n_resamples), n)), False


def _t_stats(signs: np.ndarray, diffs: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """One-sample t statistics of the sign-flipped case differences: (draws x cases) @ (cases x
    contrasts) -> draws x contrasts. The sum of squares does not change under a sign flip, so each
    draw costs one matrix product."""
    x = np.where(ok, diffs, 0.0)
    n = ok.sum(axis=0).astype(float)
    mean = (signs @ x) / n
    ss = (x * x).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.maximum(ss - n * mean * mean, 0.0) / (n - 1)
        return mean / np.sqrt(var / n)


def signflip_maxt(diffs: np.ndarray, rng: np.random.Generator, n_resamples: int = 2000) -> dict:
    """Paired sign-flip tests of K contrasts on the same cases, with the max-|t| statistic.

    ``diffs``: cases x K case-level differences (e.g. outcome(value) - outcome(reference), the mean
    over the case's blocks), NaN where a case lacks the contrast. Per contrast the estimate is the mean
    difference, ``se`` = sd / sqrt(n) (ddof 1) and t = estimate / se. Under the null of no effect the
    differences of a case are symmetric about 0 (Pesarin 2001; the two variants of each difference
    are exchangeable), so flipping the sign of a case's whole row of differences (one sign per case,
    all contrasts together, keeping their correlation) gives the null distribution of
    M = max_k |t_k| (Westfall & Young 1993, the single-step max-T procedure):

    - ``p_unadjusted[k]`` = (a + #{|t*_k| >= |t_k|}) / (a + B), the marginal sign-flip t-test;
    - ``p_maxt[k]`` = (a + #{M* >= |t_k|}) / (a + B), adjusted over the K contrasts,

    a = 1, B = ``n_resamples`` random sign vectors (:func:`_signs`), or a = 0 and every sign vector
    when 2^n <= n_resamples (exact). A contrast whose differences do not vary (se 0) is not
    applicable: ``applicable[k]`` False, no t, no p. Returns estimate, se, t, n, the null M (``null``),
    ``a``, ``exhaustive``, p_unadjusted, p_maxt, applicable."""
    diffs = np.atleast_2d(np.asarray(diffs, dtype=float))
    ok = np.isfinite(diffs)
    n = ok.sum(axis=0)
    K = diffs.shape[1]
    est = np.array([diffs[ok[:, k], k].mean() if n[k] else np.nan for k in range(K)])
    sd = np.array([diffs[ok[:, k], k].std(ddof=1) if n[k] >= 2 else np.nan for k in range(K)])
    se = sd / np.sqrt(np.maximum(n, 1))
    # dtype=bool: with K = 0 (every contrast unmeasurable) an empty list would be float and & would fail.
    applicable = (n >= 2) & np.isfinite(se) & np.array([not no_variation(diffs[ok[:, k], k]) for k in range(K)], dtype=bool)
    t = np.where(applicable, est / np.where(applicable, se, 1.0), np.nan)
    out = {"estimate": est, "se": np.where(applicable, se, np.nan), "t": t, "n": n, "applicable": applicable,
           "p_unadjusted": np.full(K, np.nan), "p_maxt": np.full(K, np.nan), "null": np.array([]), "a": 1, "exhaustive": False}
    if not applicable.any():
        return out
    cases = ok[:, applicable].any(axis=1)  # cases that carry at least one applicable contrast
    signs, exhaustive = _signs(int(cases.sum()), n_resamples, rng)
    tstar = np.abs(_t_stats(signs, diffs[cases][:, applicable], ok[cases][:, applicable]))
    tstar = np.where(np.isnan(tstar), 0.0, tstar)  # 0/0: a draw whose flipped differences are all 0
    null = tstar.max(axis=1)
    a = 0 if exhaustive else 1
    obs = np.abs(t[applicable])
    tol = TOLERANCE * np.maximum(1.0, obs)
    out["p_unadjusted"][applicable] = (a + (tstar >= obs - tol).sum(axis=0)) / (a + len(null))
    out["p_maxt"][applicable] = (a + (null[:, None] >= obs - tol).sum(axis=0)) / (a + len(null))
    out.update(null=null, a=a, exhaustive=exhaustive)
    return out


def maxt_critical(null: np.ndarray, a: int, beta: float) -> float:
    """The critical value c of the max-T family at level ``beta``: |t_k| > c exactly when
    p_maxt[k] = (a + #{M* >= |t_k| - tol}) / (a + B) <= beta, so the interval estimate +- c se
    excludes 0 exactly when the test rejects. c = the (m + 1)-th largest null draw (+ the tie
    tolerance), m = floor(beta (a + B)) - a; inf when m < 0 (too few draws for a test at beta)."""
    B = len(null)
    m = int(math.floor(beta * (a + B) * (1 + _LEVEL_TOL))) - a
    if m < 0:
        return math.inf
    if m >= B:
        return 0.0
    c = float(np.sort(null)[::-1][m])
    return c + TOLERANCE * max(1.0, c)


def correction_summary(tests: list[TestResult], method: str, alpha: float) -> dict:
    """What results.json records about the family: its size and every test left out, with the reason."""
    return {
        "method": method,
        "alpha": alpha,
        "n_tests": sum(t.applicable for t in tests),
        "not_applicable": [{"test": t.name, "target": t.target, "reason": t.note} for t in tests if not t.applicable],
    }


def paired_proportion_difference(table) -> tuple[float, float | None, float | None]:
    """Difference p1 - p2 of two paired proportions with Newcombe's hybrid score 95% interval.

    ``table``: 2x2 counts of pairs [[both 1, 1 then 0], [0 then 1, both 0]] (statsmodels' McNemar
    layout), so p1 = (a + b) / n and p2 = (a + c) / n. Newcombe (1998), "Improved confidence intervals
    for the difference between binomial proportions based on paired data", Stat Med 17:2635, method 10:
    the Wilson limits (l, u) of each proportion combined with the phi correlation of the pairs,
    L = d - sqrt((p1 - l1)^2 - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)^2), U likewise; phi uses
    Newcombe's correction max(ad - bc - n/2, 0) when ad > bc, and is 0 when a margin is empty. Recommended by Fagerland, Lydersen & Laake (2014, Stat Med 33:2850) and valid at
    the edges (no discordant pair gives a non-degenerate interval). Written by hand because
    statsmodels offers it only for independent samples (``confint_proportions_2indep``).
    Returns (difference, low, high); (nan, None, None) without pairs."""
    (a, b), (c, d) = np.asarray(table, dtype=float)
    n = a + b + c + d
    if n == 0:
        return float("nan"), None, None
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = proportion_confint(a + b, n, alpha=1 - CONFIDENCE, method="wilson")
    l2, u2 = proportion_confint(a + c, n, alpha=1 - CONFIDENCE, method="wilson")
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    # Newcombe's corrected phi: with ad > bc, max(ad - bc - n/2, 0) in the numerator, which keeps the
    # interval from collapsing when there are no or few discordant pairs.
    cross = a * d - b * c
    if cross > 0:
        cross = max(cross - n / 2, 0.0)
    phi = cross / math.sqrt(margins) if margins > 0 else 0.0
    diff = p1 - p2
    low = diff - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = diff + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return diff, max(-1.0, low), min(1.0, high)


def mcnemar_exact_power(n: int, p10: float, p01: float, alpha: float = 0.05) -> float:
    """Power of the two-sided exact McNemar test (statsmodels ``mcnemar(exact=True)``: a binomial test
    of b among the m = b + c discordant pairs) for ``n`` pairs whose discordant cells have
    probabilities ``p10`` and ``p01``. Exact: m ~ Binomial(n, p10 + p01) and, given m,
    b ~ Binomial(m, p10 / (p10 + p01)); the rejection region of each m is the one the test uses
    (two-sided p = min(1, 2 P(X <= min(b, c))) under Binomial(m, 1/2)). Computed with scipy.stats."""
    psi = p10 + p01
    if psi <= 0:
        return 0.0
    share = p10 / psi
    power = 0.0
    for m in range(1, n + 1):
        w = sps.binom.pmf(m, n, psi)
        if w < 1e-15:
            continue
        ks = np.arange(m + 1)
        pvals = np.minimum(1.0, 2 * sps.binom.cdf(np.minimum(ks, m - ks), m, 0.5))
        power += w * float(sps.binom.pmf(ks[pvals <= alpha], m, share).sum())
    return float(power)


def mcnemar_detectable_difference(n: int, discordance: float, alpha: float = 0.05, power: float = 0.80) -> dict:
    """The smallest paired difference |p10 - p01| (e.g. an accuracy gap between the two variants of
    the same question) that the exact McNemar test detects with ``power`` at two-sided ``alpha``,
    for ``n`` pairs of which a share ``discordance`` = p10 + p01 is discordant (assumed fixed).

    ``connor``: the normal approximation of Connor (1987), Biometrics 43:207,
    n = (z_{1-a/2} sqrt(psi) + z_{power} sqrt(psi - delta^2))^2 / delta^2, solved for delta (scipy
    ``brentq``); ``exact``: the smallest delta (bisection to 1e-4) whose exact power
    (:func:`mcnemar_exact_power`) reaches ``power``."""
    from scipy.optimize import brentq

    psi = float(discordance)
    za, zb = sps.norm.ppf(1 - alpha / 2), sps.norm.ppf(power)

    def needed(delta):
        return (za * math.sqrt(psi) + zb * math.sqrt(max(psi - delta * delta, 0.0))) ** 2 / delta ** 2 - n

    connor = brentq(needed, 1e-6, psi) if needed(psi) < 0 else float("nan")
    exact = float("nan")
    if mcnemar_exact_power(n, psi, 0.0, alpha) >= power:
        lo, hi = 0.0, psi  # exact power grows with delta at fixed psi: bisect to 1e-4
        while hi - lo > 1e-4:
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if mcnemar_exact_power(n, (psi + mid) / 2, (psi - mid) / 2, alpha) >= power else (mid, hi)
        exact = hi
    return {"n": n, "discordance": psi, "alpha": alpha, "power": power, "connor": connor, "exact": exact}


def t_mde(c: float, df: int, power: float = 0.80) -> float:
    """The noncentrality lambda at which a two-sided t test with critical value ``c`` and ``df`` degrees
    of freedom rejects with probability ``power``: P(T > c) + P(T < -c) = power, T ~ noncentral t(df,
    lambda) (scipy.stats.nct; solved with brentq). The minimum detectable effect is lambda * se."""
    from scipy.optimize import brentq

    def gap(lam):
        # The lower tail underflows to NaN for a large lambda, where it is 0.
        return float(sps.nct.sf(c, df, lam) + np.nan_to_num(sps.nct.cdf(-c, df, lam))) - power

    hi = c + 10.0
    while gap(hi) < 0 and hi < 1e6:
        hi *= 2
    return float(brentq(gap, 0.0, hi)) if gap(0.0) < 0 else 0.0
