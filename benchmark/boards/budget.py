"""The label-budget board (``fairbench leaderboard SEEDS_DIR... --reference ERM`` where the summaries come
from ``fairbench run --seeds N --label-fraction F``): one row per model x label fraction, utility and
each gap as mean with the 95% t-interval over seeds (``seeds.mean_ci``, in the summaries), and paired
t-tests across the shared seeds (``seeds.compare``) against the row's reference:

- a mitigation row against the reference model (ERM) **at the same fraction**: what the method does
  when labels are scarce;
- a reference-model row at a fraction below the largest against the reference model at the
  largest fraction (normally 1.0, the whole split): what losing labels does to ERM. The subsamples
  are nested within a seed (``data.image.budget``), so this pairing compares the same seed's model
  on a superset of its images.

Holm within each row, over the board's metrics whose test is applicable (as the multi-seed board).
Each comparison also gets the minimal detectable difference at 80% power (``audits.power.paired_t_mde``:
TTestPower's d_z for the row's number of paired seeds, two-sided alpha 0.05 before Holm, times the
observed SD of the per-seed differences), so a "n.s." reads against what the design could have seen.
Writes NAME.md, NAME.csv and the figure NAME.png (300 dpi) / .svg / .pdf: one panel per metric, x =
label fraction (log scale), one line per model, error bars = the t-intervals.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..audits.power import paired_t_mde
from ..errors import FairbenchError
from ..seeds import compare
from ..store import write_atomic
from .keys import commit_label
from .seeds import HIGHER, _load, _manifest_git

METRICS = ["auc", "accuracy", "eod", "auc_gap", "underdiag_gap"]
LABELS = {"auc": "AUC", "accuracy": "accuracy", "eod": "eod (equalised-odds gap)", "auc_gap": "auc_gap",
          "underdiag_gap": "underdiag_gap"}


def fraction_of(summary: dict, runs: list[dict]) -> float:
    """A summary's label fraction: recorded by `run --seeds N --label-fraction F`; absent = 1.0 (the whole split)."""
    f = summary.get("label_fraction", runs[0]["run"].get("label_fraction"))
    return 1.0 if f is None else float(f)


def is_budget(dirs: list[Path]) -> bool:
    """Whether any of the multi-seed directories was run with a label fraction below 1."""
    for d in dirs:
        p = Path(d) / "summary.json"
        if p.is_file() and json.loads(p.read_text()).get("label_fraction") is not None:
            return True
    return False


def _n_train(runs: list[dict], run_dirs: list[str]) -> tuple[int | None, dict | None]:
    """Images trained on (the same in every seed: strata sizes are fixed by the split) and per stratum."""
    budget = runs[0]["run"].get("label_budget")
    if budget:
        return budget["n_train"], {s: v["n"] for s, v in budget["strata"].items()}
    m = Path(run_dirs[0]) / "manifest.json"
    n = json.loads(m.read_text()).get("data", {}).get("n_images", {}).get("train") if m.is_file() else None
    return n, None


def _by_seed(runs: list[dict], metric: str) -> dict[int, float | None]:
    return {r["run"]["seed"]: r["metrics"].get(metric, {}).get("value") for r in runs}


def _sd_diff(a: list[dict], b: list[dict], metric: str) -> tuple[float | None, int]:
    va, vb = _by_seed(a, metric), _by_seed(b, metric)
    d = [va[s] - vb[s] for s in sorted(set(va) & set(vb)) if va[s] is not None and vb[s] is not None]
    return (float(np.std(d, ddof=1)) if len(d) >= 2 else None), len(d)


