"""Leaderboard figures for papers: per-group outcomes with 95% CIs, and utility against a fairness gap
with the Pareto frontier (the FairMed-VLM trade-off figure). Every figure is written three times, next
to each other: ``NAME.png`` at 300 dpi, ``NAME.svg`` and ``NAME.pdf`` (vector, fonts embedded), with
no dates or versions in the files, so the same data gives the same bytes."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .keys import group_plot_name, row_key, tradeoff_plot_name  # noqa: E402

# Colour-blind-safe (Okabe-Ito) palette without its yellow (too little contrast on white), each
# colour with its own marker so that a figure also reads in greyscale.
COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
MARKERS = "osD^vP<>"
DPI = 300  # print resolution for the PNG; SVG and PDF are vector
FORMATS = (".png", ".svg", ".pdf")
plt.rcParams.update({"svg.hashsalt": "fairbench", "svg.fonttype": "none", "pdf.fonttype": 42, "font.size": 9,
                     "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8})
# No dates or versions in the files: the same data gives the same bytes on every machine.
METADATA = {".png": {"Software": None}, ".svg": {"Date": None, "Creator": None}, ".pdf": {"CreationDate": None, "Creator": None, "Producer": None}}


def figure_paths(path: Path) -> list[Path]:
    """Every file a figure is written as: ``NAME.png`` (300 dpi) and, next to it, ``NAME.svg`` and ``NAME.pdf``."""
    return [path.with_suffix(ext) for ext in FORMATS]


def _save(fig, path: Path) -> None:
    for out in figure_paths(path):
        tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", metadata=METADATA[out.suffix])
        tmp.replace(out)
    plt.close(fig)


def _err(values, lows, highs) -> np.ndarray:
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    lo = np.array([np.nan if x is None else x for x in lows], dtype=float)
    hi = np.array([np.nan if x is None else x for x in highs], dtype=float)
    return np.nan_to_num(np.vstack([v - lo, hi - v]), nan=0.0).clip(min=0)


def _label(model: str, split: str) -> str:
    return f"{model} ({split})" if split and split != "all" else model


def value_axis(values: list[float], value: str) -> tuple[tuple[float, float], str]:
    """The y range a group figure needs: expected Likert scores on their 1-5 scale; probabilities and
    AUCs zoomed to the data (with their CIs), kept inside [0, 1]."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return (0.0, 1.0), ""
    lo, hi = min(vals), max(vals)
    if value == "mean_outcome" and hi > 1.0 + 1e-9:  # an expected score on an ordinal scale
        top = 5.0 if hi <= 5.0 else float(math.ceil(hi))
        bottom = 1.0 if lo >= 1.0 else 0.0
        return (bottom - 0.05 * (top - bottom), top + 0.05 * (top - bottom)), "ordinal"
    span = max(hi - lo, 0.02)
    return (max(0.0, lo - 0.15 * span), min(1.0, hi + 0.15 * span)), "probability"


