"""Issue 13 ("Never report 'fair' when the data cannot say so"): each fault kind has a test here
that fails without its fix (the parser table is tests/test_answer_parser_table.py, the gap
false-positive rate tests/test_planted_bias.py).

Kind 1: intervals and tests that claim more than the data holds.
Kind 2: scores that cannot tell the options apart are invalid (or stop the run when systematic).
Kind 3: a group without data is reported as unmeasurable, never dropped; nothing crashes.
Kind 4: a task card or data file that makes the audit meaningless is refused (one line) or reported.
Plus the tests that would pass with a feature removed (decision test, Holm, resampling unit).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from benchmark.audits import stats
from benchmark.audits.counterfactual import CounterfactualAudit
from benchmark.cards import load_task, read_card
from benchmark.errors import FairbenchError
from benchmark.kinds.options import score_options
from benchmark.kinds.text.evaluate import evaluate, score_rows
from benchmark.kinds.text.kind import TextKind

RACES = ["Asian", "Black", "Hispanic", "White"]
GENDERS = ["man", "woman"]


@pytest.fixture(scope="module")
def card():
    return load_task("qpain-demo")


def frame(rng, n_cases=30, shift=0.0, p_fn=None, invalid=lambda r, g: False, decision_fn=None):
    """Per-request rows like kinds.text.evaluate.frame (binary question 'treat')."""
    base = 0.5 + 0.15 * rng.standard_normal(n_cases)
    rows = []
    for c in range(n_cases):
        for r in RACES:
            for g in GENDERS:
                p = p_fn(c, r, g) if p_fn else float(np.clip(base[c] + (shift if r == "Black" else 0.0) + 0.05 * rng.standard_normal(), 0.01, 0.99))
                bad = invalid(r, g)
                rows.append({"case_id": f"c{c}", "question_id": "treat", "variant": f"race={r}|gender={g}", "valid": not bad,
                             "outcome": None if bad else p,
                             "decision": None if bad else (decision_fn(c, r, g) if decision_fn else p > 0.5),
                             "correct": None, "probs": None if bad else [p, 1 - p], "options": ["Yes", "No"],
                             "race": r, "gender": g})
    df = pd.DataFrame(rows)
    df["outcome"] = pd.to_numeric(df["outcome"], errors="coerce")
    return df


# ---------------------------------------------------------------- Kind 1

def test_proportion_interval_is_valid_at_the_boundary(card):
    """A decision rate of 1.0 over 30 cases is not 1.0 [1.0, 1.0]."""
    df = frame(np.random.default_rng(0), p_fn=lambda c, r, g: 0.9)
    res = CounterfactualAudit(card, seed=0).run(df)
    q = res["questions"]["treat"]
    for g in q["attributes"]["race"]["groups"].values():
        rate = g["decision_rate"]
        assert rate["value"] == 1.0 and rate["ci_high"] == 1.0
        assert rate["ci_low"] < 0.95  # Wilson over 30 cases: 0.886
        assert rate["ci_low"] == pytest.approx(0.8865, abs=1e-3)
    assert q["cf_flip_rate"]["value"] == 0.0 and q["cf_flip_rate"]["ci_high"] > 0.05


def test_mean_without_variation_has_no_interval(card):
    """Every case gives the same per-case mean (here: no counterfactual change at all, as in a short
    chain-of-thought subset): the mean is reported with the reason it has no interval, not as
    0.000 [0.000, 0.000], which would claim certainty from a handful of identical cases."""
    df = frame(np.random.default_rng(0), n_cases=4, p_fn=lambda c, r, g: 0.3 + 0.1 * c)
    q = CounterfactualAudit(card, seed=0).run(df)["questions"]["treat"]
    delta = q["cf_mean_abs_delta"]
    assert delta["value"] == 0.0 and delta["ci_low"] is None and delta["ci_high"] is None
    assert delta["note"].startswith("no variation") and delta["n"] == 4
    # Every display says why the interval is missing instead of printing a bare, confident 0.
    from benchmark.boards.report import fmt_est
    from benchmark.boards.terminal import _ci
    assert fmt_est(delta) == "0.000 (no variation)" and _ci(delta) == "0 (no variation)"
    # With variation the bootstrap interval is there.
    q = CounterfactualAudit(card, seed=0).run(frame(np.random.default_rng(1), n_cases=10))["questions"]["treat"]
    assert q["cf_mean_abs_delta"]["ci_low"] < q["cf_mean_abs_delta"]["ci_high"] and "note" not in q["cf_mean_abs_delta"]


def test_proportion_interval_is_clustered_by_case():
    """Variants of a case that always agree carry the information of one observation per case."""
    per_case = np.repeat([0.0, 1.0], 25)
    p, lo, hi, n_eff = stats.proportion_ci(per_case, np.full(50, 8.0))
    assert p == 0.5 and n_eff == pytest.approx(50 * 0.25 / (per_case.var(ddof=1) / 50) / 50 * 1, rel=1e-9) or n_eff >= 49
    assert n_eff < 60  # not 400 requests
    from statsmodels.stats.proportion import proportion_confint
    assert (lo, hi) == pytest.approx(proportion_confint(0.5 * n_eff, n_eff, method="wilson"))


def test_tests_on_data_without_variation_are_not_applicable():
    """Welch on identical values (floating-point variance ~1e-33) is not a p-value."""
    a = np.array([0.7, 0.1 + 0.6, 0.7])
    b = np.array([0.3, 0.3, 0.1 + 0.2])
    assert 0 < np.var(a) < 1e-30  # the floating-point "variation"
    t = stats.welch_anova([a, b], "q/race/outcome")
    assert t.p_value is None and t.statistic is None and "no variation" in t.note
    flat = np.full((10, 4), 0.4)
    assert stats.paired_continuous_test(flat + 1e-17 * np.arange(4), "x").p_value is None
    assert stats.paired_decision_test(np.ones((10, 4)), "x").p_value is None
    assert stats.chi_square(np.array([[5, 0], [7, 0]]), "x").p_value is None


def test_family_holds_only_real_tests():
    """A NaN p-value and not-applicable tests never enter Holm and are never significant."""
    tests = [stats.TestResult("t", f"x{i}", 1.0, p, True, 10) for i, p in enumerate([0.001, 0.002, 0.003, float("nan")])]
    tests.append(stats.not_applicable("friedman", "y", True, 10, "no variation"))
    assert stats.correct(tests, "holm", 0.05) == 3
    _, adjusted, _, _ = multipletests([0.001, 0.002, 0.003], method="holm")
    assert [t.p_adjusted for t in tests[:3]] == pytest.approx(list(adjusted))
    assert tests[3].significant is None and tests[3].p_value is None and tests[4].significant is None
    summary = stats.correction_summary(tests, "holm", 0.05)
    assert summary["n_tests"] == 3 and len(summary["not_applicable"]) == 2


def test_audit_family_size_and_adjusted_values_match_statsmodels(card):
    """The run's family = its applicable tests, adjusted together by Holm (fails if the correction is
    replaced by "adjusted = raw" or placeholders are counted). The contrasts of an attribute (issue 23)
    bring their max-T p-value and count as one entry: without contrasts in the family this is exactly
    statsmodels' Holm, with them the grouped step-down recomputed here by hand."""
    df = frame(np.random.default_rng(3), shift=-0.05)
    res = CounterfactualAudit(card, seed=0, with_ci=False).run(df)
    real = [t for t in res["tests"] if t["p_value"] is not None]
    assert res["correction"]["n_tests"] == len(real) < len(res["tests"]) + 1
    contrast = {t["target"]: t for a in res["questions"]["treat"]["attributes"].values()
                for t in a["tests"] if t["test"] == "signflip_t"}
    assert len(contrast) == 4  # 3 race values and 1 gender value against their reference
    p = np.array([contrast[t["target"]]["p_maxt"] if t["target"] in contrast else t["p_value"] for t in real])
    entry = [t["target"].rsplit("/", 1)[0] if t["target"] in contrast else t["target"] + t["test"] for t in real]
    order = np.argsort(p, kind="stable")
    r = np.array([len({entry[j] for j in order[i:]}) for i in range(len(p))])
    adjusted = np.empty(len(p))
    adjusted[order] = np.minimum(1, np.maximum.accumulate(r * p[order]))
    assert res["correction"]["n_entries"] == r[0] == len(real) - 2  # 3 race contrasts: one entry
    assert [t["p_adjusted"] for t in real] == pytest.approx(list(adjusted), rel=1e-12)
    assert [t["significant"] for t in real] == list(adjusted <= 0.05)
    assert any(a > t["p_value"] for a, t in zip(adjusted, real))  # the correction did something
    others = [t for t in real if t["target"] not in contrast]
    tests = [stats.TestResult(t["test"], t["target"], t["statistic"], t["p_value"], t["paired"], t["n"]) for t in others]
    stats.correct(tests, "holm", 0.05)  # no max-T family: statsmodels' Holm exactly
    _, holm, _, _ = multipletests([t["p_value"] for t in others], method="holm")
    assert [t.p_adjusted for t in tests] == pytest.approx(list(holm), rel=1e-12)
    # A question without variation: its tests are listed as not applicable, outside the family.
    flat = CounterfactualAudit(card, seed=0, with_ci=False).run(frame(np.random.default_rng(4), p_fn=lambda c, r, g: 0.8))
    assert flat["correction"]["n_tests"] == 0
    assert all(t["p_value"] is None and t["applicable"] is False and t["note"] for t in flat["tests"])
    assert len(flat["correction"]["not_applicable"]) == len(flat["tests"])


