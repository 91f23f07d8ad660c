"""Multi-seed leaderboards (``fairbench leaderboard SEEDS_DIR... --reference MODEL [--control ROWS=CONTROL]``):
one row per model from the ``summary.json`` of ``fairbench run --seeds N``, every metric as mean ± 95%
t-CI over seeds, and paired t-tests (``seeds.compare``) against the row's reference across the shared
seeds: ``--reference`` (e.g. ERM) unless a ``--control`` glob names the row's like-for-like control
(e.g. ``'*fairmed-vlm*=vit-tiny+erm-lora'``: the LoRA methods against ERM through the same adapter).
The raw p-values of the board's metrics are Holm-corrected together per row (``seeds.compare`` with the
board's metrics: statsmodels ``multipletests`` over the applicable tests), so the family is exactly the
columns shown that could be tested; a test without variation across seeds is left out and shown as
"(no test: no variation)"; a difference whose Holm p is not below 0.05 is marked ``n.s.``. A mean whose
seeds all agree has no interval ("(no variation)"), and seeds without a value are counted in the cell
("(1 of 5 seeds missing)"). Writes NAME.md, NAME.csv and the trade-off plot
NAME.tradeoff.png (300 dpi), .svg and .pdf (utility against the kind's headline gap, Pareto frontier;
the boards' paper-figure code). ``fairbench report NAME.csv`` renders such a board as HTML (``report.seeds_board_view``).

Kind, prompt mode and evaluation split come from the runs' ``results.json`` (schema 2). Imaging rows
lead with the gaps a perfect classifier closes whatever the groups' base rates (eod, auc_gap,
underdiag_gap), then AUC, accuracy, worst-group AUC, and dp_gap last: a perfect classifier's dp_gap
equals the difference of the groups' prevalences (0.20 on synth-xray), so it is not a bias measure
where base rates differ. Text rows show accuracy and the counterfactual metrics."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pandas as pd

from ..errors import FairbenchError
from ..seeds import compare
from ..store import read_results, write_atomic
from .keys import commit_label, split_name, tradeoff_plot_name

METRICS_BY_KIND = {
    "imaging": ["eod", "auc_gap", "underdiag_gap", "auc", "accuracy", "worst_group_auc", "dp_gap"],
    "text": ["accuracy", "cf_flip_rate", "cf_mean_abs_delta", "dp_gap"],
}
METRICS = METRICS_BY_KIND["imaging"]
HIGHER = {"accuracy": True, "auc": True, "worst_group_auc": True, "agreement": True,
          "dp_gap": False, "eod": False, "auc_gap": False, "underdiag_gap": False, "cf_flip_rate": False, "cf_mean_abs_delta": False}
# The gap on the trade-off plot and the sort key (lower first), per kind (imaging: eod, 0 for a perfect classifier).
HEADLINE_GAP = {"imaging": "eod", "text": "cf_mean_abs_delta"}


def run_kind(results: dict) -> str:
    """``imaging`` or ``text``: the results' kind, else read off the audits present (schema 2)."""
    kind = results.get("kind") or results.get("run", {}).get("kind")
    if kind in METRICS_BY_KIND:
        return kind
    audits = results.get("audits") or {}
    if "counterfactual" in audits:
        return "text"
    return "imaging"  # summaries of `run --seeds N` have been imaging runs (group metrics)


def _metrics(kinds: set[str]) -> list[str]:
    return list(dict.fromkeys(m for k in sorted(kinds) for m in METRICS_BY_KIND[k]))


def _load(d: Path) -> tuple[dict, list[dict]]:
    p = Path(d) / "summary.json"
    if not p.is_file():
        raise FairbenchError(f"{d}: no summary.json; pass directories written by `fairbench run --seeds N`.")
    s = json.loads(p.read_text())
    runs = []
    for r in s["runs"]:
        rp = Path(r) / "results.json"
        if not rp.is_file():
            raise FairbenchError(f"{p}: run directory {r} (field runs) has no results.json; re-run the seeds.")
        runs.append(read_results(Path(r)))
    return s, runs


