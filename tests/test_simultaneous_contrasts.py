"""Issue 23: every contrast interval shown beside a verdict is simultaneous over its family at the
run's correction level, so it excludes 0 exactly when the contrast's test is significant.

- the grouped Holm step-down equals the brute-force closure of its local tests;
- the sign-flip max-T p-values equal scipy's exact permutation test;
- interval excludes 0 <=> test significant, on the audit itself;
- no planted effect, 200 seeded repetitions of a Q-Pain-sized design (50 cases x 4 races x 2
  genders): the share of runs where any displayed interval excludes 0 or any test rejects is at most
  alpha + 0.03, and the same check FAILS with the marginal intervals;
- a 5-point shift on one group over 55 cases is found with power >= 0.8.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as sps

from benchmark.audits import stats
from benchmark.audits.counterfactual import CounterfactualAudit
from benchmark.cards import load_task
from test_planted_bias import planted_backend  # noqa: F401 (fixture)
from test_statistics_edges import frame

ALPHA = 0.05


def _closure(p: np.ndarray, family: list, alpha: float) -> np.ndarray:
    """Brute-force closed testing: H_I rejected when some entry g touched by I has
    min_{k in I, k in g} p_k <= alpha / #entries(I); h rejected when every I containing h is."""
    n = len(p)
    key = [("s", i) if family[i] is None else ("f", family[i]) for i in range(n)]
    local = {}
    for size in range(1, n + 1):
        for I in itertools.combinations(range(n), size):
            entries = {key[i] for i in I}
            local[I] = any(min(p[i] for i in I if key[i] == e) <= alpha / len(entries) for e in entries)
    return np.array([all(rej for I, rej in local.items() if h in I) for h in range(n)])


def test_grouped_holm_is_the_closure_of_its_local_tests():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(2, 7))
        p = np.where(rng.random(n) < 0.5, rng.random(n) * 0.03, rng.random(n))
        family = [None if f == 0 else f for f in rng.integers(0, 3, n)]
        adjusted, _, _ = stats.grouped_holm(p, family)
        assert np.array_equal(adjusted <= ALPHA, _closure(p, family, ALPHA)), (p, family)


def test_holm_level_is_the_rejection_threshold():
    """Significant exactly when the family p-value is <= beta (the level the intervals use)."""
    rng = np.random.default_rng(1)
    for _ in range(200):
        p = rng.random(8) ** 3
        tests = [stats.TestResult("t", f"x{i}", 1.0, float(q), True, 10,
                                  extra={"family": "f", "p_maxt": float(q)} if i < 3 else {}) for i, q in enumerate(p)]
        _, beta = stats.correct_with_level(tests, "holm", ALPHA)
        assert [t.significant for t in tests] == [bool(q <= beta) for q in p]


def test_signflip_pvalues_match_scipy_exact_permutation_test():
    """Few cases: every sign vector (exact); the marginal p equals scipy.stats.permutation_test with
    sign flips of the paired differences and the |t| statistic."""
    rng = np.random.default_rng(2)
    d = rng.normal(0.3, 1.0, (9, 2))
    res = stats.signflip_maxt(d, np.random.default_rng(0), n_resamples=2000)
    assert res["exhaustive"] and len(res["null"]) == 2 ** 9
    for k in range(2):
        t_abs = lambda x, axis=-1: np.abs(np.mean(x, axis=axis) / (np.std(x, axis=axis, ddof=1) / np.sqrt(x.shape[axis])))  # noqa: E731
        ref = sps.permutation_test((d[:, k],), t_abs, permutation_type="samples", alternative="greater", n_resamples=np.inf)
        assert res["p_unadjusted"][k] == pytest.approx(ref.pvalue, rel=1e-12)
        assert res["t"][k] == pytest.approx(sps.ttest_1samp(d[:, k], 0).statistic)
    assert np.all(res["p_maxt"] >= res["p_unadjusted"])


def _excludes(est: dict) -> bool:
    return est["ci_low"] > 0 or est["ci_high"] < 0


@pytest.fixture(scope="module")
def card():
    c = load_task("qpain-demo")
    return c.model_copy(update={"audit": c.audit.model_copy(update={"n_boot": 500})})


