"""Gaussian steering maths (paper 003): estimate per-(class, group) Gaussians, find the nearest
"ideal" distribution in KL, and build the optimal-transport affine maps onto it.

**Which ideal family.** Paper 003 calls a distribution ideal when the minimiser of any cost-sensitive
risk on it is exactly group-fair; for Gaussian class-conditionals that family allows groups to differ
as long as their standardized mean differences and covariance ratios are equal. This module
implements a **stricter sub-family, "group-identical class-conditionals"**: every group has the
*same* class-conditional Gaussian ``X | Y=y, A=a ~ N(m_y, S_y)``. Every member is ideal in the paper's
sense (a group-blind classifier, such as the model's own head, has identical TPR and FPR in every
group, and identical positive rates when the class priors are equal), but not every ideal
distribution is a member, so the KL-nearest member can be farther from the data than the paper's
optimum (the reported ``kl_objective`` is an upper bound on the paper's). With a single class (every
Q-Pain mitigation case has the reference answer Yes) both families coincide: one Gaussian per group,
all equal.

- ``all_subgroups``: argmin over (m_y, S_y) of sum_a w_ya KL(N(m_y, S_y) || N(mu_ya, Sigma_ya)).
  It is convex with a closed form (precision-weighted barycentre), so no line search is needed.
- ``affirmative``: the advantaged group stays where it is and the others move onto it; the KL of
  each moved group is the closed form KL(N_adv || N_a).

Hand-written because no library fits this program; the OT map itself comes from concept-erasure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from concept_erasure.optimal_transport import ot_map


@dataclass
class Gaussians:
    """Per-(class, group) moments. ``mean[c][a]`` (d,), ``cov[c][a]`` (d, d), ``prior[c][a]`` = n_ca / n."""

    classes: list
    groups: list
    mean: dict
    cov: dict
    prior: dict
    count: dict


def _cov(x: np.ndarray) -> np.ndarray:
    if len(x) < 2:
        return np.zeros((x.shape[1], x.shape[1]))
    return np.cov(x, rowvar=False, bias=False).reshape(x.shape[1], x.shape[1])


def estimate(x: np.ndarray, y: np.ndarray, g: np.ndarray, ridge: float = 1e-4) -> Gaussians:
    """Moments per (class, group). Small cells are shrunk towards the pooled within-class covariance
    with weight d / (n + d), plus a ridge of ``ridge`` x mean variance, so every covariance is
    positive definite even when a cell has fewer samples than dimensions."""
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[1]
    classes = sorted(set(y.tolist()))
    groups = sorted(set(g.tolist()))
    pooled = sum(_cov(x[y == c]) * (np.sum(y == c) - 1) for c in classes) / max(1, len(x) - len(classes))
    eps = ridge * max(float(np.trace(pooled)) / d, 1e-12)
    mean, cov, prior, count = {}, {}, {}, {}
    for c in classes:
        mean[c], cov[c], prior[c], count[c] = {}, {}, {}, {}
        for a in groups:
            sel = (y == c) & (g == a)
            n = int(sel.sum())
            if n == 0:
                raise ValueError(f"no samples for class {c!r} in group {a!r}")
            lam = d / (n + d) if n > 1 else 1.0
            mean[c][a] = x[sel].mean(0)
            cov[c][a] = (1 - lam) * _cov(x[sel]) + lam * pooled + eps * np.eye(d)
            prior[c][a] = n / len(x)
            count[c][a] = n
    return Gaussians(classes, groups, mean, cov, prior, count)


def kl(m1, s1, m2, s2) -> float:
    """KL(N(m1, s1) || N(m2, s2)) for full covariances."""
    m1, m2 = np.atleast_1d(m1), np.atleast_1d(m2)
    s1, s2 = np.atleast_2d(s1), np.atleast_2d(s2)
    d = len(m1)
    inv2 = np.linalg.inv(s2)
    diff = m2 - m1
    _, ld1 = np.linalg.slogdet(s1)
    _, ld2 = np.linalg.slogdet(s2)
    return float(0.5 * (np.trace(inv2 @ s1) + diff @ inv2 @ diff - d + ld2 - ld1))


def kl_univariate(m1: float, v1: float, m2: float, v2: float) -> float:
    """KL(N(m1, v1) || N(m2, v2)) with variances v: log(s2/s1) + (v1 + (m1-m2)^2) / (2 v2) - 1/2."""
    return float(0.5 * np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5)


@dataclass
class Ideal:
    """Target class-conditionals (the same for every group) and the KL cost of moving there."""

    mean: dict  # class -> (d,)
    cov: dict  # class -> (d, d)
    objective: float  # sum_{c,a} prior_ca * KL(target_c || original_ca)
    kind: str
    advantaged: object | None = None


def _objective(gs: Gaussians, mean: dict, cov: dict) -> float:
    return sum(gs.prior[c][a] * kl(mean[c], cov[c], gs.mean[c][a], gs.cov[c][a]) for c in gs.classes for a in gs.groups)


def ideal_all_subgroups(gs: Gaussians) -> Ideal:
    """Closed form of argmin_{m,S} sum_a w_a KL(N(m,S) || N(mu_a, Sigma_a)) per class:
    S^-1 = sum_a w_a Sigma_a^-1 (w normalised), m = S sum_a w_a Sigma_a^-1 mu_a."""
    mean, cov = {}, {}
    for c in gs.classes:
        w = np.array([gs.prior[c][a] for a in gs.groups])
        w = w / w.sum()
        precs = [np.linalg.inv(gs.cov[c][a]) for a in gs.groups]
        prec = sum(wi * p for wi, p in zip(w, precs))
        cov[c] = np.linalg.inv(prec)
        cov[c] = (cov[c] + cov[c].T) / 2
        mean[c] = cov[c] @ sum(wi * p @ gs.mean[c][a] for wi, p, a in zip(w, precs, gs.groups))
    return Ideal(mean, cov, _objective(gs, mean, cov), "all_subgroups")


def favoured_group(positive_rate: dict, tolerance: float = 1e-9) -> object:
    """The group the model favours: the one with the highest mean probability of the favourable
    (positive) answer, ``positive_rate`` = {group: mean P(positive)} measured on the fit data. Raises
    ValueError when the top two are within ``tolerance`` (the data cannot name one group)."""
    ranked = sorted(positive_rate.items(), key=lambda kv: -kv[1])
    if len(ranked) > 1 and ranked[0][1] - ranked[1][1] <= tolerance:
        raise ValueError(f"groups {ranked[0][0]!r} and {ranked[1][0]!r} have the same mean P(positive) ({ranked[0][1]:.6g})")
    return ranked[0][0]


def ideal_affirmative(gs: Gaussians, advantaged) -> Ideal:
    """Every group except ``advantaged`` moves onto the advantaged group's class-conditionals (the
    advantaged group does not move). Choose it with :func:`favoured_group` or name it."""
    if advantaged not in gs.groups:
        raise ValueError(f"advantaged group {advantaged!r} is not one of {gs.groups}")
    mean = {c: gs.mean[c][advantaged] for c in gs.classes}
    cov = {c: gs.cov[c][advantaged] for c in gs.classes}
    return Ideal(mean, cov, _objective(gs, mean, cov), "affirmative", advantaged)


def ot_affine(m_src, s_src, m_dst, s_dst) -> tuple[np.ndarray, np.ndarray]:
    """The OT map between Gaussians as (A, b) with T(x) = A x + b."""
    a = ot_map(torch.as_tensor(s_src, dtype=torch.float64), torch.as_tensor(s_dst, dtype=torch.float64)).numpy()
    return a, np.asarray(m_dst) - a @ np.asarray(m_src)


@dataclass
class Component:
    """One affine map T(x) = A x + b, used with weight p(component | x) from a Gaussian gate."""

    label: str
    a: np.ndarray
    b: np.ndarray
    gate_mean: np.ndarray
    gate_cov: np.ndarray
    log_prior: float


@dataclass
class Transform:
    """A mixture of affine maps gated by Gaussian posteriors; one component = a plain affine map.
    Without supplied labels the posterior over components is the probe (a generative classifier
    from the same Gaussians)."""

    components: list[Component]

    def log_posterior(self, x: np.ndarray) -> np.ndarray:
        from scipy.stats import multivariate_normal

        if len(self.components) == 1:
            return np.zeros((len(x), 1))
        lp = np.stack([c.log_prior + multivariate_normal(c.gate_mean, c.gate_cov, allow_singular=True).logpdf(x).reshape(-1)
                       for c in self.components], axis=1)
        return lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)

    def __call__(self, x: np.ndarray, labels: list[str] | None = None) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if labels is not None:
            index = {c.label: i for i, c in enumerate(self.components)}
            out = np.empty_like(x)
            for i, lab in enumerate(labels):
                comp = self.components[index[lab]]
                out[i] = comp.a @ x[i] + comp.b
            return out
        w = np.exp(self.log_posterior(x))
        return sum(w[:, [k]] * (x @ c.a.T + c.b) for k, c in enumerate(self.components))


def label(c, a) -> str:
    return f"{c}::{a}"


def steering_transform(gs: Gaussians, ideal: Ideal) -> Transform:
    """One component per (class, group): the OT map from N(mu_ca, Sigma_ca) to N(m_c, S_c)."""
    comps = []
    for c in gs.classes:
        for a in gs.groups:
            A, b = ot_affine(gs.mean[c][a], gs.cov[c][a], ideal.mean[c], ideal.cov[c])
            comps.append(Component(label(c, a), A, b, gs.mean[c][a], gs.cov[c][a], float(np.log(gs.prior[c][a]))))
    return Transform(comps)


def _group_moments(x: np.ndarray, g: np.ndarray, ridge: float = 1e-4):
    d = x.shape[1]
    mu = x.mean(0)
    sigma = _cov(x) + ridge * max(float(np.trace(_cov(x))) / d, 1e-12) * np.eye(d)
    per = {}
    for a in sorted(set(g.tolist())):
        xa = x[g == a]
        lam = d / (len(xa) + d)
        per[a] = (xa.mean(0), (1 - lam) * _cov(xa) + lam * sigma, len(xa) / len(x))
    return mu, sigma, per


def mean_matching(x: np.ndarray, g: np.ndarray) -> Transform:
    """Baseline: shift each group's mean onto the pooled mean."""
    mu, _, per = _group_moments(x, g)
    d = x.shape[1]
    return Transform([Component(str(a), np.eye(d), mu - m, m, s, float(np.log(p))) for a, (m, s, p) in per.items()])


