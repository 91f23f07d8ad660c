"""Leaderboard figures (matplotlib, PNG): per-group outcome bars with 95% CIs, and utility against a
fairness gap with the Pareto frontier (the FairMed-VLM trade-off figure)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .keys import group_plot_name, row_key, tradeoff_plot_name  # noqa: E402

# Colour-blind-safe (Okabe-Ito) palette.
COLORS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


def _save(fig, path: Path) -> None:
    # metadata without the matplotlib version: the same data gives the same bytes on every machine.
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    tmp.replace(path)


def _err(values, lows, highs) -> np.ndarray:
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    lo = np.array([np.nan if x is None else x for x in lows], dtype=float)
    hi = np.array([np.nan if x is None else x for x in highs], dtype=float)
    return np.nan_to_num(np.vstack([v - lo, hi - v]), nan=0.0).clip(min=0)


def _label(model: str, split: str) -> str:
    return f"{model} ({split})" if split and split != "all" else model


def group_bars(rows: list[dict], groups: list[dict], title: str, path: Path, value: str = "mean_outcome",
               ylabel: str = "mean outcome (95% CI)") -> bool:
    """One panel per attribute: ``value`` per group (text: mean outcome; imaging: AUC), one bar per
    model, 95% CI whiskers where the group rows have them."""
    groups = [g for g in groups if g.get(value) is not None]
    if not groups:
        return False
    attributes = list(dict.fromkeys(g["attribute"] for g in groups))
    models = [(r["model"], r.get("eval_split") or "") for r in rows]
    widths = [max(2.2, 0.55 * len({g["group"] for g in groups if g["attribute"] == a}) * max(1, len(models)) ** 0.5) for a in attributes]
    fig, axes = plt.subplots(1, len(attributes), figsize=(min(sum(widths) + 1.5, 18), 4.2),
                             gridspec_kw={"width_ratios": widths}, squeeze=False, sharey=True)
    width = 0.8 / max(1, len(models))
    for ax, attr in zip(axes[0], attributes):
        names = list(dict.fromkeys(g["group"] for g in groups if g["attribute"] == attr))
        x = np.arange(len(names))
        for i, (model, split) in enumerate(models):
            sel = {g["group"]: g for g in groups if g["attribute"] == attr and g["model"] == model and (g.get("eval_split") or "") == split}
            vals = [sel[n][value] if n in sel else None for n in names]
            err = _err(vals, [sel.get(n, {}).get(f"{value}_ci_low") for n in names], [sel.get(n, {}).get(f"{value}_ci_high") for n in names])
            ax.bar(x + (i - (len(models) - 1) / 2) * width, [np.nan if v is None else v for v in vals], width,
                   yerr=err, capsize=2, color=COLORS[i % len(COLORS)], label=_label(model, split), edgecolor="white", linewidth=0.5)
        pretty = [n.replace("|", "\n").replace(f"{attr}=", "") for n in names]
        ax.set_xticks(x, pretty, fontsize=8, rotation=0 if attr != "intersection" else 90)
        ax.set_title(attr, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=11)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.03))
    fig.tight_layout()
    _save(fig, path)
    return True


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated when lower x (gap) and higher y (utility) are better,
    ordered by x."""
    idx = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in idx:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def tradeoff(rows: list[dict], metric: str, path: Path, block_metrics: dict | None = None) -> bool:
    """Utility against ``metric``, one panel per (task, prompt mode), one point per model.
    ``block_metrics``: {(task, prompt mode): metric} for panels whose rows lack ``metric`` (a mixed board)."""
    blocks: dict[tuple, list[dict]] = {}
    for r in rows:
        m = (block_metrics or {}).get((r["task"], r["prompt_mode"]), metric)
        if r.get("utility") is not None and r.get(m) is not None:
            blocks.setdefault((r["task"], r["prompt_mode"]), []).append(r)
    if not blocks:
        return False
    fig, axes = plt.subplots(1, len(blocks), figsize=(4.6 * len(blocks), 4.0), squeeze=False)
    default = metric
    for ax, ((task, mode), block) in zip(axes[0], blocks.items()):
        metric = (block_metrics or {}).get((task, mode), default)
        pts = [(float(r[metric]), float(r["utility"])) for r in block]
        for i, r in enumerate(block):
            xerr = _err([r[metric]], [r.get(f"{metric}_ci_low")], [r.get(f"{metric}_ci_high")])
            yerr = _err([r["utility"]], [r.get("utility_ci_low")], [r.get("utility_ci_high")])
            marker = "os^Dv"[(i // len(COLORS)) % 5]  # a new marker each time the colours repeat
            ax.errorbar(*pts[i], xerr=xerr, yerr=yerr, fmt=marker, color=COLORS[i % len(COLORS)], ecolor="0.6",
                        capsize=2, markersize=6, label=_label(r["model"], r.get("eval_split") or ""))
            if len(block) <= 3:  # with more points, inline names collide; the legend names them
                ax.annotate(_label(r["model"], r.get("eval_split") or ""), pts[i], textcoords="offset points",
                            xytext=(5, 5), fontsize=7)
        front = [pts[i] for i in pareto_front(pts)]
        if len(front) > 1:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", ls="--", color="0.3", lw=1, label="Pareto frontier")
        else:
            ax.plot(*front[0], marker="o", ms=13, mfc="none", mec="0.3", ls="none", label="Pareto frontier")
        ax.set_xlabel(f"{metric} (lower is fairer)")
        ax.set_ylabel(f"{block[0].get('utility_metric') or 'utility'} (higher is better)")
        ax.set_title(f"{task} · {mode}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.margins(0.15)
        # Gaps and utilities are non-negative: keep the axes from suggesting otherwise.
        lo, hi = ax.get_xlim()
        ax.set_xlim(max(lo, -0.05 * max(hi, 0.02)), max(hi, 0.02))
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, -0.05), min(max(hi, 0.1), 1.05))
    handles, labels = axes[0][-1].get_legend_handles_labels()
    # Outside the axes, so it never hides a point.
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    _save(fig, path)
    return True


def draw_all(base: Path, rows: list[dict], groups: list[dict], metric: str, block_metrics: dict | None = None) -> dict:
    """Draw every figure of a leaderboard next to ``base``; returns {(task, mode) | "tradeoff": file name}.
    Text blocks plot the mean outcome by group, imaging blocks (rows of kind imaging) the AUC by group."""
    out: dict = {}
    blocks: dict[tuple, list[dict]] = {}
    for r in rows:
        blocks.setdefault((r["task"], r["prompt_mode"]), []).append(r)
    for (task, mode), block in blocks.items():
        keys = {row_key(r) for r in block}
        fname = group_plot_name(base.name, task, mode)
        imaging = any(r.get("kind") == "imaging" for r in block)
        value, what = ("auc", "AUC") if imaging else ("mean_outcome", "mean outcome")
        ylabel = "AUC (point estimate)" if imaging else "mean outcome (95% CI)"
        if group_bars(block, [g for g in groups if row_key(g) in keys], f"{task} · {mode}: {what} by group",
                      base.with_name(fname), value=value, ylabel=ylabel):
            out[(task, mode)] = fname
    fname = tradeoff_plot_name(base.name)
    if tradeoff(rows, metric, base.with_name(fname), block_metrics):
        out["tradeoff"] = fname
    return out