@pytest.mark.parametrize("shift", [0.0, -0.03, -0.08])
def test_audit_interval_excludes_zero_exactly_when_the_contrast_is_significant(card, shift):
    for seed in range(4):
        res = CounterfactualAudit(card, seed=seed, with_ci=False).run(frame(np.random.default_rng(100 + seed), n_cases=30, shift=shift))
        level = res["correction"]["level"]
        for attr in ("race", "gender"):
            for est in res["questions"]["treat"]["attributes"][attr]["delta_vs_reference"].values():
                assert est["confidence"] == pytest.approx(1 - level)
                assert _excludes(est) == est["significant"] == (est["p_adjusted"] <= ALPHA), est
        # Gap intervals follow the corrected test as well.
        for attr in ("race", "gender", "intersection"):
            for name in ("dp_gap", "outcome_gap"):
                gap = res["questions"]["treat"]["attributes"][attr][name]
                if gap.get("ci_low") is not None and gap["ci_low"] > 0:
                    assert gap["significant"]


# ----- simulation: the family of one question as the audit builds it, vectorised over cheap parts -----

RACE = np.repeat(np.arange(4), 2)  # variant v = (race, gender): Asian, Black, Hispanic, White x man, woman
GENDER = np.tile(np.arange(2), 4)


def _design(rng, n_cases: int, shift: float, request_sd: float = 0.05) -> np.ndarray:
    """cases x 8 P(yes): base(case) + shift for Black + request noise (tests/planted.py's model)."""
    base = 0.5 + 0.15 * rng.standard_normal((n_cases, 1))
    return np.clip(base + np.where(RACE == 1, shift, 0.0) + request_sd * rng.standard_normal((n_cases, 8)), 0.01, 0.99)


def _family(values: np.ndarray, rng, n_draws: int = 400) -> tuple[list, list]:
    """The audit's tests for one binary question (paired + unpaired + gap permutation tests +
    contrast families), with the same functions and block layouts as CounterfactualAudit; returns
    (tests, contrast families)."""
    n = len(values)
    dec = (values > 0.5).astype(float)
    tests, families = [], []
    for name, labels, k, ref in (("race", RACE, 4, 3), ("gender", GENDER, 2, 0)):
        other = GENDER if name == "race" else RACE
        blocks = np.stack([values[:, (labels == g)] for g in range(k)], axis=-1).reshape(-1, k)
        dblocks = np.stack([dec[:, (labels == g)] for g in range(k)], axis=-1).reshape(-1, k)
        tests += [stats.paired_continuous_test(blocks, name), stats.paired_decision_test(dblocks, name),
                  stats.welch_anova([values[:, labels == g].ravel() for g in range(k)], name),
                  stats.chi_square(np.array([[dec[:, labels == g].sum(), (1 - dec[:, labels == g]).sum()] for g in range(k)]), name)]
        for v in (values, dec):
            g = stats.gap_inference(v, labels, k, rng, n_resamples=200, with_ci=False)
            tests.append(stats.TestResult("permutation_gap", name, g["value"], g["p_value"], True, n))
        assert other is not None
        # Contrasts: per case, mean over blocks (the other attribute) of value - reference.
        means = np.stack([values[:, labels == g] for g in range(k)], axis=1)  # cases x k x blocks
        diffs = (means[:, [g for g in range(k) if g != ref]] - means[:, [ref]]).mean(axis=2)
        res = stats.signflip_maxt(diffs, rng, n_draws)
        members = []
        for j in range(diffs.shape[1]):
            t = stats.TestResult("signflip_t", f"{name}/{j}", res["t"][j], res["p_unadjusted"][j], True, n,
                                 extra={"family": name, "p_maxt": res["p_maxt"][j]})
            tests.append(t)
            members.append(t)
        families.append((res, members))
    inter = stats.paired_continuous_test(values, "intersection")
    tests += [inter, stats.paired_decision_test(dec, "intersection")]
    for v in (values, dec):
        g = stats.gap_inference(v, np.arange(8), 8, rng, n_resamples=200, with_ci=False)
        tests.append(stats.TestResult("permutation_gap", "intersection", g["value"], g["p_value"], True, n))
    return tests, families