def build(dirs: list[Path], reference: str, metrics: list[str] | None = None) -> list[dict]:
    """Rows (one per model x fraction) with every metric's mean / CI / SD and, against the row's
    reference, Δ, raw and Holm p, the test's note and the MDE at 80% power. Raises FairbenchError when
    two summaries share a model and fraction, when the reference model is missing, or when a
    mitigation's fraction has no reference row."""
    metrics = metrics or METRICS
    cells: dict[tuple[str, float], tuple[dict, list[dict]]] = {}
    for d in dirs:
        s, runs = _load(d)
        key = (s["model"], fraction_of(s, runs))
        if key in cells:
            raise FairbenchError(f"{d}: a second summary of model {key[0]!r} at label fraction {key[1]:g}; pass one per model and fraction.")
        cells[key] = (s, runs)
    fractions_ref = sorted(f for m, f in cells if m == reference)
    if not fractions_ref:
        raise FairbenchError(f"--reference {reference!r} is not among the summaries' models {sorted({m for m, _ in cells})}.")
    full = fractions_ref[-1]
    rows = []
    for (model, f), (s, runs) in cells.items():
        if model != reference and (reference, f) not in cells:
            raise FairbenchError(f"model {model!r} at label fraction {f:g} has no {reference!r} row at the same fraction to be "
                                 f"paired with; run `fairbench run -m {reference} --label-fraction {f:g} --seeds N` too.")
        n_train, strata = _n_train(runs, s["runs"])
        row = {"task": s["task"], "model": model, "base_model": runs[0]["run"].get("base_model"), "label_fraction": f,
               "n_train": n_train, "n_train_strata": json.dumps(strata, sort_keys=True) if strata else None,
               "n_seeds": len(s["seeds"]), "seeds": " ".join(map(str, s["seeds"])), "n_test": runs[0].get("n_test"),
               "git_commit": ", ".join(sorted({commit_label(_manifest_git(r), s.get("rescored")) for r in s["runs"]}))}
        for m in metrics:
            e = s["metrics"].get(m, {})
            row[m], row[f"{m}_ci_low"], row[f"{m}_ci_high"], row[f"{m}_sd"] = e.get("mean"), e.get("ci_low"), e.get("ci_high"), e.get("sd")
            row[f"{m}_note"] = e.get("note") if e.get("ci_low") is None else None
            row[f"{m}_n_missing"] = e.get("n_missing")
        ref = (reference, f) if model != reference else ((reference, full) if f != full else None)
        row["vs"] = None if ref is None else f"{ref[0]} @ {ref[1]:g}"
        if ref is not None:
            other = cells[ref][1]
            tests = {t["target"]: t for t in compare(runs, other, metrics)["tests"]}
            for m in metrics:
                t = tests.get(m, {})
                sd, n = _sd_diff(runs, other, m)
                power = paired_t_mde(sd, n)
                row[f"{m}_diff"], row[f"{m}_p"], row[f"{m}_p_holm"] = t.get("mean_diff"), t.get("p_value"), t.get("p_adjusted")
                row[f"{m}_test_note"] = t.get("note") if t and not t.get("applicable") else None
                row[f"{m}_sd_diff"], row[f"{m}_mde80"] = sd, power["mde"]
        rows.append(row)
    rows.sort(key=lambda r: (r["model"] != reference, r["model"], -r["label_fraction"]))
    return rows


def _fmt_cell(r: dict, m: str) -> str:
    if r.get(m) is None:
        return "-"
    lo, hi = r.get(f"{m}_ci_low"), r.get(f"{m}_ci_high")
    txt = f"{r[m]:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{r[m]:.3f}"
    if lo is None and r.get(f"{m}_note"):
        txt += f" ({str(r[f'{m}_note']).split(':')[0]})"
    if r.get(f"{m}_n_missing"):
        txt += f" ({int(r[f'{m}_n_missing'])} of {r.get('n_seeds')} seeds missing)"
    if r.get(f"{m}_diff") is not None:
        p = r.get(f"{m}_p_holm")
        if p is not None:
            better = (r[f"{m}_diff"] > 0) == HIGHER.get(m, False)
            txt += f" Δ{r[f'{m}_diff']:+.3f} p={p:.3g}" + (("↑" if better else "↓") if p < 0.05 else " n.s.")
        else:
            why = str(r.get(f"{m}_test_note") or "").split(":")[0]
            txt += f" Δ{r[f'{m}_diff']:+.3f} (no test{': ' + why if why else ''})"
        if r.get(f"{m}_mde80") is not None:
            txt += f" MDE {r[f'{m}_mde80']:.3f}"
    return txt


