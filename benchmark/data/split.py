"""Held-out cases: a seeded split of a task's cases into a mitigation set and an evaluation set, by
case id, so that the audit of a derived model never sees the cases its mitigation was fitted on.

The split is stratified by the primary question's reference answer (Q-Pain has 1 "No" case in 11,
so an unstratified split could leave one side without any), and within a stratum the order is a
hash of (seed, case id): independent of file order and of ``--limit``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..cards.text import TaskCard
from ..errors import FairbenchError
from .cases import Case

SPLIT_FILE = "split.json"


def _order(seed: int, case_id: str) -> str:
    return hashlib.sha256(f"{seed}|{case_id}".encode()).hexdigest()


def split_cases(cases: list[Case], card: TaskCard, eval_fraction: float, seed: int) -> dict:
    if not 0.0 < eval_fraction < 1.0:
        raise FairbenchError(f"--eval-fraction must be between 0 and 1 (exclusive), got {eval_fraction}.")
    field = card.questions[0].reference_field
    strata: dict[str, list[str]] = {}
    for c in cases:
        strata.setdefault(c.fields.get(field, "") if field else "", []).append(c.case_id)
    mitigation, evaluation = [], []
    for key in sorted(strata):
        ids = sorted(strata[key], key=lambda i: _order(seed, i))
        n_eval = round(len(ids) * eval_fraction)
        if len(ids) >= 2:
            n_eval = min(max(n_eval, 1), len(ids) - 1)  # both sides get every stratum when possible
        evaluation += ids[:n_eval]
        mitigation += ids[n_eval:]
    if not mitigation or not evaluation:
        raise FairbenchError(
            f"task {card.name}: {len(cases)} case(s) cannot be split into mitigation and evaluation sets; "
            f"use a task with more cases or a different --eval-fraction."
        )
    return {
        "task": card.name,
        "seed": seed,
        "eval_fraction": eval_fraction,
        "stratified_by": field,
        "mitigation_case_ids": sorted(mitigation),
        "evaluation_case_ids": sorted(evaluation),
    }


def read_split(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FairbenchError(f"held-out split file {path} (models.yaml field eval_cases) does not exist; "
                             f"re-run `fairbench mitigate` or remove the derived model entry.")
    try:
        data = json.loads(path.read_text())
        _ = data["task"], data["evaluation_case_ids"]
    except (ValueError, KeyError, TypeError):
        raise FairbenchError(f"{path}: not a fairbench split file (needs task and evaluation_case_ids).") from None
    return data


def restrict(cases: list[Case], split_source, task: str, required: bool = False) -> tuple[list[Case], dict]:
    """Keep only the evaluation cases of ``split_source`` (a ModelSpec with ``eval_cases``) when its
    split belongs to ``task``. Returns the cases and the ``run`` info to record. ``required``: the
    user named ``split_source`` (``--cases-from``), so it must have a split."""
    if split_source is None or not split_source.eval_cases:
        if required:
            raise FairbenchError(f'--cases-from {split_source.name}: that model has no held-out split (models.yaml field '
                                 f'eval_cases); name a derived model registered by `fairbench mitigate`.')
        return cases, {"eval_split": "all"}
    split = read_split(split_source.eval_cases)
    if split["task"] != task:
        # The mitigation never saw this task's cases: every case is unseen.
        return cases, {"eval_split": "all", "split_from": split_source.name, "split_task": split["task"]}
    keep = set(split["evaluation_case_ids"])
    have = {c.case_id for c in cases}
    missing = sorted(keep - have)
    if missing:
        raise FairbenchError(
            f"{split_source.eval_cases}: {len(missing)} held-out case id(s) (e.g. {missing[0]}) are not in task {task}'s data; "
            f"the data changed since `fairbench mitigate` ran. Re-run it."
        )
    digest = hashlib.sha256(json.dumps(sorted(keep)).encode()).hexdigest()
    info = {
        "eval_split": "held-out",
        "split_from": split_source.name,
        "split_seed": split["seed"],
        "eval_case_ids_sha256": digest,
        "n_cases_mitigation": len(split.get("mitigation_case_ids", [])),
    }
    return [c for c in cases if c.case_id in keep], info