def _flags(values: np.ndarray, rng, interval: str = "simultaneous") -> tuple[bool, bool]:
    """(any test rejects after the run's correction, any displayed contrast interval excludes 0)."""
    tests, families = _family(values, rng)
    _, beta = stats.correct_with_level(tests, "holm", ALPHA)
    excl = False
    for res, _members in families:
        if interval == "simultaneous":
            c = stats.maxt_critical(res["null"], res["a"], beta)
        else:  # the marginal 95% t interval, as shown before issue 23
            c = sps.t.ppf(0.975, res["n"] - 1)
        excl |= bool(np.any(np.abs(res["estimate"]) > c * res["se"]))
    return any(t.significant for t in tests), excl


def test_null_family_wise_rate_at_most_alpha_plus_003_and_fails_with_marginal_intervals():
    reps, hits, marginal = 200, 0, 0
    for seed in range(reps):
        values = _design(np.random.default_rng(70_000 + seed), 50, 0.0)
        rejects, excl = _flags(values, np.random.default_rng(seed))
        assert excl <= rejects  # a simultaneous interval never excludes 0 without its test
        hits += rejects or excl
        if seed < 100:
            r2, e2 = _flags(values, np.random.default_rng(seed), interval="marginal")
            marginal += r2 or e2
    rate = hits / reps
    print(f"null family-wise rate: simultaneous {rate:.3f}, marginal {marginal / 100:.3f}")
    assert rate <= ALPHA + 0.03, rate
    # The same check with the marginal intervals beside the verdict fails: the check can fail.
    assert marginal / 100 > ALPHA + 0.03, marginal


def test_power_for_a_five_point_shift_over_55_cases():
    """P(yes) of one group shifted by 0.05 over 55 cases (request sd 0.05): its contrast is significant
    after the run's correction (and its simultaneous interval excludes 0) in >= 80% of 100 runs."""
    reps, found = 100, 0
    for seed in range(reps):
        tests, families = _family(_design(np.random.default_rng(90_000 + seed), 55, -0.05), np.random.default_rng(seed))
        stats.correct_with_level(tests, "holm", ALPHA)
        found += bool(families[0][1][1].significant)  # race contrasts: Asian, Black, Hispanic vs White
    print(f"power at a 0.05 shift, 55 cases: {found / reps:.2f}")
    assert found / reps >= 0.8


# ----- item 5: recomputed without fairbench (numpy, hashlib, scipy, statsmodels only) -----

def _recompute_family(diffs: np.ndarray, seed_parts: list[str], n_draws: int, level: float):
    """The documented procedure (results.json ``contrast_families[].rng``), written from scratch."""
    import hashlib
    import math

    n, _ = diffs.shape
    if 2 ** n <= n_draws:
        bits = (np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1
        signs, a = 1.0 - 2.0 * bits, 0
    else:
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256("|".join(seed_parts).encode()).digest()[:8], "little"))
        signs, a = rng.choice([-1.0, 1.0], size=(n_draws, n)), 1
    est = diffs.mean(axis=0)
    se = diffs.std(axis=0, ddof=1) / math.sqrt(n)
    t = est / se
    flipped = signs[:, :, None] * diffs[None]
    tstar = np.abs(flipped.mean(axis=1) / (flipped.std(axis=1, ddof=1) / math.sqrt(n)))
    null = tstar.max(axis=1)
    p_unadj = (a + (tstar >= np.abs(t) - 1e-9).sum(axis=0)) / (a + len(null))
    p_maxt = (a + (null[:, None] >= np.abs(t) - 1e-9).sum(axis=0)) / (a + len(null))
    m = math.floor(level * (a + len(null)) * (1 + 1e-12)) - a
    c = np.sort(null)[::-1][m]
    return est, se, p_unadj, p_maxt, est - c * se, est + c * se