def _manifest_git(run_dir: str) -> dict | None:
    p = Path(run_dir) / "manifest.json"
    return json.loads(p.read_text()).get("git") if p.is_file() else None


def is_seeds_dir(d: Path) -> bool:
    return (Path(d) / "summary.json").is_file()


def parse_controls(items: list[str] | None) -> list[tuple[str, str]]:
    """``["GLOB=CONTROL", ...]`` -> [(glob, control)]; bad items raise FairbenchError naming the fix."""
    out = []
    for item in items or []:
        glob, sep, control = item.partition("=")
        if not sep or not glob.strip() or not control.strip():
            raise FairbenchError(f"--control {item!r}: expected MODEL_GLOB=CONTROL_MODEL, e.g. '*fairmed-vlm*=vit-tiny+erm-lora'.")
        out.append((glob.strip(), control.strip()))
    return out


def reference_of(model: str, reference: str, controls: list[tuple[str, str]]) -> str | None:
    """The model a row is paired-tested against: the first ``--control`` glob matching it, else ``reference``;
    None for the reference itself and for a control matched by its own glob."""
    for glob, control in controls:
        if fnmatch.fnmatchcase(model, glob) and model != control:
            return control
    return None if model == reference else reference


def build(dirs: list[Path], reference: str, controls: list[tuple[str, str]] | None = None) -> list[dict]:
    loaded = [_load(d) for d in dirs]
    by_model = {s["model"]: (s, runs) for s, runs in loaded}
    controls = controls or []
    if reference not in by_model:
        raise FairbenchError(f"--reference {reference!r} is not among the summaries' models {sorted(by_model)}.")
    for glob, control in controls:  # a control is needed only when some row on the board matches its glob
        matched = [m for m in by_model if fnmatch.fnmatchcase(m, glob) and m != control]
        if matched and control not in by_model:
            raise FairbenchError(f"--control {glob}={control}: {control!r} (the control of {matched[0]!r}) is not among the "
                                 f"summaries' models {sorted(by_model)}; add its `run --seeds N` directory.")
    kinds = {run_kind(runs[0]) for _, runs in by_model.values()}
    metrics = _metrics(kinds)
    rows = []
    for model, (s, runs) in by_model.items():
        kind, run = run_kind(runs[0]), runs[0]["run"]
        row = {"task": s["task"], "prompt_mode": run.get("prompt_mode") or s.get("prompt_mode") or "", "model": model,
               "eval_split": "test" if kind == "imaging" else split_name(run.get("eval_split")), "kind": kind,
               "base_model": run.get("base_model"), "n_seeds": len(s["seeds"]),
               "seeds": " ".join(map(str, s["seeds"])), "n_test": runs[0].get("n_test"),
               "git_commit": ", ".join(sorted({commit_label(_manifest_git(r), s.get("rescored")) for r in s["runs"]}))}
        for m in metrics:
            e = s["metrics"].get(m, {})
            row[m], row[f"{m}_ci_low"], row[f"{m}_ci_high"], row[f"{m}_sd"] = e.get("mean"), e.get("ci_low"), e.get("ci_high"), e.get("sd")
            row[f"{m}_note"] = e.get("note") if e.get("ci_low") is None else None  # why there is no interval
            row[f"{m}_n_missing"] = e.get("n_missing")
        ref = reference_of(model, reference, controls)
        row["reference"] = ref
        if ref is not None:
            # The family: the board's metrics whose test is applicable (compare corrects over exactly those).
            tests = {t["target"]: t for t in compare(runs, by_model[ref][1], metrics)["tests"]}
            for m in metrics:
                t = tests.get(m, {})
                row[f"{m}_diff"] = t.get("mean_diff")
                row[f"{m}_p"] = t.get("p_value")
                row[f"{m}_p_holm"] = t.get("p_adjusted")
                row[f"{m}_test_note"] = t.get("note") if t and not t.get("applicable") else None
        rows.append(row)
    # The reference first, each control before the rows tested against it, then by the headline gap.
    rank = {reference: 0, **{c: 1 for _, c in controls}}
    rows.sort(key=lambda r: (rank.get(r["model"], 2), r.get("reference") or "", _gap(r) if _gap(r) is not None else 9))
    return rows