def group_bars(rows: list[dict], groups: list[dict], title: str, path: Path, value: str = "mean_outcome",
               ylabel: str = "mean outcome (95% CI)") -> bool:
    """One panel per attribute: ``value`` per group (text: mean outcome; imaging: AUC) as a point with
    its 95% CI, one colour and marker per model. Points, not bars, so the axis can zoom to the effect
    (a bar's length would mislead on a zoomed axis); each model's mean over the groups is drawn as a
    dashed line: no group effect means every point on it. The legend sits below the panels."""
    groups = [g for g in groups if g.get(value) is not None]
    if not groups:
        return False
    attributes = list(dict.fromkeys(g["attribute"] for g in groups))
    models = [(r["model"], r.get("eval_split") or "") for r in rows]
    present = {(g["model"], g.get("eval_split") or "") for g in groups}
    models = [m for m in models if m in present] or sorted(present)
    (ylo, yhi), scale = value_axis([g.get(k) for g in groups for k in (value, f"{value}_ci_low", f"{value}_ci_high")], value)
    widths = [max(1.6, 0.42 * len({g["group"] for g in groups if g["attribute"] == a}) * max(1, len(models)) ** 0.35 + 0.6) for a in attributes]
    fig, axes = plt.subplots(1, len(attributes), figsize=(min(sum(widths) + 1.2, 13), 3.4),
                             gridspec_kw={"width_ratios": widths}, squeeze=False, sharey=True)
    span = 0.7
    step = span / max(1, len(models))
    for ax, attr in zip(axes[0], attributes):
        names = list(dict.fromkeys(g["group"] for g in groups if g["attribute"] == attr))
        x = np.arange(len(names))
        for i, (model, split) in enumerate(models):
            sel = {g["group"]: g for g in groups if g["attribute"] == attr and g["model"] == model and (g.get("eval_split") or "") == split}
            vals = [sel[n][value] if n in sel else None for n in names]
            err = _err(vals, [sel.get(n, {}).get(f"{value}_ci_low") for n in names], [sel.get(n, {}).get(f"{value}_ci_high") for n in names])
            xs = x + (i - (len(models) - 1) / 2) * step
            ys = np.array([np.nan if v is None else v for v in vals], dtype=float)
            color = COLORS[i % len(COLORS)]
            if np.isfinite(ys).any():
                ax.axhline(np.nanmean(ys), color=color, lw=0.8, ls=(0, (4, 3)), alpha=0.8, zorder=1)
            ax.errorbar(xs, ys, yerr=err, fmt=MARKERS[i % len(MARKERS)], color=color, ms=4.5, capsize=2, lw=1.2,
                        elinewidth=1.2, label=_label(model, split), zorder=3)
        pretty = [re.sub(r"[^|=]+=", "", n).replace("|", "\n") for n in names]  # race=Black|gender=man -> Black / man
        ax.set_xticks(x, pretty, rotation=0 if attr != "intersection" and len(names) <= 6 else 90)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_title(attr)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[0][0].set_ylim(ylo, yhi)
    if scale == "ordinal":
        axes[0][0].set_yticks(np.arange(math.ceil(ylo), math.floor(yhi) + 1))
    axes[0][0].set_ylabel(ylabel + (" (Likert scale)" if scale == "ordinal" else ""))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    handles, labels = axes[0][0].get_legend_handles_labels()
    # Below the panels (outside every axes), so it never covers a point; the saved box includes it.
    fig.legend(handles, labels, loc="upper center", ncol=min(4, len(labels)), frameon=False, bbox_to_anchor=(0.5, 0.0))
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
    """Utility against ``metric``, one panel per (task, prompt mode), one point per model with 95% CIs
    on both axes. The Pareto frontier (dashed) is drawn only when it joins two or more models. A task
    whose rows have no utility (no reference answer) or no value of the metric cannot be placed: it is
    named in the figure's caption instead of being dropped silently.
    ``block_metrics``: {(task, prompt mode): metric} for panels whose rows lack ``metric`` (a mixed board)."""
    blocks: dict[tuple, list[dict]] = {}
    missing: dict[tuple, list[str]] = {}
    for r in rows:
        key = (r["task"], r["prompt_mode"])
        m = (block_metrics or {}).get(key, metric)
        if r.get("utility") is not None and r.get(m) is not None:
            blocks.setdefault(key, []).append(r)
        else:
            why = "no utility (no reference answer)" if r.get("utility") is None else f"no {m}"
            missing.setdefault(key, []).append(f"{_label(r['model'], r.get('eval_split') or '')}: {why}")
    if not blocks:
        return False
    fig, axes = plt.subplots(1, len(blocks), figsize=(3.6 * len(blocks) + 0.4, 3.3), squeeze=False)
    default = metric
    entries: dict[str, object] = {}
    for ax, ((task, mode), block) in zip(axes[0], blocks.items()):
        metric = (block_metrics or {}).get((task, mode), default)
        pts = [(float(r[metric]), float(r["utility"])) for r in block]
        for i, r in enumerate(block):
            xerr = _err([r[metric]], [r.get(f"{metric}_ci_low")], [r.get(f"{metric}_ci_high")])
            yerr = _err([r["utility"]], [r.get("utility_ci_low")], [r.get("utility_ci_high")])
            name = _label(r["model"], r.get("eval_split") or "")
            k = list(dict.fromkeys([*entries, name])).index(name)
            h = ax.errorbar(*pts[i], xerr=xerr, yerr=yerr, fmt=MARKERS[k % len(MARKERS)], color=COLORS[k % len(COLORS)],
                            ecolor=COLORS[k % len(COLORS)], elinewidth=0.8, alpha=0.95, capsize=2, markersize=5, label=name, zorder=3)
            entries.setdefault(name, h)
        front = [pts[i] for i in pareto_front(pts)]
        if len(front) > 1:
            (h,) = ax.step([p[0] for p in front], [p[1] for p in front], where="post", ls="--", color="0.35", lw=1, zorder=2)
            entries.setdefault("Pareto frontier", h)
        ax.set_xlabel(f"{metric} (lower is fairer)")
        ax.set_ylabel(f"{block[0].get('utility_metric') or 'utility'} (higher is better)")
        ax.set_title(f"{task} · {mode}")
        ax.grid(alpha=0.3)
        ax.margins(0.15)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        # Gaps and utilities are non-negative: keep the axes from suggesting otherwise.
        lo, hi = ax.get_xlim()
        ax.set_xlim(max(lo, 0.0), max(hi, 0.02))
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, 0.0), min(max(hi, 0.1), 1.02))
    fig.tight_layout()
    # Outside the axes (right of the last panel), so it never hides a point.
    fig.legend(list(entries.values()), list(entries), loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    if missing:
        notes = [f"{t} · {m}: " + "; ".join(v) for (t, m), v in missing.items()]
        fig.text(0.01, -0.02, "Not shown — " + " | ".join(notes), ha="left", va="top", fontsize=7, color="0.25", wrap=True)
    _save(fig, path)
    return True


def tradeoff_caption(rows: list[dict], metric: str, block_metrics: dict | None = None) -> str:
    """The caption of :func:`tradeoff`'s figure, naming the rows it could not place."""
    missing = []
    for r in rows:
        m = (block_metrics or {}).get((r["task"], r["prompt_mode"]), metric)
        if r.get("utility") is None or r.get(m) is None:
            missing.append(f"{r['model']} on {r['task']} · {r['prompt_mode']} (" +
                           ("no utility: the task has no reference answer" if r.get("utility") is None else f"no {m}") + ")")
    text = "Utility against fairness, one point per model (95% CIs on both axes); dashed: Pareto frontier where it joins two or more models."
    return text + (" Not shown: " + "; ".join(missing) + "." if missing else "")


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
