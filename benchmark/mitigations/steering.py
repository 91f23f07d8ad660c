"""``steering`` (paper 003): optimal affine steering of an LLM's hidden states, with the LEACE,
mean-matching and MiMiC baselines fitted on the same representations.

1. Representations: the hidden state of the last prompt token after decoder layer ``layer``
   (forward hook), for every counterfactual variant of every mitigation case, in the task's choice
   prompt mode. Class = the case's reference answer; group = the variant's attributes (``group_by``,
   default the intersection of all attributes). Every (class, group) cell needs ``min_cell_size``
   samples; when the requested grouping has a thinner cell, the single attribute whose smallest cell
   is largest is used instead (``choose_grouping``), and the manifest and the derived model's
   description say which grouping was used.
2. The maps act in the top ``pca_dims`` principal directions of those states (per-cell covariances
   in the full hidden size cannot be estimated from a few hundred prompts); the orthogonal
   complement is left untouched.
3. Fit (see ``gaussian.py``) and save one transform directory per variant; each becomes a derived
   model ``<base>+steering[-variant]`` whose hf backend applies it through a hook. At test time the
   class is unknown, so the optimal maps are used in their per-group form, and the group comes from
   the Gaussian probe (the model sees only the prompt).

The ideal family is paper 003's *stricter sub-family* "group-identical class-conditionals" (see
``gaussian.py``). ``affirmative`` keeps the advantaged group fixed: the configured ``advantaged``
group, else the group with the highest mean P(positive answer) of the base model on the fit prompts
(``gaussian.favoured_group``); it refuses when the question has no positive option or two groups tie.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..backends.steering import capture_last, save_transform
from ..config import ModelSpec
from ..errors import FairbenchError
from ..kinds.text.expand import expand
from ..kinds.text.prompts import build_requests
from . import gaussian as G
from .base import Context, Mitigation, MitigationConfig, ModelArtifact, TaskData

Variant = Literal["optimal", "affirmative", "leace", "mean", "mimic"]
IDEAL_FAMILY = "group-identical class-conditionals (stricter than paper 003's ideal family)"
SUFFIX = {"optimal": "steering", "affirmative": "steering-affirmative", "leace": "steering-leace",
          "mean": "steering-mean", "mimic": "steering-mimic"}


class SteeringConfig(MitigationConfig):
    layer: int = -1  # decoder layer whose output is steered (negative counts from the end)
    pca_dims: int | None = 16  # None: the full hidden size
    group_by: list[str] | None = None  # counterfactual attributes forming the group; None: all (intersection)
    variants: list[Variant] = ["optimal", "affirmative", "leace", "mean", "mimic"]
    advantaged: str | None = None  # affirmative target group, e.g. "race=White|gender=man"; None: the favoured group
    # Smallest (class, group) cell fitted: below it the Gaussian moments (pca_dims of them) are mostly the
    # shrinkage target, so the grouping falls back to one attribute (README: steering).
    min_cell_size: int = Field(20, ge=1)
    ridge: float = 1e-4
    batch_size: int = 16


def _label(reference: str, options: list[str]) -> str:
    ref = reference.strip().strip(".").strip().lower()
    for o in options:
        if ref == o.lower() or ref.startswith(o.lower()):
            return o
    raise FairbenchError(f"reference answer {reference!r} matches none of the options {options}; steering needs a class per case.")


def _labels(requests, attrs: list[str]) -> np.ndarray:
    return np.array(["|".join(f"{a}={r.attributes[a]}" for a in attrs) for r in requests])


def choose_grouping(requests, y: np.ndarray, requested: list[str], min_cell: int) -> dict:
    """The attributes that form the groups: ``requested`` when every (class, group) cell has at least
    ``min_cell`` samples, else the single attribute whose smallest cell is largest (ties: task-card
    order). Returns {"used", "requested", "min_cell_size", "smallest_cell", "fallback"}; raises
    FairbenchError when no grouping has cells that large."""
    def smallest(attrs):
        g = _labels(requests, attrs)
        return min(int(np.sum((y == c) & (g == a))) for c in set(y.tolist()) for a in set(g.tolist()))

    out = {"requested": list(requested), "min_cell_size": min_cell}
    n = smallest(requested)
    if n >= min_cell:
        return {**out, "used": list(requested), "smallest_cell": n, "fallback": None}
    single = sorted(((smallest([a]), -i, a) for i, a in enumerate(requested)), reverse=True) if len(requested) > 1 else []
    if single and single[0][0] >= min_cell:
        m, _, a = single[0]
        return {**out, "used": [a], "smallest_cell": m,
                "fallback": f"the smallest {'×'.join(requested)} cell has {n} samples (< {min_cell}); grouped by {a} alone"}
    best = max([n] + [t[0] for t in single])
    raise FairbenchError(
        f"steering: the smallest (class, group) cell has {best} samples with any grouping of {', '.join(requested)}, "
        f"below min_cell_size {min_cell}. Use more mitigation cases (lower --eval-fraction) or set min_cell_size in the config."
    )


def positive_rates(backend, requests, groups: np.ndarray, positive: str) -> dict:
    """Mean P(positive option) of the base model per group (option probabilities normalised over the
    option set, as the audit scores them)."""
    p = []
    for r, res in zip(requests, backend.score_choices(requests)):
        lp = np.asarray(res.option_logprobs, dtype=np.float64)
        prob = np.exp(lp - np.logaddexp.reduce(lp))
        p.append(prob[r.options.index(positive)])
    p = np.asarray(p)
    return {a: float(p[groups == a].mean()) for a in sorted(set(groups.tolist()))}


def representations(backend, requests, layer: int, batch_size: int) -> np.ndarray:
    handle, store = capture_last(backend.model, layer)
    try:
        ids = [backend._encode_prompt(backend.render(r.prompt)) for r in requests]
        with torch.inference_mode():
            for start in range(0, len(ids), batch_size):
                x, mask, pos = backend._pad_left(ids[start : start + batch_size])
                backend.model(input_ids=x, attention_mask=mask, position_ids=pos, logits_to_keep=1, use_cache=False)
    finally:
        handle.remove()
    return torch.cat(store).numpy().astype(np.float64)


class Steering(Mitigation):
    name = "steering"
    Config = SteeringConfig

    def apply(self, base: ModelSpec, data: TaskData, config: SteeringConfig, ctx: Context) -> ModelArtifact:
        from ..backends.hf import HFBackend

        if base.backend != "hf":
            raise FairbenchError(f'steering hooks need hidden states: model "{base.name}" uses backend {base.backend}, not hf.')
        card = data.card
        mode = card.prompt_modes[data.prompt_mode]
        if mode.method != "choice":
            raise FairbenchError(f"steering fits on the last prompt token; use a choice prompt mode, not {data.prompt_mode}.")
        attrs = config.group_by or list(card.counterfactual.attributes)
        unknown_attrs = [a for a in attrs if a not in card.counterfactual.attributes]
        if unknown_attrs:
            raise FairbenchError(f"steering config group_by: {unknown_attrs} are not attributes of task {card.name}.")
        t0 = time.perf_counter()
        variants = expand(data.cases, card.counterfactual, ctx.seed)
        q = card.questions[0]
        requests = [r for r in build_requests(card, variants, data.prompt_mode, ctx.seed) if r.question_id == q.id]
        backend = HFBackend(base, seed=ctx.seed)
        layer = config.layer
        x = representations(backend, requests, layer, config.batch_size)
        n_layers = backend.model.config.num_hidden_layers
        y = np.array([_label(r.meta.get("reference", ""), q.options) for r in requests])
        grouping = choose_grouping(requests, y, attrs, config.min_cell_size)
        attrs = grouping["used"]
        g = _labels(requests, attrs)
        advantaged, rule, rates = config.advantaged, "configured", None
        if "affirmative" in config.variants and advantaged is None:
            if not q.positive:
                raise FairbenchError(f"steering affirmative: question {q.id} of task {card.name} has no positive option, so no "
                                     "group is favoured by the data; set advantaged in the config (e.g. race=White|gender=man).")
            rates = positive_rates(backend, requests, g, q.positive)
            try:
                advantaged, rule = G.favoured_group(rates), f"highest mean P({q.positive}) of the base model on the fit prompts"
            except ValueError as exc:
                raise FairbenchError(f"steering affirmative: cannot pick the advantaged group from the data ({exc}); "
                                     "set advantaged in the config.") from None
        if "affirmative" in config.variants and advantaged not in set(g.tolist()):
            raise FairbenchError(f"steering config advantaged: {advantaged!r} is not a group of this fit; groups are "
                                 f"{', '.join(sorted(set(g.tolist())))} (grouping by {', '.join(attrs)}).")
        extract_s = time.perf_counter() - t0

        center = x.mean(0)
        k = min(config.pca_dims or x.shape[1], x.shape[1], len(x) - 1)
        _, sv, vt = np.linalg.svd(x - center, full_matrices=False)
        basis = vt[:k].T  # (d, k)
        z = (x - center) @ basis
        explained = float((sv[:k] ** 2).sum() / (sv**2).sum())

        gs = G.estimate(z, y, g, ridge=config.ridge)
        header = {"layer": layer if layer >= 0 else n_layers + layer, "pca_dims": k, "group_by": attrs, "base": base.name}
        models, details, descriptions = {}, {}, {}
        for variant in config.variants:
            info: dict = {}
            if variant in ("optimal", "affirmative"):
                ideal = G.ideal_all_subgroups(gs) if variant == "optimal" else G.ideal_affirmative(gs, advantaged)
                transform = G.group_transform(gs, ideal)
                info = {"kl_objective": round(ideal.objective, 6), "ideal": ideal.kind, "ideal_family": IDEAL_FAMILY}
                if variant == "affirmative":
                    info.update({"advantaged": advantaged, "advantaged_rule": rule, "positive_rates": rates})
            elif variant == "leace":
                transform = G.leace(z, g)
            elif variant == "mean":
                transform = G.mean_matching(z, g)
            else:
                transform = G.mimic(z, g)
            out = ctx.out_dir / SUFFIX[variant]
            save_transform(out, basis, center, transform, {**header, "variant": variant})
            steered = transform(z)
            info["probe_accuracy"] = round(float(_probe_accuracy(transform, z, g)), 4) if len(transform.components) > 1 else None
            info["mean_shift"] = round(float(np.linalg.norm(steered - z, axis=1).mean()), 6)
            details[variant] = info
            models[SUFFIX[variant]] = {"steering": str(out.resolve())}
            descriptions[SUFFIX[variant]] = (f"grouped by {'×'.join(attrs)}"
                                             + (f" ({grouping['fallback']})" if grouping["fallback"] else "")
                                             + (f"; ideal family: {IDEAL_FAMILY}" if variant in ("optimal", "affirmative") else "")
                                             + (f"; advantaged {advantaged} ({rule})" if variant == "affirmative" else ""))
        backend.close()
        return ModelArtifact(
            ctx.out_dir,
            models,
            {
                "representation": {"layer": header["layer"], "n": len(x), "hidden_size": int(x.shape[1]),
                                   "pca_dims": k, "pca_explained_variance": round(explained, 6), "group_by": attrs},
                "grouping": grouping,
                "cells": {f"{c}::{a}": gs.count[c][a] for c in gs.classes for a in gs.groups},
                "variants": details,
                "extract_seconds": round(extract_s, 3),
            },
            descriptions=descriptions,
        )


def _probe_accuracy(transform: G.Transform, z: np.ndarray, g: np.ndarray) -> float:
    labels = [c.label for c in transform.components]
    pred = np.array(labels)[transform.log_posterior(z).argmax(1)]
    return float((pred == g).mean())