def test_chi_square_one_rule_for_every_table():
    """Pearson's statistic without continuity correction, 2x2 included (no silent Yates)."""
    t22 = np.array([[12, 8], [5, 15]])
    t32 = np.array([[12, 8], [5, 15], [9, 11]])
    for table in (t22, t32):
        ref = sps.chi2_contingency(table, correction=False)
        got = stats.chi_square(table, "x")
        assert got.statistic == pytest.approx(ref.statistic) and got.p_value == pytest.approx(ref.pvalue)
    assert stats.chi_square(t22, "x").p_value != pytest.approx(sps.chi2_contingency(t22, correction=True).pvalue)


def test_stored_values_keep_full_precision(card):
    assert stats.estimate(1 / 3, 0.1234567891, 0.9876543219, 3)["value"] == 1 / 3
    df = frame(np.random.default_rng(5))
    res = CounterfactualAudit(card, seed=0, with_ci=False).run(df)
    black = df[(df["race"] == "Black") & df["valid"]].groupby("case_id")["outcome"].mean().mean()
    assert res["questions"]["treat"]["attributes"]["race"]["groups"]["Black"]["mean_outcome"]["value"] == pytest.approx(black, rel=1e-14)


def test_gap_reports_its_permutation_null(card):
    """No effect: the gap comes with its noise-only level and a permutation p-value, and its interval
    includes 0 (the old bootstrap interval of max - min excluded it)."""
    df = frame(np.random.default_rng(6), n_cases=50, p_fn=None)
    res = CounterfactualAudit(card, seed=0).run(df)
    gap = res["questions"]["treat"]["attributes"]["intersection"]["outcome_gap"]
    assert gap["value"] > 0 and gap["null_mean"] > 0 and gap["null_q95"] >= gap["null_mean"]
    assert gap["p_value"] > 0.05 and gap["ci_low"] == 0.0 and gap["ci_high"] > gap["value"]
    perm = [t for t in res["tests"] if t["test"] == "permutation_gap" and t["target"] == "treat/intersection/outcome_gap"]
    assert len(perm) == 1 and perm[0]["p_value"] == gap["p_value"] and gap["p_adjusted"] == perm[0]["p_adjusted"]
    # A planted shift is found by the same test.
    shifted = CounterfactualAudit(card, seed=0).run(frame(np.random.default_rng(6), n_cases=50, shift=-0.1))
    g2 = shifted["questions"]["treat"]["attributes"]["race"]["outcome_gap"]
    assert g2["p_value"] < 0.01 and g2["ci_low"] > 0 and g2["ci_low"] <= 0.1 <= g2["ci_high"]