def _check_against_results(diffs_by_attr: dict, res_q: dict, families: list, seed: int, qid: str):
    fams = {f["family"]: f for f in families}
    for attr, (values, diffs) in diffs_by_attr.items():
        fam = fams[f"{qid}/{attr}/contrasts"]
        est, se, p_unadj, p_maxt, lo, hi = _recompute_family(diffs, [str(seed), qid, attr, "contrasts"], fam["n_draws"], fam["level"])
        for k, v in enumerate(values):
            got = res_q["attributes"][attr]["delta_vs_reference"][v]
            assert got["value"] == pytest.approx(est[k], rel=1e-9)
            assert got["se"] == pytest.approx(se[k], rel=1e-9)
            assert got["p_unadjusted"] == pytest.approx(p_unadj[k], abs=1e-12)
            assert got["p_maxt"] == pytest.approx(p_maxt[k], abs=1e-12)
            # The critical value is an order statistic of the same draws: equal up to float noise.
            assert got["ci_low"] == pytest.approx(lo[k], rel=1e-6, abs=1e-9)
            assert got["ci_high"] == pytest.approx(hi[k], rel=1e-6, abs=1e-9)


def _holm_level(tests: list[dict], alpha: float) -> float:
    """The grouped Holm level from the listed p-values (contrasts bring p_maxt, one entry per family)."""
    real = [t for t in tests if t["p_value"] is not None]
    p = np.array([t.get("p_maxt", t["p_value"]) for t in real])
    key = [t.get("family") or (t["target"], t["test"]) for t in real]
    order = np.argsort(p, kind="stable")
    r = np.array([len({key[j] for j in order[i:]}) for i in range(len(p))])
    ok = np.cumprod(r * p[order] <= alpha * (1 + 1e-12)).astype(bool)
    return alpha if ok.all() else alpha / r[np.argmin(ok)]


def test_contrasts_recomputed_from_requests_jsonl_without_fairbench(tmp_path, planted_backend):
    """A planted run (12 cases: every sign vector); from requests.jsonl alone: the case differences,
    the sign-flip p-values, the Holm level (from the listed p-values) and the simultaneous intervals."""
    import json

    import pandas as pd
    from benchmark.cli import main

    out = tmp_path / "runs"
    tasks = planted_backend.parent / "tasks"
    assert main(["run", "--model", "planted", "--task", "planted-demo", "--models-file", str(planted_backend),
                 "--tasks-dir", str(tasks), "-o", str(out), "-q"]) == 0
    run_dir = out / "planted__planted-demo__zero_shot__seed0"
    results = json.loads((run_dir / "results.json").read_text())
    cf = results["audits"]["counterfactual"]
    rows = [json.loads(x) for x in (run_dir / "requests.jsonl").read_text().splitlines()]
    df = pd.DataFrame([{**r["attributes"], "case_id": r["case_id"], "p": r["scored"]["outcome"]} for r in rows if r["scored"]["valid"]])
    diffs = {}
    for attr, other, values, ref in (("race", "gender", ["Asian", "Black", "Hispanic"], "White"), ("gender", "race", ["woman"], "man")):
        wide = df.pivot_table(index=["case_id", other], columns=attr, values="p")
        d = wide[values].sub(wide[ref], axis=0).groupby(level="case_id").mean().sort_index()
        diffs[attr] = (values, d.to_numpy(float))
    assert cf["correction"]["level"] == pytest.approx(_holm_level(cf["tests"], cf["correction"]["alpha"]))
    _check_against_results(diffs, cf["questions"]["treat"], cf["contrast_families"], 0, "treat")
    black = cf["questions"]["treat"]["attributes"]["race"]["delta_vs_reference"]["Black"]
    assert black["significant"] and black["ci_high"] < 0  # the planted -0.15 is found, and its interval says so


def test_contrasts_recomputed_with_the_documented_rng(card):
    """30 cases: random sign vectors from the documented seed and draw order."""
    df = frame(np.random.default_rng(5), n_cases=30, shift=-0.04)
    res = CounterfactualAudit(card, seed=7, with_ci=False).run(df)
    fam = res["contrast_families"][0]
    assert not fam["exhaustive"] and fam["n_draws"] == 10_000
    diffs = {}
    for attr, other, values, ref in (("race", "gender", ["Asian", "Black", "Hispanic"], "White"), ("gender", "race", ["woman"], "man")):
        wide = df.pivot_table(index=["case_id", other], columns=attr, values="outcome")
        diffs[attr] = (values, wide[values].sub(wide[ref], axis=0).groupby(level="case_id").mean().sort_index().to_numpy(float))
    assert res["correction"]["level"] == pytest.approx(_holm_level(res["tests"], 0.05))
    _check_against_results(diffs, res["questions"]["treat"], res["contrast_families"], 7, "treat")