def _gap(r: dict):
    return r.get(HEADLINE_GAP.get(r.get("kind"), "dp_gap"))


def row_metrics(rows: list[dict]) -> list[str]:
    return _metrics({r.get("kind") or "imaging" for r in rows})


def _cell(r: dict, m: str) -> str:
    if r.get(m) is None:
        return "-"
    txt = f"{r[m]:.3f} [{r[f'{m}_ci_low']:.3f}, {r[f'{m}_ci_high']:.3f}]" if r.get(f"{m}_ci_low") is not None else f"{r[m]:.3f}"
    if r.get(f"{m}_ci_low") is None and r.get(f"{m}_note"):  # why there is no interval (e.g. no variation)
        txt += f" ({str(r[f'{m}_note']).split(':')[0]})"
    if r.get(f"{m}_n_missing"):  # left out of the mean: say so, a mean of 4 seeds is not one of 5
        txt += f" ({int(r[f'{m}_n_missing'])} of {r.get('n_seeds')} seeds missing)"
    p = r.get(f"{m}_p_holm")
    if r.get(f"{m}_diff") is not None:
        better = (r[f"{m}_diff"] > 0) == HIGHER.get(m, False)
        mark = ("↑" if better else "↓") if p is not None and p < 0.05 else " n.s."
        why = str(r.get(f"{m}_test_note") or "").split(":")[0]
        txt += f" Δ{r[f'{m}_diff']:+.3f} p={p:.3g}{mark}" if p is not None else f" Δ{r[f'{m}_diff']:+.3f} (no test{': ' + why if why else ''})"
    return txt


def render(name: str, rows: list[dict], reference: str, plot: str | None) -> str:
    task = rows[0]["task"]
    metrics = row_metrics(rows)
    kinds = {r.get("kind") or "imaging" for r in rows}
    split = "test split" if kinds == {"imaging"} else f"{rows[0].get('eval_split') or 'all'} split"
    note = (" Thresholds were tuned on validation in every run; dp_gap and eod are max − min over the groups of the "
            "primary attribute." if "imaging" in kinds else "")
    refs = sorted({r["reference"] for r in rows if r.get("reference")})
    against = (f"against `{reference}` across the same seeds" if refs in ([], [reference]) else
               f"against the row's reference (column vs: the like-for-like control, else `{reference}`) across the same seeds")
    if "imaging" in kinds:
        note += (" dp_gap comes last: a perfect classifier's dp_gap is the difference of the groups' prevalences, "
                 "so it is not a bias measure where base rates differ.")
    lines = [f"# {name}", "",
             f"Task `{task}` ({', '.join(sorted(kinds))}, prompt mode {rows[0].get('prompt_mode') or '-'}), {split}; every value "
             f"is the mean over the row's seeds with its 95% t-interval (none where every seed agrees). Δ = mean paired difference {against}; "
             "p = paired t-test, Holm-corrected over the metrics of the row shown here that can be tested (no test: "
             "every seed gives the same difference, or fewer than 2 paired seeds); ↑ / ↓ = significantly "
             f"better / worse (Holm p < 0.05), n.s. = not significant.{note}", "",
             "| model | vs | seeds | " + " | ".join(metrics) + " |", "|---|---|---|" + "---|" * len(metrics)]
    for r in rows:
        vs = f"`{r['reference']}`" if r.get("reference") else "—"
        lines.append(f"| `{r['model']}` | {vs} | {r['seeds']} | " + " | ".join(_cell(r, m) for m in metrics) + " |")
    if plot:
        lines += ["", f"![utility against the headline gap]({plot})"]
    commits = sorted({r.get("git_commit") or "?" for r in rows})
    lines += ["", f"Runs of commit {commits[0]}." if len(commits) == 1 else
              "Runs of several commits: " + "; ".join(f"`{r['model']}`: {r.get('git_commit') or '?'}" for r in rows) + "."]
    return "\n".join(lines) + "\n"