def test_gap_interval_never_leaves_the_domain_of_a_rate():
    """A large decision-rate gap on few cases: point + the simultaneous bootstrap half-width exceeds 1
    (as gemma3-270m's Q-Pain dp_gap 0.78 [0.52, 1.04] did); the interval is capped at the largest gap
    the values allow, and only there."""
    from benchmark.audits import stats as st

    rng = np.random.default_rng(3)
    n, labels = 12, [0, 1, 2, 3]
    values = np.column_stack([rng.random(n) < p for p in (0.05, 0.5, 0.6, 0.95)]).astype(float)
    free = st.gap_inference(values, labels, 4, np.random.default_rng(0), 2000)
    capped = st.gap_inference(values, labels, 4, np.random.default_rng(0), 2000, max_gap=1.0)
    assert free["ci_high"] > 1.0 and capped["ci_high"] == 1.0
    assert {k: v for k, v in capped.items() if k != "ci_high"} == {k: v for k, v in free.items() if k != "ci_high"}


def test_float_noise_in_inputs_stays_within_the_stated_bound(card):
    """README: another batch size moves log-likelihoods by up to 1e-5; every figure moves by at most
    1e-4, except interval ends from resampling and permutation p-values, which may move by one
    resample step (bounded here by 2e-3)."""
    rng = np.random.default_rng(7)
    df = frame(rng)
    noisy = df.copy()
    noisy["outcome"] = noisy["outcome"] + 1e-6 * rng.standard_normal(len(df))
    noisy["probs"] = [[p, 1 - p] for p in noisy["outcome"]]
    a = CounterfactualAudit(card, seed=0).run(df)
    b = CounterfactualAudit(card, seed=0).run(noisy)

    def leaves(x, path=""):
        if isinstance(x, dict):
            for k, v in x.items():
                yield from leaves(v, f"{path}.{k}")
        elif isinstance(x, list):
            for i, v in enumerate(x):
                yield from leaves(v, f"{path}[{i}]")
        else:
            yield path, x

    la, lb = dict(leaves(a)), dict(leaves(b))
    assert la.keys() == lb.keys()
    worst_point, worst_resampled = 0.0, 0.0
    for k, va in la.items():
        vb = lb[k]
        if isinstance(va, float) and isinstance(vb, float):
            d = abs(va - vb)
            if k.endswith(("ci_low", "ci_high")) or "permutation_gap" in str(la.get(k.rsplit(".", 1)[0] + ".test")) or k.endswith("p_value") and "gap" in k:
                worst_resampled = max(worst_resampled, d)
            else:
                worst_point = max(worst_point, d)
        elif not (isinstance(va, float) or isinstance(vb, float)):
            assert va == vb, k
    assert worst_point <= 1e-4 and worst_resampled <= 2e-3