def mimic(x: np.ndarray, g: np.ndarray) -> Transform:
    """Baseline MiMiC: OT map of each group's mean and covariance onto the pooled ones."""
    mu, sigma, per = _group_moments(x, g)
    comps = []
    for a, (m, s, p) in per.items():
        A, b = ot_affine(m, s, mu, sigma)
        comps.append(Component(str(a), A, b, m, s, float(np.log(p))))
    return Transform(comps)


def leace(x: np.ndarray, g: np.ndarray) -> Transform:
    """Baseline LEACE (concept-erasure) with one-hot groups, written as one affine map."""
    from concept_erasure import LeaceEraser

    groups = sorted(set(g.tolist()))
    z = torch.tensor(np.array([[1.0 if gi == a else 0.0 for a in groups] for gi in g]), dtype=torch.float64)
    xt = torch.as_tensor(x, dtype=torch.float64)
    eraser = LeaceEraser.fit(xt, z)
    d = x.shape[1]
    # eraser(x) = x - (x - bias) R^T L^T  =>  A = I - L R, b = L R bias
    lr = (eraser.proj_left @ eraser.proj_right).numpy()
    bias = eraser.bias.numpy() if eraser.bias is not None else np.zeros(d)
    return Transform([Component("all", np.eye(d) - lr, lr @ bias, x.mean(0), np.eye(d), 0.0)])