def is_seeds_csv(path: Path) -> bool:
    """Whether ``path`` is a multi-seed board CSV (written by :func:`write`): it has ``n_seeds`` and ``seeds`` columns."""
    path = Path(path)
    if path.suffix != ".csv" or not path.is_file():
        return False
    with path.open(encoding="utf-8") as f:
        header = f.readline().strip().split(",")
    return "n_seeds" in header and "seeds" in header


def read(csv_path: Path) -> tuple[list[dict], str | None]:
    """A multi-seed board's rows from its CSV alone, and its reference model (the row without paired
    differences). Boards written before the ``kind`` column are imaging boards (prompt mode ``image``)."""
    df = pd.read_csv(csv_path, dtype={c: str for c in ("task", "prompt_mode", "model", "eval_split", "base_model", "seeds", "kind", "reference")},
                     keep_default_na=False, na_values=[""])
    rows = []
    for rec in df.to_dict("records"):
        r = {}
        for k, v in rec.items():
            if hasattr(v, "item"):
                v = v.item()
            r[k] = None if isinstance(v, float) and v != v else v
        r["kind"] = r.get("kind") or ("imaging" if r.get("prompt_mode") in ("image", "", None) else "text")
        r["seeds"] = str(r.get("seeds") or "")
        rows.append(r)
    if not rows:
        raise FairbenchError(f"{csv_path}: no rows; not a multi-seed leaderboard CSV.")
    refs = [r["model"] for r in rows if not any(r.get(f"{m}_diff") is not None for m in row_metrics([r]))]
    return rows, (refs[0] if refs else None)


def _plot_rows(rows: list[dict]) -> list[dict]:
    prow = []
    for r in rows:
        u = "auc" if r.get("auc") is not None else "accuracy"
        prow.append({**r, "utility": r.get(u), "utility_ci_low": r.get(f"{u}_ci_low"), "utility_ci_high": r.get(f"{u}_ci_high"),
                     "utility_metric": "AUC" if u == "auc" else u})
    return prow


def draw(base: Path, rows: list[dict]) -> list[Path]:
    """The trade-off figure (utility against the kind's headline gap, Pareto frontier) through the paper-figure
    code of the other boards (``plots.tradeoff``): NAME.tradeoff.png at 300 dpi, .svg and .pdf; [] if nothing to plot."""
    from .plots import figure_paths, tradeoff

    png = Path(base).parent / tradeoff_plot_name(Path(base).name)
    gaps = {(r["task"], r["prompt_mode"]): HEADLINE_GAP.get(r.get("kind"), "dp_gap") for r in rows}
    return figure_paths(png) if tradeoff(_plot_rows(rows), HEADLINE_GAP["imaging"], png, gaps) else []


def redraw(csv_path: Path) -> dict[str, Path]:
    """Draw a multi-seed board's trade-off figure again from its CSV alone (no runs, no model)."""
    rows, _ = read(Path(csv_path))
    return {p.suffix[1:]: p for p in draw(Path(csv_path).with_suffix(""), rows)}


def write(dirs: list[Path], output: Path, reference: str, plots: bool = True,
          controls: list[tuple[str, str]] | None = None) -> dict[str, Path]:
    from .leaderboard import output_base

    rows = build(dirs, reference, controls)
    base = output_base(Path(output))
    base.parent.mkdir(parents=True, exist_ok=True)
    out = {"csv": base.with_suffix(".csv"), "md": base.with_suffix(".md")}
    write_atomic(out["csv"], pd.DataFrame(rows).to_csv(index=False, float_format="%.6g"))
    plot_name = None
    if plots:
        figures = draw(base, rows)
        for p in figures:
            out[p.suffix[1:]] = p
        if figures:
            plot_name = figures[0].name
    write_atomic(out["md"], render(base.name, rows, reference, plot_name))
    return out