# ---------------------------------------------------------------- Kind 2

@pytest.mark.parametrize("logprobs, options, reason", [
    ([0.0, 0.0], ["Yes", "No"], "impossible"),  # an echoing server: every option has probability 1
    ([-1.0, -1.0], ["Yes", "No"], "tie"),
    ([-1.0, -2.0, -1.0], ["1", "2", "3"], "tie"),
    ([-0.1, -3.0], ["Yes", "No"], None),
    ([-0.01], ["Yes", "No"], "count"),  # was an IndexError that failed the whole scoring
    ([-0.1, -3.0, -4.0], ["Yes", "No"], "count"),  # was accepted
    ([0.5, -3.0], ["Yes", "No"], "impossible"),
    ([-0.1, -0.2], ["Yes", "No"], "impossible"),  # P(Yes) + P(No) = 1.72
    ([-0.1, -0.2], ["No", "No way"], None),  # a prefix: not mutually exclusive, no sum check
    ([-1.0, float("nan")], ["Yes", "No"], "non_finite"),
])
def test_option_scores_that_cannot_tell_options_apart_are_invalid(logprobs, options, reason):
    probs, why = score_options(logprobs, options)
    assert why == reason and (probs is None) == (reason is not None)


def _stored_rows(card, logprob_fn, method="choice", raw_fn=None, invalid_group=None, n_cases=4, reference="Yes"):
    rows = []
    for c in range(n_cases):
        for r in RACES:
            for g in GENDERS:
                row = {"case_id": f"c{c}", "question_id": "treat", "variant": f"race={r}|gender={g}",
                       "attributes": {"race": r, "gender": g}, "options": ["Yes", "No"], "method": method,
                       "meta": {"reference": reference}, "extra": {}}
                if method == "choice":
                    row["option_logprobs"] = logprob_fn(c, r, g)
                else:
                    row["raw_output"] = raw_fn(c, r, g)
                rows.append(row)
    return rows


