"""Issue 13 for the imaging group audit: permutation nulls of the gaps (patients as the unit), Wilson
intervals for proportions, gaps without variation or without a group's data not applicable, and a seeded
no-effect simulation of the false-positive rate (the group audit called directly on synthetic frames)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from benchmark.audits import group as group_mod
from benchmark.audits.group import PERMUTED, GroupAudit
from benchmark.cards import load_task

ALPHA = 0.05


def _card(n_boot=100, min_group_size=1):
    c = load_task("synth-xray")
    return c.model_copy(update={"audit": c.audit.model_copy(update={"n_boot": n_boot, "min_group_size": min_group_size,
                                                                     "alpha": ALPHA, "correction": "holm"})})


def _frame(rng, n_patients=40, per_patient=3, groups=("a", "b", "c"), shift=0.0):
    """Patients with several images, a patient effect on the score (images of a patient are correlated),
    and a group that is a patient attribute. ``shift``: added to the score of group "a" (0 = no effect)."""
    g = rng.choice(groups, n_patients)
    u = rng.normal(0, 1.0, n_patients)
    pid = np.repeat(np.arange(n_patients), per_patient)
    grp = g[pid]
    y = (rng.random(len(pid)) < 1 / (1 + np.exp(-u[pid]))).astype(float)
    z = 1.5 * u[pid] + 0.8 * y + rng.normal(0, 0.3, len(pid)) + shift * (grp == "a")
    p = 1 / (1 + np.exp(-z))
    return pd.DataFrame({"patient_id": [f"p{i}" for i in pid], "sex": grp, "valid": True, "y:lesion": y,
                         "p:lesion": p, "d:lesion": (p >= 0.6).astype(float), "d05:lesion": (p >= 0.5).astype(float)})


def _audit(df, **kw):
    a = GroupAudit(_card(**kw), seed=0)
    a.attributes = ["sex"]
    return a.run(df, ["lesion"])


def test_no_effect_false_positive_rate_of_gap_tests_and_intervals(monkeypatch):
    """200 seeded repetitions without any group effect, patients correlated: each gap's permutation test
    (raw p, uncorrected) and its interval (excludes 0) flag at most alpha + 0.01 of the repetitions.
    The former bootstrap interval of max - min excluded 0 in nearly all repetitions."""
    # The family correction is not what is checked here (raw p-values are), and statsmodels'
    # multipletests runs a full gc.collect per call, which dominates 200 small audits.
    monkeypatch.setattr(group_mod.stats, "correct", lambda *a, **k: 0)
    rng = np.random.default_rng(20261129)
    reps = 200
    rejected = {g: 0 for g in PERMUTED}
    excludes = {g: 0 for g in PERMUTED}
    tested = {g: 0 for g in PERMUTED}
    for _ in range(reps):
        sex = _audit(_frame(rng))["endpoints"]["lesion"]["attributes"]["sex"]
        for g in PERMUTED:
            est = sex[g]
            if est["p_value"] is None:
                continue
            tested[g] += 1
            rejected[g] += est["p_value"] < ALPHA
            excludes[g] += est["ci_low"] is not None and est["ci_low"] > 0
    print({g: (rejected[g], excludes[g], tested[g]) for g in PERMUTED})
    for g in PERMUTED:
        assert tested[g] >= 0.9 * reps, (g, tested[g])
        assert rejected[g] / tested[g] <= ALPHA + 0.01, (g, rejected[g], tested[g])
        assert excludes[g] / tested[g] <= ALPHA + 0.01, (g, excludes[g], tested[g])


def test_permutation_moves_patients_not_images():
    """12 patients x 30 images, each patient all-positive or all-negative decisions, 3 of 6 vs 2 of 6 per
    group: as balanced as 5 positive patients can be, so shuffling patients never gives a smaller gap
    (p = 1). Shuffling images would see 180 independent images per group and call the gap significant."""
    pid = np.repeat(np.arange(12), 30)
    d_pat = np.array([1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0], float)
    grp = np.where(np.arange(12) < 6, "a", "b")
    y = np.tile(np.r_[np.ones(15), np.zeros(15)], 12)
    d = d_pat[pid]
    df = pd.DataFrame({"patient_id": [f"p{i}" for i in pid], "sex": grp[pid], "valid": True, "y:lesion": y,
                       "p:lesion": 0.2 + 0.6 * d, "d:lesion": d, "d05:lesion": d})
    sex = _audit(df, n_boot=500)["endpoints"]["lesion"]["attributes"]["sex"]
    assert sex["dp_gap"]["value"] == pytest.approx(1 / 6)
    assert sex["dp_gap"]["p_value"] == pytest.approx(1.0)
    assert sex["dp_gap"]["null_mean"] > 1 / 6
    # The interval never excludes 0: lower end 0, or no interval at all with the reason (here a resample of
    # 12 patients can miss a group, which leaves its gap undefined); never half an interval [0, None].
    dp = sex["dp_gap"]
    assert (dp["ci_low"] == 0.0 and dp["ci_high"] is not None) or (dp["ci_low"] is None and dp["ci_high"] is None and dp["note"])
    # image-level shuffling, for contrast: the same gap looks far beyond noise
    rng = np.random.default_rng(0)
    null = [abs(np.diff([x[:180].mean(), x[180:].mean()]))[0] for x in (rng.permutation(d) for _ in range(500))]
    assert np.mean(np.array(null) >= 1 / 6 - 1e-12) < 0.05


def test_gap_fields_and_family_match_statsmodels():
    rng = np.random.default_rng(3)
    out = _audit(_frame(rng, n_patients=90, shift=4.0))
    sex = out["endpoints"]["lesion"]["attributes"]["sex"]
    for g in PERMUTED:
        est = sex[g]
        assert est["p_value"] is not None and 0 < est["p_value"] <= 1
        assert est["null_mean"] is not None and est["null_q95"] >= est["null_mean"] >= 0
        assert est["ci_low"] <= est["value"] <= est["ci_high"]
        if not est["significant"]:  # issue 23: the lower end follows the *corrected* test
            assert est["ci_low"] == 0.0
    assert sex["dp_gap"]["p_value"] < ALPHA  # power on a planted effect
    assert (sex["dp_gap"]["ci_low"] > 0) == sex["dp_gap"]["significant"]
    names = [t["test"] for t in sex["tests"]]
    assert names.count("permutation_gap") == len(PERMUTED)
    applicable = [t for t in out["tests"] if t["applicable"]]
    assert out["correction"]["n_tests"] == len(applicable) == 1 + len(PERMUTED)
    reject, adj, _, _ = multipletests([t["p_value"] for t in applicable], alpha=ALPHA, method="holm")
    assert [t["p_adjusted"] for t in applicable] == pytest.approx(list(adj))
    assert [t["significant"] for t in applicable] == list(reject)
    by_target = {t["target"]: t for t in out["tests"]}
    for g in PERMUTED:
        assert sex[g]["p_adjusted"] == pytest.approx(by_target[f"lesion/sex/{g}"]["p_adjusted"])


def test_proportions_get_clustered_wilson_intervals():
    rng = np.random.default_rng(5)
    df = _frame(rng, n_patients=30, per_patient=4)
    df["d:lesion"] = 1.0  # every decision positive: a rate of 1.0
    ep = _audit(df)["endpoints"]["lesion"]
    pos = ep["pos_rate"]
    assert pos["value"] == 1.0 and pos["ci_high"] == 1.0 and pos["ci_low"] < 0.95  # never [1, 1]
    assert pos["ci_method"] == "wilson" and pos["n_eff"] == 30 and pos["n"] == 30  # patients, not images
    for entry in ep["attributes"]["sex"]["groups"].values():
        iv = entry["intervals"]
        assert iv["pos_rate"]["value"] == 1.0 and iv["pos_rate"]["ci_low"] < 1.0
        assert iv["tpr"]["ci_method"] == "wilson" and iv["fpr"]["ci_low"] < iv["fpr"]["value"] == 1.0
    # a constant decision: the dp_gap cannot vary, so it is not applicable, not a confident 0
    dp = ep["attributes"]["sex"]["dp_gap"]
    assert dp["p_value"] is None and dp["ci_low"] is None and "no variation" in dp["note"]
    # clustering: decisions shared within a patient -> n_eff is the number of patients, not of images
    df2 = _frame(rng, n_patients=40, per_patient=5)
    first = df2.groupby("patient_id")["d:lesion"].transform("first")
    df2["d:lesion"] = first
    ep2 = _audit(df2)["endpoints"]["lesion"]
    assert 0 < ep2["pos_rate"]["value"] < 1 and ep2["pos_rate"]["n_eff"] == pytest.approx(40)
    df3 = _frame(rng, n_patients=40, per_patient=5)
    df3["d:lesion"] = (rng.random(len(df3)) < 0.5).astype(float)  # independent images
    assert _audit(df3)["endpoints"]["lesion"]["pos_rate"]["n_eff"] > 100


def test_group_without_data_makes_its_gaps_not_applicable():
    rng = np.random.default_rng(7)
    df = _frame(rng, n_patients=60)
    df.loc[df["sex"] == "c", "y:lesion"] = 0.0  # group c has no positive image: its TPR/AUC are undefined
    out = _audit(df)
    sex = out["endpoints"]["lesion"]["attributes"]["sex"]
    for g in ("eod", "auc_gap", "underdiag_gap", "eod_at_0.5"):
        assert sex[g]["value"] is None and sex[g]["p_value"] is None and "c" in sex[g]["note"], g
    assert sex["dp_gap"]["p_value"] is not None  # still defined
    na = {t["target"] for t in out["correction"]["not_applicable"]}
    assert "lesion/sex/eod" in na and "lesion/sex/dp_gap" not in na
    # a group whose every image is invalid is unmeasurable: all its gap tests are listed, none counted
    df2 = _frame(rng, n_patients=60)
    df2.loc[df2["sex"] == "c", "valid"] = False
    out2 = _audit(df2)
    assert out2["endpoints"]["lesion"]["attributes"]["sex"]["unmeasurable_groups"] == ["c"]
    na2 = [t for t in out2["correction"]["not_applicable"] if t["test"] == "permutation_gap"]
    assert len(na2) == len(PERMUTED) and out2["correction"]["n_tests"] == 0


def test_perfectly_separated_endpoint_has_no_auc_interval_and_says_why():
    """An AUC of 1.0 that every resample of patients repeats has no interval, and the estimate says why
    (boards print "1.000 (no variation)"), instead of a confident 1.0 [1.0, 1.0]. A metric that does vary
    (ECE) keeps its interval and carries no such note."""
    rng = np.random.default_rng(11)
    df = _frame(rng, n_patients=40)
    df["p:lesion"] = np.where(df["y:lesion"] == 1, 0.8, 0.3) + rng.uniform(-0.05, 0.05, len(df))
    ep = _audit(df)["endpoints"]["lesion"]
    for est in (ep["auc"], ep["attributes"]["sex"]["worst_group_auc"], ep["attributes"]["sex"]["es_auc"]):
        assert est["value"] == 1.0 and est["ci_low"] is None and est["ci_high"] is None, est
        assert est["note"].startswith("no variation: every resample of patients") and "1" in est["note"], est
    assert ep["ece"]["ci_low"] < ep["ece"]["value"] < ep["ece"]["ci_high"] and "note" not in ep["ece"]
    # auc_gap is 0 in every resample and every shuffle: not applicable, with its reason, no interval
    gap = ep["attributes"]["sex"]["auc_gap"]
    assert gap["p_value"] is None and gap["ci_low"] is None and gap["note"].startswith("no variation")


def test_gap_without_bootstrap_variation_gets_no_half_interval():
    """Group a always decides positive, b never, 3 patients each: dp_gap is 1 in every resample of
    patients where both groups occur (no interval), and the permutation test cannot reject with 6
    patients (p = 1/10). The interval stays absent, with its reason: [0, None] would be half a claim."""
    rng = np.random.default_rng(12)
    df = _frame(rng, n_patients=6, groups=("a", "b"))
    df["sex"] = np.where(df["patient_id"].isin(["p0", "p1", "p2"]), "a", "b")
    df["d:lesion"] = (df["sex"] == "a").astype(float)
    dp = _audit(df, n_boot=200)["endpoints"]["lesion"]["attributes"]["sex"]["dp_gap"]
    assert dp["value"] == 1.0 and dp["p_value"] >= ALPHA
    assert dp["ci_low"] is None and dp["ci_high"] is None
    assert dp["note"].startswith("no variation: every resample of patients where it is defined gives 1")


def _board_row(audit_out: dict, attr: str = "sex") -> dict:
    """The imaging leaderboard row of a group-audit result (primary endpoint lesion, primary attribute ``attr``)."""
    from benchmark.boards import leaderboard as lb

    res = audit_out["endpoints"]["lesion"]["attributes"][attr]
    results = {"kind": "imaging", "audits": {"group": audit_out},
               "metrics": {"question": "lesion", "attribute": attr, "dp_gap": res["dp_gap"], "auc": audit_out["endpoints"]["lesion"]["auc"]}}
    row: dict = {k: "x" for k in lb.KEY} | {"kind": "imaging"}
    lb.imaging_entry(row, results)
    return row


def test_imaging_board_marks_dp_gap_by_its_own_permutation_test():
    """The dp_gap marker comes from dp_gap's permutation test, not from the first test with a p_adjusted
    (the image-level chi-square, or another gap's test when the chi-square is not applicable)."""
    rng = np.random.default_rng(3)
    out = _audit(_frame(rng, n_patients=90, shift=4.0))
    tests = {t["target"]: t for t in out["endpoints"]["lesion"]["attributes"]["sex"]["tests"]}
    chi, perm = tests["lesion/sex/decision"], tests["lesion/sex/dp_gap"]
    assert chi["p_adjusted"] != perm["p_adjusted"]  # the two tests tell apart which one the board reads
    row = _board_row(out)
    assert row["dp_gap_p_adjusted"] == pytest.approx(perm["p_adjusted"]) and row["dp_gap_significant"] == perm["significant"]
    # dp_gap's test not applicable (a constant decision), the chi-square not applicable either, auc_gap's
    # test applicable: no marker, not auc_gap's
    df = _frame(rng, n_patients=60)
    df["d:lesion"] = 1.0
    out2 = _audit(df)
    tests2 = {t["target"]: t for t in out2["endpoints"]["lesion"]["attributes"]["sex"]["tests"]}
    assert not tests2["lesion/sex/dp_gap"]["applicable"] and not tests2["lesion/sex/decision"]["applicable"]
    assert tests2["lesion/sex/auc_gap"]["p_adjusted"] is not None
    row2 = _board_row(out2)
    assert row2.get("dp_gap_p_adjusted") is None and row2.get("dp_gap_significant") is None


def test_board_glossary_states_the_interval_rules_of_readme_statistics():
    """The glossary says what the header and README "Statistics" say: Wilson for rates, the 0-based gap
    interval unless the permutation test rejects, the case/patient bootstrap for means and AUCs, and no
    interval without variation; never "every 95% CI is a bootstrap"."""
    from benchmark.boards import leaderboard as lb

    def row(kind, mode):
        r = {c: None for c in lb.COLUMNS}
        r.update(task="t", prompt_mode=mode, model=f"m-{kind}", kind=kind, eval_split="all", utility_metric="")
        return r

    md = lb.render_markdown("b", [row("text", "zero_shot"), row("imaging", "image")], [], "dp_gap", {})
    glossary = md[md.index("## Glossary"):md.index("## Per-group detail")]
    text = next(x for x in glossary.splitlines() if x.startswith("| 95% CI |"))
    imaging = next(x for x in glossary.splitlines() if x.startswith("| 95% CI (imaging) |"))
    for line, unit in ((text, "case"), (imaging, "patient")):
        assert "Wilson" in line and "clustered by " + unit in line and "lower end is 0 unless" in line, line
        assert "BCa" in line and "(no variation)" in line, line
    assert "simultaneous" in text and "capped" in text and "within-case permutation" in text
    assert "patient-level permutation" in imaging
    assert "chi-square" not in glossary and "permutation test" in next(x for x in glossary.splitlines() if x.startswith("| \\* (imaging)"))
    header = md.splitlines()[2]
    assert ": bootstrap." not in header and "Wilson" in header
