"""Row identity and file names shared by the leaderboard, its plots and the check gate (a leaf module:
it imports nothing from the other board modules, so none of them import each other in a circle)."""

from __future__ import annotations

import re

# One leaderboard row per model x task x prompt mode x evaluation split (a newer run replaces an older one).
KEY = ["task", "prompt_mode", "model", "eval_split"]


def row_key(row: dict) -> tuple:
    """The identity of a leaderboard row (or of a per-group row's parent row)."""
    return tuple(row.get(k) or "" for k in KEY)


def split_name(value) -> str:
    """Evaluation split of a run: "all" unless the run is marked (e.g. "held-out" for mitigations)."""
    return str(value) if value not in (None, "") else "all"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def group_plot_name(name: str, task: str, mode: str) -> str:
    return f"{name}.{slug(task)}.{slug(mode)}.groups.png"


def tradeoff_plot_name(name: str) -> str:
    return f"{name}.tradeoff.png"


def commit_label(git: dict | None, rescored: dict | None = None) -> str:
    """A run's commit (its model outputs), ``+dirty`` when the tree was; after `fairbench score` with
    other code, also the commit that computed the statistics: ``"RUN (scored SCORER)"``."""
    def short(g: dict | None) -> str:
        g = g or {}
        return (g.get("commit") or "")[:12] + ("+dirty" if g.get("dirty") else "")

    label = short(git)
    if rescored:
        label += f" (scored {short(rescored.get('git')) or '?'})"
    return label