def render(name: str, rows: list[dict], reference: str, figure: str | None, command: str | None = None,
           metrics: list[str] | None = None) -> str:
    metrics = metrics or METRICS
    n = sorted({r["n_seeds"] for r in rows})
    dz = paired_t_mde(1.0, n[0])["d_z"] if n and n[0] >= 2 else None
    lines = [f"# {name}", "",
             f"Task `{rows[0]['task']}` (imaging), test split. Each row trains on a seeded, stratified (primary label x primary "
             "attribute) and nested subsample of the train split — the share in column *fraction*, *n_train* images — with "
             "the same validation and test splits; thresholds are tuned on validation in every run. Values are means over the "
             "row's seeds with the 95% t-interval (clipped to [0, 1]; none where every seed agrees). Δ = mean paired difference "
             f"against the row's reference (*vs*): a mitigation against `{reference}` at the same fraction, `{reference}` below "
             "the largest fraction against itself at the largest; p = paired t-test over the shared seeds, Holm-corrected over "
             "the row's metrics that can be tested; ↑ / ↓ = significantly better / worse (Holm p < 0.05), n.s. = not "
             "significant. MDE = the mean difference a two-sided paired t-test would detect with 80% power at α = 0.05 "
             f"(before Holm) with the row's seeds: d_z = {dz:.2f} × the observed SD of the per-seed differences"
             + (f" (n = {n[0]} seeds)." if dz is not None else "."), "",
             "| model | fraction | n_train | vs | seeds | " + " | ".join(metrics) + " |",
             "|---|---|---|---|---|" + "---|" * len(metrics)]
    for r in rows:
        vs = f"`{r['vs']}`" if r.get("vs") else "—"
        lines.append(f"| `{r['model']}` | {r['label_fraction']:g} | {r['n_train'] if r.get('n_train') is not None else '-'} | {vs} | "
                     f"{r['seeds']} | " + " | ".join(_fmt_cell(r, m) for m in metrics) + " |")
    if figure:
        lines += ["", f"![metrics against the label fraction]({figure})"]
    commits = sorted({r.get("git_commit") or "?" for r in rows})
    lines += ["", f"Runs of commit {', '.join(commits)}." + (f" Board: `{command}`." if command else "")]
    return "\n".join(lines) + "\n"


def draw(png: Path, rows: list[dict], metrics: list[str] | None = None) -> list[Path]:
    """One panel per metric, x = label fraction (log scale, ticks at the fractions), one line per model
    with the seeds' t-interval as error bars (none where the seeds agree), models dodged slightly on x
    so that their bars do not hide each other. Written through ``plots._save`` (PNG 300 dpi, SVG, PDF)."""
    from .plots import COLORS, MARKERS, _err, _save, figure_paths, plt

    metrics = metrics or METRICS
    models = list(dict.fromkeys(r["model"] for r in rows))
    fractions = sorted({r["label_fraction"] for r in rows})
    if not rows:
        return []
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.3 * len(metrics), 2.6), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for i, model in enumerate(models):
            pts = sorted((r for r in rows if r["model"] == model and r.get(m) is not None), key=lambda r: r["label_fraction"])
            if not pts:
                continue
            dodge = 1 + 0.03 * (i - (len(models) - 1) / 2)  # multiplicative: the axis is logarithmic
            x = [r["label_fraction"] * dodge for r in pts]
            v = [r[m] for r in pts]
            lo = [r.get(f"{m}_ci_low") if r.get(f"{m}_ci_low") is not None else r[m] for r in pts]
            hi = [r.get(f"{m}_ci_high") if r.get(f"{m}_ci_high") is not None else r[m] for r in pts]
            ax.errorbar(x, v, yerr=_err(v, lo, hi), color=COLORS[i % len(COLORS)], marker=MARKERS[i % len(MARKERS)],
                        ms=4, lw=1, capsize=2, label=model)
        ax.set_xscale("log")
        ax.set_xticks(fractions)
        ax.set_xticklabels([f"{f:g}" for f in fractions])
        ax.minorticks_off()
        ax.set_title(LABELS.get(m, m))
        ax.set_xlabel("label fraction")
        ax.grid(alpha=0.3, lw=0.5)
    axes[0][0].set_ylabel("mean over seeds, 95% t-CI")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(models)), frameon=False, bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    _save(fig, png)
    return figure_paths(png)


def write(dirs: list[Path], output: Path, reference: str, plots: bool = True, command: str | None = None) -> dict[str, Path]:
    from .leaderboard import output_base

    rows = build(dirs, reference)
    base = output_base(Path(output))
    base.parent.mkdir(parents=True, exist_ok=True)
    out = {"csv": base.with_suffix(".csv"), "md": base.with_suffix(".md")}
    write_atomic(out["csv"], pd.DataFrame(rows).to_csv(index=False, float_format="%.6g"))
    figure = None
    if plots:
        for p in draw(base.with_suffix(".png"), rows):
            out[p.suffix[1:]] = p
        figure = base.with_suffix(".png").name
    write_atomic(out["md"], render(base.name, rows, reference, figure, command))
    return out


def read(csv_path: Path) -> list[dict]:
    """A label-budget board's rows from its CSV alone (for a redraw without the runs)."""
    df = pd.read_csv(csv_path, dtype={c: str for c in ("task", "model", "base_model", "seeds", "vs", "n_train_strata")},
                     keep_default_na=False, na_values=[""])
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else (v.item() if hasattr(v, "item") else v)) for k, v in rec.items()}
            for rec in df.to_dict("records")]
    if not rows or "label_fraction" not in rows[0]:
        raise FairbenchError(f"{csv_path}: not a label-budget board CSV (no label_fraction column).")
    return rows