def _mixture_moments(weights, means, covs):
    w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    m = sum(wi * mi for wi, mi in zip(w, means))
    s = sum(wi * (ci + np.outer(mi - m, mi - m)) for wi, mi, ci in zip(w, means, covs))
    return m, s


def group_transform(gs: Gaussians, ideal: Ideal) -> Transform:
    """The test-time form of the steering map when the class is unknown (a model being audited does
    not know the reference answer): one affine map per group, the OT map from the group's mixture
    moments to the moments of the ideal mixture with that group's class priors. Exact when the
    class-conditionals differ only by a shared affine map; otherwise an approximation, which is why
    the known-answer test uses :func:`steering_transform` with class labels."""
    comps = []
    for a in gs.groups:
        w = [gs.prior[c][a] for c in gs.classes]
        m_src, s_src = _mixture_moments(w, [gs.mean[c][a] for c in gs.classes], [gs.cov[c][a] for c in gs.classes])
        m_dst, s_dst = _mixture_moments(w, [ideal.mean[c] for c in gs.classes], [ideal.cov[c] for c in gs.classes])
        A, b = ot_affine(m_src, s_src, m_dst, s_dst)
        comps.append(Component(str(a), A, b, m_src, s_src, float(np.log(sum(w)))))
    return Transform(comps)