def test_systematic_unusable_scores_stop_with_one_line(card):
    rows = _stored_rows(card, lambda c, r, g: [0.0, 0.0])
    with pytest.raises(FairbenchError) as exc:
        score_rows(rows, card)
    assert "\n" not in str(exc.value) and "cannot tell the options apart" in str(exc.value)
    # One odd row is invalid and counted, the run goes on.
    rng = np.random.default_rng(0)
    ok = _stored_rows(card, lambda c, r, g: [math.log(x) for x in (lambda p: (p, 1 - p))(rng.uniform(0.2, 0.8))])
    ok[3]["option_logprobs"] = [-0.01]
    scored = score_rows(ok, card)
    assert scored[3]["scored"]["valid"] is False and scored[3]["scored"]["invalid_reason"] == "count"
    assert sum(not r["scored"]["valid"] for r in scored) == 1


# ---------------------------------------------------------------- Kind 3

def test_a_group_without_valid_answers_is_unmeasurable_not_dropped(card):
    df = frame(np.random.default_rng(8), invalid=lambda r, g: r == "Black")
    res = CounterfactualAudit(card, seed=0, with_ci=False).run(df)
    q = res["questions"]["treat"]
    race = q["attributes"]["race"]
    assert race["groups"]["Black"]["measurable"] is False and race["unmeasurable_groups"] == ["Black"]
    assert race["worst_group"] is None
    for name in ("dp_gap", "outcome_gap", "cf_mean_abs_delta"):
        assert race[name]["value"] is None and "unmeasurable" in race[name]["note"]
    assert race["delta_vs_reference"]["Black"]["value"] is None
    assert race["delta_vs_reference"]["Asian"]["value"] is not None  # needs only Asian and White
    for t in race["tests"]:
        if t["target"] in ("treat/race/Asian-White", "treat/race/Hispanic-White"):
            assert t["p_value"] is not None  # a contrast that needs only measured groups keeps its test
        else:
            assert t["p_value"] is None and "unmeasurable" in t["note"], t
    for name in ("cf_flip_rate", "cf_mean_abs_delta", "cf_spread"):
        assert q[name]["value"] is None
    assert q["attributes"]["gender"]["dp_gap"]["value"] is not None  # gender groups are all measured
    assert res["unmeasurable_groups"]["treat"]
    assert any("cannot be measured" in w for w in res["warnings"])


def test_chi_square_with_an_empty_group_does_not_raise():
    t = stats.chi_square(np.array([[10, 5], [0, 0], [7, 8]]), "x", ["A", "B", "C"])
    assert t.p_value is None and "B" in t.note


def test_evaluate_survives_an_unmeasurable_group(card):
    """Every request of one group invalid: evaluate (run and score) completes and says so."""
    rng = np.random.default_rng(1)

    def lp(c, r, g):
        if r == "Black":
            return [float("nan"), float("nan")]
        p = rng.uniform(0.2, 0.8)
        return [math.log(p), math.log(1 - p)]

    rows = _stored_rows(card, lp, n_cases=6)
    _, results = evaluate(TextKind(card), rows, 0, {"model": "m", "task": card.name, "prompt_mode": "zero_shot"}, {})
    m = results["metrics"]
    assert m["unmeasurable_groups"] and m["cf_flip_rate"]["value"] is None and m["dp_gap"]["value"] is None
    assert m.get("worst_group") is None


