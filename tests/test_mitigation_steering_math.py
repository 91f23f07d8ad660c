"""Known-answer tests for the Gaussian steering maths (paper 003) on synthetic data that violates
the ideal conditions (groups differ in class-conditional means and variances)."""

import numpy as np
import pytest
from fairlearn.metrics import MetricFrame, demographic_parity_difference, true_positive_rate
from scipy.optimize import minimize
from scipy.stats import norm

from benchmark.mitigations import gaussian as G

N = 20000  # per (class, group); SE of a rate difference ~ 0.005


def _synthetic(seed=0):
    rng = np.random.default_rng(seed)
    params = {(0, "a"): (0.0, 1.0), (1, "a"): (2.0, 1.0), (0, "b"): (-1.0, 0.6), (1, "b"): (0.8, 2.0)}
    xs, ys, gs = [], [], []
    for (c, a), (m, s) in params.items():
        xs.append(rng.normal(m, s, N))
        ys += [c] * N
        gs += [a] * N
    return np.concatenate(xs)[:, None], np.array(ys), np.array(gs), params


def _bayes(x, mean, var):
    """Group-blind Bayes-optimal classifier for equal class priors and Gaussian class-conditionals."""
    return (norm.logpdf(x[:, 0], mean[1][0], np.sqrt(var[1][0, 0])) > norm.logpdf(x[:, 0], mean[0][0], np.sqrt(var[0][0, 0]))).astype(int)


def _gaps(y, pred, g):
    dp = demographic_parity_difference(y, pred, sensitive_features=g)
    eo = MetricFrame(metrics=true_positive_rate, y_true=y, y_pred=pred, sensitive_features=g).difference()
    return dp, eo


@pytest.mark.parametrize("fit", [G.ideal_all_subgroups, lambda gs: G.ideal_affirmative(gs, "a")])
def test_steering_makes_bayes_classifier_fair(fit):
    x, y, g, _ = _synthetic()
    gs = G.estimate(x, y, g)
    # Before: the Bayes classifier of the pooled data is unfair.
    pooled_mean = {c: x[y == c].mean(0) for c in (0, 1)}
    pooled_var = {c: np.atleast_2d(np.var(x[y == c])) for c in (0, 1)}
    dp0, eo0 = _gaps(y, _bayes(x, pooled_mean, pooled_var), g)
    assert dp0 > 0.1 and eo0 > 0.1
    ideal = fit(gs)
    steered = G.steering_transform(gs, ideal)(x, labels=[G.label(c, a) for c, a in zip(y, g)])
    dp, eo = _gaps(y, _bayes(steered, ideal.mean, ideal.cov), g)
    assert dp < 0.02 and eo < 0.02, (dp, eo)
    # Test-time form (class unknown, one affine map per group): approximate, but must cut the gaps.
    at_test = G.group_transform(gs, ideal)(x, labels=list(g))
    dpt, eot = _gaps(y, _bayes(at_test, ideal.mean, ideal.cov), g)
    assert dpt < dp0 / 2 and eot < eo0 / 2, (dpt, eot, dp0, eo0)


def test_probe_recovers_group_when_encoded():
    """Without supplied labels the Gaussian probe picks each row's group; where the representation
    encodes the group (as an LLM's does for a race word), it matches the labelled map."""
    rng = np.random.default_rng(3)
    x, y, g, _ = _synthetic()
    x = np.concatenate([x, np.where(g == "a", 0.0, 10.0)[:, None] + rng.normal(0, 1, (len(x), 1))], axis=1)
    gs = G.estimate(x, y, g)
    t = G.group_transform(gs, G.ideal_all_subgroups(gs))
    close = np.all(np.isclose(t(x), t(x, labels=list(g)), atol=1e-3), axis=1)
    assert close.mean() > 0.98


