"""FairMed-VLM's training losses (paper 001, Sections 3.3-3.4), as plain tensor functions.

- :func:`concept_infonce`: Stage 1 concept alignment, InfoNCE between image embeddings and concept
  text embeddings (the positive concept against the other concepts).
- :func:`cross_group_supcon`: the cross-group supervised contrastive loss. For anchor i, positives
  share the label and differ in group; negatives have another label **and** cosine similarity >
  ``margin`` (hard negatives). Anchors without a positive are skipped; never NaN.
- :func:`moment_alignment`: per (label, attribute, group) mean and covariance pulled to the label's
  average over the attribute's groups; ``lambda_sigma`` weights the covariance term.
- :func:`fairness_loss`: ``eta1 * L_supcon + eta2 * L_dist`` (the caller multiplies by lambda).

Hand-written: no library implements these label-conditioned cross-group variants (pytorch-metric-
learning's SupConLoss has no cross-group positives or margin-selected negatives).
The paper sums over anchors / pairs; here every term is a **mean** over the anchors (or cells) that
contribute, so the weights (lambda = 0.1, eta) do not depend on the batch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Masked logits use a large finite value instead of -inf: logsumexp over an all-masked row stays
# finite, so neither the value nor the gradient can become NaN.
_MASKED = -1e9


def concept_infonce(z: torch.Tensor, concepts: torch.Tensor, target: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """Mean over rows of ``-log softmax(z_i . e_c / tau)[target_i]``.

    ``z``: (N, D) image embeddings; ``concepts``: (C, D) shared concept embeddings or (N, C, D)
    per-row candidates (e.g. demographic-prefixed prompts); ``target``: (N,) index of the positive
    concept. Both sides are L2-normalised (cosine similarity)."""
    z = F.normalize(z, dim=-1)
    e = F.normalize(concepts, dim=-1)
    logits = (z @ e.T if e.ndim == 2 else torch.einsum("nd,ncd->nc", z, e)) / tau
    return F.cross_entropy(logits, target.long())


def cross_group_supcon(z: torch.Tensor, y: torch.Tensor, group: torch.Tensor, tau: float = 0.07, margin: float = 0.3) -> torch.Tensor:
    """Cross-group supervised contrastive loss over one batch.

    ``z``: (N, D) embeddings (normalised here); ``y``: (N,) labels; ``group``: (N,) integer group
    codes (negative = unknown group: such rows are neither anchors nor positives).
    For anchor i with positive set P(i) and hard negatives N(i):
    ``l_i = mean_{p in P(i)} -log(exp(s_ip/tau) / (exp(s_ip/tau) + sum_{a in N(i)} exp(s_ia/tau)))``;
    the loss is the mean of l_i over anchors with |P(i)| > 0 (0 when there are none)."""
    z = F.normalize(z, dim=-1)
    sim = z @ z.T
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    known = group >= 0
    same_y = y[:, None] == y[None, :]
    pos = same_y & (group[:, None] != group[None, :]) & known[:, None] & known[None, :] & ~eye
    # Negative selection is a hard threshold on the similarity (not differentiable by nature).
    neg = ~same_y & (sim.detach() > margin)
    logits = sim / tau
    neg_lse = torch.logsumexp(logits.masked_fill(~neg, _MASKED), dim=1)  # ~ -1e9 when no negative
    # -log(e^s / (e^s + e^n)) = softplus(n - s): stable, 0 when the anchor has no negatives.
    term = F.softplus(neg_lse[:, None] - logits) * pos
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not bool(has.any()):
        return z.sum() * 0.0  # keeps the graph (and the device) without contributing
    return (term.sum(1)[has] / n_pos[has]).mean()


def _cov(x: torch.Tensor) -> torch.Tensor:
    xc = x - x.mean(0, keepdim=True)
    return xc.T @ xc / (x.shape[0] - 1)


def moment_alignment(z: torch.Tensor, y: torch.Tensor, groups: torch.Tensor, lambda_sigma: float = 1.0, min_count: int = 2) -> torch.Tensor:
    """Label-conditioned moment alignment.

    ``groups``: (N, K) integer codes, one column per attribute (negative = unknown). For each label
    y and attribute k, the cells S_{y,k,d} with at least ``min_count`` rows (a covariance needs
    two) give mean mu_{y,k,d} and covariance Sigma_{y,k,d}; with the label's average over those
    cells (mu_bar, Sigma_bar), the loss is the mean over cells of
    ``||mu - mu_bar||^2 + lambda_sigma * ||Sigma - Sigma_bar||_F^2``. Labels or attributes with
    fewer than two usable cells contribute nothing."""
    if groups.ndim == 1:
        groups = groups[:, None]
    terms = []
    for label in torch.unique(y):
        in_label = y == label
        for k in range(groups.shape[1]):
            mus, covs = [], []
            for d in torch.unique(groups[in_label, k]):
                if d < 0:
                    continue
                cell = z[in_label & (groups[:, k] == d)]
                if cell.shape[0] < min_count:
                    continue
                mus.append(cell.mean(0))
                covs.append(_cov(cell))
            if len(mus) < 2:
                continue
            mu, cov = torch.stack(mus), torch.stack(covs)
            mu_bar, cov_bar = mu.mean(0, keepdim=True), cov.mean(0, keepdim=True)
            terms.append(((mu - mu_bar) ** 2).sum(1) + lambda_sigma * ((cov - cov_bar) ** 2).sum((1, 2)))
    if not terms:
        return z.sum() * 0.0
    return torch.cat(terms).mean()


def fairness_loss(
    z: torch.Tensor, y: torch.Tensor, strata: torch.Tensor, attributes: torch.Tensor, *,
    eta1: float = 1.0, eta2: float = 1.0, tau: float = 0.07, margin: float = 0.3, lambda_sigma: float = 1.0,
) -> tuple[torch.Tensor, dict]:
    """``eta1 * L_supcon + eta2 * L_dist`` and its parts. ``strata``: (N,) intersectional group code
    (supcon positives differ in it); ``attributes``: (N, K) per-attribute codes (moment alignment)."""
    zero = z.sum() * 0.0
    supcon = cross_group_supcon(z, y, strata, tau, margin) if eta1 else zero
    dist = moment_alignment(F.normalize(z, dim=-1), y, attributes, lambda_sigma) if eta2 else zero
    return eta1 * supcon + eta2 * dist, {"supcon": float(supcon.detach()), "dist": float(dist.detach())}