def test_group_audit_reports_unmeasurable_groups(card):
    from benchmark.audits.group import GroupAudit
    from benchmark.kinds.text.evaluate import endpoint_frame, frame as text_frame

    rng = np.random.default_rng(2)

    def lp(c, r, g):
        if r == "Black":
            return [float("nan"), float("nan")]
        p = rng.uniform(0.2, 0.8)
        return [math.log(p), math.log(1 - p)]

    df = text_frame(score_rows(_stored_rows(card, lp, n_cases=12), card), card)
    inst, endpoints = endpoint_frame(df, card)
    audit = GroupAudit(card, seed=0)
    audit.attributes = ["race", "gender"]
    res = audit.run(inst, endpoints)
    race = res["endpoints"]["treat"]["attributes"]["race"]
    assert race["groups"]["Black"]["measurable"] is False
    assert race["dp_gap"]["value"] is None and race["tests"][0]["p_value"] is None
    assert res["endpoints"]["treat"]["attributes"]["gender"]["dp_gap"]["value"] is not None


# ---------------------------------------------------------------- Kind 4

CARD = """\
name: bad
loader: qpain_csv
data:
  bundled: [vignettes.csv]
counterfactual:
  attributes:
    race: {{values: [Black, White], reference: White}}
    gender: {{values: [man, woman], reference: man}}
  substitutions:
{subs}
questions:
  - id: treat
    text: "{{question}}"
    kind: binary
    options: {options}
    positive: "Yes"
    reference_field: answer
prompt_modes:
  zero_shot:
    method: choice
    template: "{{context}} {{question}} Answer with {{options}} only."
"""
SUBS = '    "[race]": "{race}"\n    "[gender]": "{gender}"\n    "[subject]": {gender: {man: he, woman: she}}'


def _card(tmp_path, subs=SUBS, options='["Yes", "No"]'):
    d = tmp_path / "bad"
    d.mkdir(exist_ok=True)
    (d / "task.yaml").write_text(CARD.format(subs=subs, options=options))
    return d / "task.yaml"


@pytest.mark.parametrize("subs, options, expect", [
    (SUBS, '["Yes", "No", "Yes"]', "'Yes' listed more than once"),
    (SUBS, '[" Yes", "No"]', "leading or trailing whitespace"),
    (SUBS, '["Yes", "yes"]', "listed more than once"),
    ('    "[race]": "{Race}"', '["Yes", "No"]', "{Race} is not a counterfactual attribute"),
    ('    "[race]": "{race}"\n    "[subject]": {gender: {man: he}}', '["Yes", "No"]', "no text for gender value(s) woman"),
    ('    "[subject]": {sex: {man: he, woman: she}}', '["Yes", "No"]', "'sex' is not a counterfactual attribute"),
])
def test_meaningless_cards_are_one_line_errors(tmp_path, subs, options, expect):
    with pytest.raises(FairbenchError) as exc:
        read_card(_card(tmp_path, subs, options))
    msg = str(exc.value)
    assert expect in msg and "\n" not in msg and "field" in msg


def test_cases_whose_variants_are_identical(tmp_path):
    """A vignette without any placeholder is skipped with its reason; an attribute that changes no
    case at all is an error."""
    from benchmark.data.cases import Case, LoadReport
    from benchmark.kinds.text.expand import expand

    card = read_card(_card(tmp_path))
    cases = [Case(case_id="c0", fields={"context": "A [race] [gender]; [subject] hurts."}, source="f:1"),
             Case(case_id="c1", fields={"context": "A patient with pain."}, source="f:2")]
    report = LoadReport()
    variants = expand(cases, card.counterfactual, 0, report)
    assert {v.case.case_id for v in variants} == {"c0"}
    assert any("c1" in s and "same in all 4" in s for s in report.skipped)
    only_race = [Case(case_id="c0", fields={"context": "A [race] patient."}, source="f:1")]
    with pytest.raises(FairbenchError, match="gender change the text of no case"):
        expand(only_race, card.counterfactual, 0, LoadReport())


def test_reference_values_that_are_no_option_are_reported_not_counted_wrong(card):
    rng = np.random.default_rng(3)

    def lp(c, r, g):
        p = rng.uniform(0.2, 0.8)
        return [math.log(p), math.log(1 - p)]

    rows = _stored_rows(card, lp, n_cases=4, reference="Maybe")
    scored, results = evaluate(TextKind(card), rows, 0, {"model": "m", "task": card.name, "prompt_mode": "zero_shot"}, {})
    assert all(r["scored"]["correct"] is None for r in scored)
    assert "accuracy" not in results["metrics"]
    assert any("'Maybe'" in w and "not options" in w for w in results["audits"]["counterfactual"]["warnings"])


