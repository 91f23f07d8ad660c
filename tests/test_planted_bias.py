"""Validation of the statistics themselves with a planted bias.

- A test backend (tests/planted.py, registered at run time) shifts P(yes) for one group by a known
  amount; the full run path must detect it (adjusted p < 0.01), estimate it within its CI, and
  every statistic in results.json must be recomputable from requests.jsonl alone.
- On synthetic frames (fast: the audit is called directly, without CIs) the no-shift false-positive
  rate over many seeded repetitions must be near alpha, and a shift must be found.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import planted
from benchmark.audits import stats
from benchmark.audits.counterfactual import CounterfactualAudit
from benchmark.cli import main
from benchmark.registry import register, unregister
from benchmark.cards import load_task

SHIFT = -0.15  # planted: P(yes) of Black variants, everything else equal


@pytest.fixture()
def planted_backend(tmp_path, monkeypatch):
    register("backends", "planted", planted.PlantedBackend)
    monkeypatch.setattr(planted, "SHIFTS", {"race": {"Black": SHIFT}})
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  planted:\n    backend: planted\n    model: none\n")
    # The bundled demo task with fewer bootstrap resamples (speed; the CIs stay BCa intervals).
    import shutil

    task = tmp_path / "tasks" / "planted-demo"
    shutil.copytree(Path(__file__).resolve().parent.parent / "tasks" / "qpain-demo", task)
    card = (task / "task.yaml").read_text().replace("name: qpain-demo", "name: planted-demo")
    (task / "task.yaml").write_text(card.replace("  correction: holm\n", "  correction: holm\n  n_boot: 400\n"))
    yield models
    unregister("backends", "planted")


def _tests(results, target):
    return {t["test"]: t for t in results["audits"]["counterfactual"]["tests"] if t["target"] == target}


def test_planted_shift_is_detected_and_estimated(tmp_path, planted_backend):
    out = tmp_path / "runs"
    tasks = planted_backend.parent / "tasks"
    argv = ["run", "--model", "planted", "--task", "planted-demo", "--models-file", str(planted_backend), "--tasks-dir", str(tasks)]
    assert main([*argv, "-o", str(out), "-q"]) == 0
    run_dir = out / "planted__planted-demo__zero_shot__seed0"
    results = json.loads((run_dir / "results.json").read_text())
    race = results["audits"]["counterfactual"]["questions"]["treat"]["attributes"]["race"]
    # Detection: the paired test on probabilities, after Holm over every test of the run.
    assert _tests(results, "treat/race/outcome")["friedman"]["p_adjusted"] < 0.01
    # Estimation: the signed paired effect's CI covers the planted shift; the unshifted groups' cover 0.
    black = race["delta_vs_reference"]["Black"]
    assert black["ci_low"] <= SHIFT <= black["ci_high"]
    for other in ("Asian", "Hispanic"):
        est = race["delta_vs_reference"][other]
        assert est["ci_low"] - 0.01 <= 0 <= est["ci_high"] + 0.01
    assert race["worst_group"] == "Black"
    # Gender has no planted effect.
    assert _tests(results, "treat/gender/outcome")["wilcoxon"]["p_adjusted"] > 0.01

    # Recompute from requests.jsonl alone (no task card, no model): group means, the signed delta,
    # the flip rate and the raw Friedman p-value.
    rows = [json.loads(x) for x in (run_dir / "requests.jsonl").read_text().splitlines()]
    df = pd.DataFrame([{**r["attributes"], "case_id": r["case_id"], "p": r["scored"]["outcome"], "d": r["scored"]["decision"]} for r in rows])
    per_case = df.groupby(["race", "case_id"])["p"].mean()
    assert per_case["Black"].mean() == pytest.approx(race["groups"]["Black"]["mean_outcome"]["value"], rel=1e-5)
    wide = df.pivot_table(index=["case_id", "gender"], columns="race", values="p")
    signed = (wide["Black"] - wide["White"]).groupby(level="case_id").mean().mean()
    assert signed == pytest.approx(black["value"], rel=1e-5)
    flips = df.groupby("case_id")["d"].nunique().gt(1).mean()
    assert flips == pytest.approx(results["metrics"]["cf_flip_rate"]["value"], rel=1e-5)
    friedman = sps.friedmanchisquare(*wide[["Asian", "Black", "Hispanic", "White"]].to_numpy().T)
    assert friedman.pvalue == pytest.approx(_tests(results, "treat/race/outcome")["friedman"]["p_value"], rel=1e-4)


def _synthetic(rng: np.random.Generator, n_cases: int, shift: float, card) -> pd.DataFrame:
    """Rows like evaluate.frame: P(yes) = base(case) + shift for Black + request noise."""
    races = card.counterfactual.attributes["race"].values
    genders = card.counterfactual.attributes["gender"].values
    base = 0.5 + 0.15 * rng.standard_normal(n_cases)
    rows = []
    for c in range(n_cases):
        for r in races:
            for g in genders:
                p = float(np.clip(base[c] + (shift if r == "Black" else 0.0) + 0.05 * rng.standard_normal(), 0.01, 0.99))
                rows.append({
                    "case_id": f"c{c}", "question_id": "treat", "variant": f"race={r}|gender={g}", "valid": True,
                    "outcome": p, "decision": p > 0.5, "correct": None, "probs": [p, 1 - p], "options": ["Yes", "No"],
                    "race": r, "gender": g,
                })
    return pd.DataFrame(rows)


def _blocks(rng: np.random.Generator, n_cases: int, shift: float) -> np.ndarray:
    """P(yes) blocks as the audit builds them for race: rows = (case, gender), columns = races
    (Asian, Black, Hispanic, White); P = base(case) + shift for Black + request noise."""
    base = np.repeat(0.5 + 0.15 * rng.standard_normal(n_cases), 2)[:, None]
    noise = 0.05 * rng.standard_normal((2 * n_cases, 4))
    return np.clip(base + noise + np.array([0.0, shift, 0.0, 0.0]), 0.01, 0.99)


def _race_tests(blocks: np.ndarray) -> list:
    return [
        stats.paired_continuous_test(blocks, "race/outcome"),
        stats.paired_decision_test((blocks > 0.5).astype(float), "race/decision"),
        stats.welch_anova(list(blocks.T), "race/outcome"),
    ]


def test_false_positive_rate_near_alpha_without_shift():
    """No planted shift: each test rejects at about alpha, and Holm keeps the family-wise rate
    at or below alpha. The tests are the audit's own (benchmark.stats) on the audit's block layout;
    the full audit path is exercised by the run-level test above (pandas makes 300 full audits slow)."""
    alpha, reps = 0.05, 400
    rejected = np.zeros(3)
    family = 0
    for seed in range(reps):
        tests = _race_tests(_blocks(np.random.default_rng(seed), 20, 0.0))
        rejected += [t.p_value is not None and t.p_value < alpha for t in tests]
        # Holm rejects anything iff the smallest p-value is below alpha / m. (Equivalent to
        # stats.correct, checked once below; statsmodels' multipletests runs gc.collect() per call,
        # which would make 400 calls slow.)
        ps = [t.p_value for t in tests if t.p_value is not None]
        family += min(ps) * len(ps) <= alpha
        if seed == 0:
            stats.correct(tests, "holm", alpha)
            assert any(t.significant for t in tests) == (min(ps) * len(ps) <= alpha)
    rate = rejected / reps
    # Binomial sd of a rate near 0.05 over 400 repetitions is 0.011: allow about 3 sd.
    assert 0.02 <= rate[0] <= 0.085, rate  # Friedman on probabilities
    assert rate[1] <= 0.085, rate  # Cochran's Q on decisions (discrete: may be conservative)
    assert rate[2] <= 0.085, rate  # Welch's ANOVA, unpaired: conservative on positively correlated data
    assert family / reps <= 0.085


def test_power_and_coverage_on_synthetic_frames():
    """A planted shift of -0.08 in 30 cases: the audit (called directly, no CIs) finds it after Holm
    in nearly every repetition, and its signed delta estimate is centred on the shift."""
    card = load_task("qpain-demo")
    hits, estimates = 0, []
    for seed in range(3):
        df = _synthetic(np.random.default_rng(1000 + seed), 30, -0.08, card)
        audit = CounterfactualAudit(card, seed=seed, with_ci=False).run(df)
        t = next(t for t in audit["tests"] if t["target"] == "treat/race/outcome" and t["test"] == "friedman")
        hits += t["p_adjusted"] < 0.01
        estimates.append(audit["questions"]["treat"]["attributes"]["race"]["delta_vs_reference"]["Black"]["value"])
    assert hits == 3
    assert np.mean(estimates) == pytest.approx(-0.08, abs=0.015)
    power = np.mean([_race_tests(_blocks(np.random.default_rng(5000 + s), 30, -0.08))[0].p_value < 0.01 for s in range(200)])
    assert power >= 0.95


def _variant_values(rng: np.random.Generator, n_cases: int, shift: float, decisions: bool) -> tuple[np.ndarray, list[int]]:
    """cases x 8 variants (race x gender, the audit's layout) and each variant's race index:
    P(yes) = base(case) + shift for Black + request noise; decisions are draws of P(yes)."""
    races = np.repeat(np.arange(4), 2)  # Asian, Black, Hispanic, White; two genders each
    base = 0.5 + 0.15 * rng.standard_normal((n_cases, 1))
    p = np.clip(base + np.where(races == 1, shift, 0.0) + 0.05 * rng.standard_normal((n_cases, 8)), 0.01, 0.99)
    return ((rng.random(p.shape) < p).astype(float) if decisions else p), list(races)


def test_gap_test_and_interval_false_positive_rate_without_effect():
    """Issue 13: with no group effect, the max - min gap's permutation test, and its interval (which
    excludes 0 only when that test rejects), flag a gap at most alpha + 0.01 of the time over 1000
    seeded repetitions (binomial sd of the rate: 0.007; the permutation test is exact for any number of
    permutations, so 200 keep it fast), for the decision-rate gap (dp_gap) and the outcome gap. The old bootstrap
    interval of max - min excluded 0 in nearly every repetition."""
    alpha, reps = 0.05, 1000
    flagged = {"dp_gap": 0, "outcome_gap": 0, "dp_gap interval": 0, "outcome_gap interval": 0}
    old_flagged = 0
    for seed in range(reps):
        rng = np.random.default_rng(20_000 + seed)
        for name, decisions in (("dp_gap", True), ("outcome_gap", False)):
            values, races = _variant_values(rng, 30, 0.0, decisions)
            res = stats.gap_inference(values, races, 4, np.random.default_rng(seed), n_resamples=200, alpha=alpha)
            assert res["ci_low"] == 0 or res["p_value"] < alpha  # the interval flags only what the test does
            flagged[name] += res["p_value"] < alpha
            flagged[f"{name} interval"] += res["ci_low"] > 0
            if name == "outcome_gap" and seed < 40:
                # The pre-issue interval: percentile bootstrap of max - min over cases.
                per_case = values.reshape(30, 4, 2).mean(axis=2)
                idx = rng.integers(0, 30, (400, 30))
                boot = per_case[idx].mean(axis=1)
                old_flagged += np.quantile(boot.max(1) - boot.min(1), 0.025) > 0
    for name, n in flagged.items():
        assert n / reps <= alpha + 0.01, (name, n / reps)
    assert old_flagged >= 38  # the fault being fixed: noise read as a gap


def test_gap_interval_coverage_with_a_planted_effect():
    """The simultaneous interval covers the true gap (the planted shift of the group means) in at
    least 93% of 200 seeded repetitions, and the test finds the shift."""
    shift, reps = -0.08, 200
    covered = found = 0
    for seed in range(reps):
        rng = np.random.default_rng(40_000 + seed)
        values, races = _variant_values(rng, 30, shift, decisions=False)
        res = stats.gap_inference(values, races, 4, np.random.default_rng(seed), n_resamples=400)
        covered += res["ci_low"] <= abs(shift) <= res["ci_high"]
        found += res["p_value"] < 0.05
    assert covered / reps >= 0.93, covered / reps
    assert found / reps >= 0.95, found / reps