def test_kl_matches_univariate_closed_form_and_is_optimal():
    x, y, g, params = _synthetic(1)
    gs = G.estimate(x, y, g)
    ideal = G.ideal_all_subgroups(gs)
    steered = G.steering_transform(gs, ideal)(x, labels=[G.label(c, a) for c, a in zip(y, g)])[:, 0]
    # KL(steered || original) from the moments of the steered samples, against the true parameters.
    empirical = 0.0
    for (c, a), (m, s) in params.items():
        sel = (y == c) & (g == a)
        empirical += 0.25 * G.kl_univariate(steered[sel].mean(), steered[sel].var(), m, s**2)
    assert empirical == pytest.approx(ideal.objective, rel=0.03)
    # The closed form is the minimiser of the convex program (checked numerically).
    for c in (0, 1):
        def f(p, c=c):
            return sum(G.kl_univariate(p[0], np.exp(p[1]), gs.mean[c][a][0], gs.cov[c][a][0, 0]) for a in gs.groups)
        best = minimize(f, x0=[0.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-10})
        assert best.x[0] == pytest.approx(ideal.mean[c][0], abs=1e-3)
        assert np.exp(best.x[1]) == pytest.approx(ideal.cov[c][0, 0], rel=1e-3)
    # Affirmative: the advantaged group does not move, so only the other group's KL counts.
    aff = G.ideal_affirmative(gs, "b")
    other = [a for a in gs.groups if a != aff.advantaged][0]
    closed = sum(gs.prior[c][other] * G.kl_univariate(gs.mean[c][aff.advantaged][0], gs.cov[c][aff.advantaged][0, 0],
                                                      gs.mean[c][other][0], gs.cov[c][other][0, 0]) for c in (0, 1))
    assert aff.objective == pytest.approx(closed, rel=1e-9)


def test_baselines_remove_group_information_with_the_probe_as_at_test_time():
    """At test time the hook does not know the group: the Gaussian probe's posterior weighs each
    group's map. Where the representation encodes the group (a third coordinate, as an LLM's does for
    a race word), the probe-gated maps still give every group the same mean (and MiMiC the same
    covariance); LEACE has a single map and needs no probe."""
    rng = np.random.default_rng(2)
    g = np.repeat(np.array(["a", "b"]), 5000)
    x = np.concatenate([rng.normal([0, 0], [1, 1], (5000, 2)), rng.normal([2, -1], [0.5, 2], (5000, 2))])
    x = np.concatenate([x, np.where(g == "a", 0.0, 12.0)[:, None] + rng.normal(0, 1, (len(x), 1))], axis=1)
    before = np.abs(x[g == "a"].mean(0) - x[g == "b"].mean(0)).max()
    for make in (G.mean_matching, G.mimic, G.leace):
        t = make(x, g)
        if make is not G.leace:  # the probe is what the hook uses: its groups match the truth here
            labels = np.array([c.label for c in t.components])[t.log_posterior(x).argmax(1)]
            assert (labels == g).mean() > 0.99
        out = t(x)  # no labels: probe-gated, as the installed hook computes it
        gap = np.abs(out[g == "a"].mean(0) - out[g == "b"].mean(0)).max()
        assert gap < 0.02 * before, (make.__name__, gap, before)
    out = G.mimic(x, g)(x)
    assert np.allclose(np.cov(out[g == "a"].T), np.cov(out[g == "b"].T), atol=0.15 * np.abs(np.cov(x.T)).max() ** 0.5)


def test_favoured_group_is_chosen_from_the_data_and_ties_refuse():
    """With one class (every Q-Pain mitigation case is "Yes") the affirmative target must come from the
    data (the base model's mean P(positive) per group), not from the alphabet."""
    assert G.favoured_group({"race=Asian": 0.31, "race=White": 0.44, "race=Black": 0.40}) == "race=White"
    with pytest.raises(ValueError, match="same mean"):
        G.favoured_group({"race=Asian": 0.4, "race=White": 0.4})


def test_grouping_falls_back_to_one_attribute_when_cells_are_thin():
    from benchmark.errors import FairbenchError
    from benchmark.mitigations.steering import choose_grouping
    from benchmark.requests import Request

    def reqs(n_per_cell):
        out = []
        for race in ("Asian", "Black", "White"):
            for gender in ("man", "woman"):
                out += [Request("c", "q", {"race": race, "gender": gender}, "", ["Yes", "No"], "choice")] * n_per_cell
        return out

    r = reqs(8)  # 8 per race x gender cell, 16 per race, 24 per gender
    y = np.array(["Yes"] * len(r))
    assert choose_grouping(r, y, ["race", "gender"], 8)["used"] == ["race", "gender"]
    chosen = choose_grouping(r, y, ["race", "gender"], 20)
    assert chosen["used"] == ["gender"] and chosen["smallest_cell"] == 24 and "8 samples" in chosen["fallback"]
    assert choose_grouping(r, y, ["race", "gender"], 16)["used"] == ["gender"]  # the larger smallest cell wins
    with pytest.raises(FairbenchError, match="min_cell_size 30"):
        choose_grouping(r, y, ["race", "gender"], 30)