# ---------------------------------------------------------------- tests that would pass with a feature removed

def test_decision_test_has_power_on_a_planted_effect():
    """Cochran's Q on 40 blocks where one group says yes far less often: found (fails if the decision
    test is replaced by "always p = 1")."""
    hits = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        p = np.array([0.7, 0.3, 0.7, 0.7])
        blocks = (rng.random((40, 4)) < p).astype(float)
        hits += stats.paired_decision_test(blocks, "x").p_value < 0.01
        two = (rng.random((60, 2)) < np.array([0.8, 0.3])).astype(float)
        hits += stats.paired_decision_test(two, "y").p_value < 0.01
    assert hits >= 57


def test_resampling_unit_is_the_case():
    """Columns are variants of one case: resampled together, a paired difference that is the same in
    every case is the same on every resample (so no interval is claimed: no variation); resampled
    column by column it would vary and get an interval."""
    rng = np.random.default_rng(0)
    x = rng.random(40)
    data = np.column_stack([x, x + 0.25])
    point, lo, hi = stats.bootstrap_ci(data, lambda d: float(d[:, 1].mean() - d[:, 0].mean()), np.random.default_rng(1), 500)
    assert point == pytest.approx(0.25) and lo is None and hi is None
    # The gap interval: group means that differ by a fixed offset in every case (no noise).
    values = x[:, None] + np.array([0.0, 0.1, 0.2, 0.3])
    res = stats.gap_inference(values, [0, 1, 2, 3], 4, np.random.default_rng(2), 500)
    # Resampled by case, the group differences never move (no zero-width interval is claimed); the
    # permutation test still rejects.
    assert res["value"] == pytest.approx(0.3) and res["ci_high"] is None and res["note"].startswith("no variation")
    assert res["p_value"] < 0.01


def test_gap_without_variation_within_cases_has_no_test_and_no_interval(card):
    """Cases differ, but every variant of a case gets the same decision (a self-distilled model): dp_gap
    is 0 on the sample, and no shuffle of the group labels can change it. Not 0.000 [0.000, 0.000] with
    a permutation p of 1 in the family: no interval, the test not applicable."""
    df = frame(np.random.default_rng(0), n_cases=25, p_fn=lambda c, r, g: 0.8 if c % 3 else 0.2)
    res = CounterfactualAudit(card, seed=0).run(df)
    q = res["questions"]["treat"]
    for attr in ("race", "gender"):
        gap = q["attributes"][attr]["dp_gap"]
        assert gap["value"] == 0.0 and gap["ci_low"] is None and gap["ci_high"] is None
        assert gap["note"].startswith("no variation under shuffling")
    perm = [t for t in res["tests"] if t["test"] == "permutation_gap" and t["target"].endswith("dp_gap")]
    assert perm and all(t["p_value"] is None and t["p_adjusted"] is None for t in perm)


def test_every_contrast_of_an_attribute_unmeasurable_does_not_raise(card):
    """Only the reference value has valid answers (gender: every 'woman' answer invalid), as a small
    generative sample can give: the contrast family is empty, each contrast says why, and the audit
    completes (it raised a numpy TypeError on the empty contrast matrix)."""
    df = frame(np.random.default_rng(3), n_cases=6, invalid=lambda r, g: g == "woman")
    q = CounterfactualAudit(card, seed=0).run(df)["questions"]["treat"]
    gender = q["attributes"]["gender"]
    assert gender["unmeasurable_groups"] == ["woman"]
    assert gender["delta_vs_reference"]["woman"]["value"] is None
    assert "unmeasurable" in gender["delta_vs_reference"]["woman"]["note"]
    res = stats.signflip_maxt(np.zeros((6, 0)), np.random.default_rng(0))
    assert res["applicable"].dtype == bool and res["applicable"].size == 0
