"""Statistics shared by the audits: bootstrap CIs over cases, paired and unpaired tests, and
multiple-testing correction. Thin wrappers over scipy.stats and statsmodels that fix the
conventions (seeded, degenerate inputs handled, results as plain dicts)."""

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

CONFIDENCE = 0.95


def r6(x: float | None) -> float | None:
    """6 significant digits, None for NaN/inf: stable, readable JSON."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    return float(f"{x:.6g}")


def estimate(value: float, low: float | None, high: float | None, n: int, **extra) -> dict:
    return {"value": r6(value), "ci_low": r6(low), "ci_high": r6(high), "n": int(n), **extra}


def bootstrap_ci(
    data: np.ndarray,
    statistic: Callable[[np.ndarray], float],
    rng: np.random.Generator,
    n_boot: int = 2000,
) -> tuple[float, float | None, float | None]:
    """Point estimate and 95% CI, resampling rows of ``data`` (rows are cases: a paired bootstrap
    when columns are variants of the same case). BCa, falling back to percentile when BCa is
    undefined (e.g. a degenerate jackknife)."""
    data = np.asarray(data, dtype=float)
    point = float(statistic(data))
    if len(data) < 2 or not math.isfinite(point):
        return point, None, None
    if np.allclose(data[~np.isnan(data)], data[~np.isnan(data)].flat[0]) if np.any(~np.isnan(data)) else True:
        return point, point, point  # no variation: every resample gives the point estimate
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
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return point, low, high
    return point, None, None


def nanmean_columns(x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=0)


def gap(x: np.ndarray) -> float:
    """max - min over groups of the column means (the FairMed-VLM gap definition)."""
    means = nanmean_columns(x)
    means = means[~np.isnan(means)]
    return float(means.max() - means.min()) if len(means) else float("nan")


@dataclass
class TestResult:
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

    def as_dict(self) -> dict:
        return {
            "test": self.name,
            "target": self.target,
            "statistic": r6(self.statistic),
            "p_value": r6(self.p_value),
            "p_adjusted": r6(self.p_adjusted),
            "significant": self.significant,
            "paired": self.paired,
            "n": self.n,
            "note": self.note,
        }


def _constant(x: np.ndarray) -> bool:
    return bool(np.all(x == x.flat[0])) if x.size else True


def paired_decision_test(blocks: np.ndarray, target: str) -> TestResult:
    """Decisions (0/1), rows = blocks (a case with the other attributes fixed), columns = groups.
    Two groups: exact McNemar. More: Cochran's Q."""
    blocks = np.asarray(blocks, dtype=float)
    n, k = blocks.shape
    name = "mcnemar" if k == 2 else "cochran_q"
    if n < 2:
        return TestResult(name, target, None, None, True, n, "fewer than 2 complete blocks")
    if _constant(blocks) or all(_constant(row) for row in blocks):
        return TestResult(name, target, 0.0, 1.0, True, n, "no discordant blocks")
    if k == 2:
        a, b = blocks[:, 0].astype(bool), blocks[:, 1].astype(bool)
        table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
        res = mcnemar(table, exact=True)
        return TestResult(name, target, float(res.statistic), float(res.pvalue), True, n)
    res = cochrans_q(blocks.astype(int))
    return TestResult(name, target, float(res.statistic), float(res.pvalue), True, n)


def paired_continuous_test(blocks: np.ndarray, target: str) -> TestResult:
    """Probabilities or scores, rows = blocks, columns = groups. Two groups: Wilcoxon signed-rank.
    More: Friedman."""
    blocks = np.asarray(blocks, dtype=float)
    n, k = blocks.shape
    name = "wilcoxon" if k == 2 else "friedman"
    if n < 2:
        return TestResult(name, target, None, None, True, n, "fewer than 2 complete blocks")
    if all(_constant(row) for row in blocks):
        return TestResult(name, target, 0.0, 1.0, True, n, "no within-block differences")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if k == 2:
            res = sps.wilcoxon(blocks[:, 0], blocks[:, 1], zero_method="wilcox")
        else:
            res = sps.friedmanchisquare(*blocks.T)
    return TestResult(name, target, float(res.statistic), float(res.pvalue), True, n)


def welch_anova(groups: list[np.ndarray], target: str) -> TestResult:
    """Welch's ANOVA on outcomes by group (unpaired; the seed paper's test, reported for comparison)."""
    groups = [np.asarray(g, dtype=float) for g in groups if len(g) > 0]
    n = sum(len(g) for g in groups)
    if len(groups) < 2 or any(len(g) < 2 for g in groups):
        return TestResult("welch_anova", target, None, None, False, n, "a group has fewer than 2 values")
    if all(np.var(g) == 0 for g in groups):
        same = len({float(g[0]) for g in groups}) == 1
        return TestResult("welch_anova", target, 0.0 if same else None, 1.0 if same else None, False, n, "zero variance")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = anova_oneway(groups, use_var="unequal")
    return TestResult("welch_anova", target, float(res.statistic), float(res.pvalue), False, n)


def chi_square(counts: np.ndarray, target: str) -> TestResult:
    """Chi-square test of independence on a groups x outcomes count table (unpaired; seed paper)."""
    counts = np.asarray(counts, dtype=float)
    counts = counts[:, counts.sum(axis=0) > 0]
    n = int(counts.sum())
    if counts.shape[1] < 2 or counts.shape[0] < 2:
        return TestResult("chi_square", target, 0.0, 1.0, False, n, "a single outcome observed")
    res = sps.chi2_contingency(counts)
    return TestResult("chi_square", target, float(res.statistic), float(res.pvalue), False, n)


def correct(tests: list[TestResult], method: str = "holm", alpha: float = 0.05) -> None:
    """Adjust every test's p-value for multiplicity, in place (statsmodels.multipletests)."""
    idx = [i for i, t in enumerate(tests) if t.p_value is not None]
    if not idx:
        return
    reject, adjusted, _, _ = multipletests([tests[i].p_value for i in idx], alpha=alpha, method=method)
    for i, rej, adj in zip(idx, reject, adjusted):
        tests[i].p_adjusted = float(adj)
        tests[i].significant = bool(rej)
