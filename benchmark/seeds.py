"""Several seeds of one run: mean ± t-CI of every headline metric, and paired tests across seeds.

``fairbench run --seeds N`` runs seeds SEED .. SEED+N-1 (each its own run directory, resumable)
and writes ``summary.json`` to ``<output>/<model>__<task>__seeds<a>-<b>/``. Seeds pair the
runs: the same seed means the same data shuffle and initialisation, so

- within a model, imaging runs get paired tests of per-seed group metrics (two groups: paired
  t-test; more: repeated-measures ANOVA, seeds as subjects) and of the tuned-threshold vs 0.5
  dp_gap;
- between models (e.g. a base model and its mitigation), :func:`compare` runs paired t-tests on
  per-seed headline metrics with Cohen's d_z -- the paper's protocol (5 seeds, paired t-tests).
All applicable p-values in one summary are Holm-corrected together (``audits.stats.correct``). A test
on seeds without variation (every seed gives the same difference, groups that never differ) is not
applicable: no statistic, no p-value, the reason in ``note``, left out of the family; likewise a mean
whose seeds all agree has no interval, and seeds without a value are left out of the mean and counted
(``n_missing``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import SCHEMA_VERSION
from .audits.stats import TestResult, correct, correction_summary, no_variation, not_applicable, num
from .errors import FairbenchError
from .store import dumps, read_results, write_atomic


def _values(results: list[dict]) -> dict[str, list[float | None]]:
    names = [k for k, v in results[0]["metrics"].items() if isinstance(v, dict) and "value" in v]
    return {k: [r["metrics"].get(k, {}).get("value") for r in results] for k in names}


# Metrics whose values lie in [0, 1] (rates, AUCs, accuracies, calibration errors and their max - min
# gaps): their t-interval over seeds is clipped to it, so a gap never reads as "[-0.009, 0.066]".
UNIT_INTERVAL = re.compile(r"(auc|accuracy|rate|gap|eod|ece|underdiag)", re.IGNORECASE)


def mean_ci(xs: list[float | None], bounds: tuple[float, float] | None = None) -> dict:
    """Mean, SD and 95% t-interval over seeds; with ``bounds`` (the metric's domain) the interval is
    clipped to it. ``xs``: one value per seed, None where a seed has none: left out of the mean and
    counted in ``n_missing`` (``n_seeds`` counts the values used). No interval when fewer than 2 seeds
    have a value, or when they all agree (``note``: a zero-width t-interval would claim a certainty
    that a few identical seeds do not hold)."""
    x = np.array([v for v in xs if v is not None], dtype=float)
    out = {"values": xs, "n_seeds": int(len(x)), "n_missing": int(len(xs) - len(x))}
    if len(x) == 0:
        return {**out, "mean": None, "sd": None, "ci_low": None, "ci_high": None, "note": "no seed has a value"}
    mean = float(x.mean())
    if len(x) < 2:
        return {**out, "mean": num(mean), "sd": None, "ci_low": None, "ci_high": None,
                "note": "fewer than 2 seeds with a value: no interval"}
    sd = float(x.std(ddof=1))
    if no_variation(x):
        return {**out, "mean": num(mean), "sd": num(sd), "ci_low": None, "ci_high": None,
                "note": f"no variation: all {len(x)} seeds give {mean:.4g}, so no interval"}
    half = float(sps.t.ppf(0.975, len(x) - 1)) * sd / math.sqrt(len(x))
    lo, hi = mean - half, mean + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return {**out, "mean": num(mean), "sd": num(sd), "ci_low": num(lo), "ci_high": num(hi)}


def paired_t(a: list[float | None], b: list[float | None], target: str) -> TestResult:
    """Paired t-test (scipy ``ttest_rel``) of ``a`` vs ``b``, one value per seed (None: seed left out),
    with the mean difference and Cohen's d_z in ``extra``. Not applicable with fewer than 2 paired seeds
    or when every seed gives the same difference (no variation, e.g. all 0: t is undefined, and a
    placeholder p = 1 would read as evidence of "no difference")."""
    pairs = np.array([(x, y) for x, y in zip(a, b) if x is not None and y is not None], dtype=float)
    n = len(pairs)
    if n < 2:
        return not_applicable("paired_t", target, True, n, "fewer than 2 paired seeds")
    diff = pairs[:, 0] - pairs[:, 1]
    if no_variation(diff):
        t = not_applicable("paired_t", target, True, n,
                           f"no variation: every seed gives the same difference ({float(diff.mean()):+.4g}), so no t statistic")
        t.extra = {"mean_diff": float(diff.mean())}
        return t
    res = sps.ttest_rel(pairs[:, 0], pairs[:, 1])
    dz = float(diff.mean() / diff.std(ddof=1))
    return TestResult("paired_t", target, float(res.statistic), float(res.pvalue), True, n, extra={"mean_diff": float(diff.mean()), "cohens_dz": dz})


def rm_anova(table: pd.DataFrame, target: str) -> TestResult:
    """Seeds (rows) x groups (columns) of a metric: repeated-measures ANOVA (statsmodels AnovaRM).
    Not applicable with fewer than 2 complete seeds, when the groups do not differ in any seed, or when
    their differences are the same in every seed (no residual variation: F is undefined)."""
    from statsmodels.stats.anova import AnovaRM

    table = table.dropna()
    n = len(table)
    if n < 2 or table.shape[1] < 2:
        return not_applicable("rm_anova", target, True, n, "fewer than 2 complete seeds")
    long = table.reset_index(names="seed").melt(id_vars="seed", var_name="group", value_name="value")
    x = table.to_numpy(dtype=float)
    within = x - x.mean(1, keepdims=True)
    if all(no_variation(row) for row in x):
        return not_applicable("rm_anova", target, True, n, "no variation: the groups do not differ in any seed")
    if no_variation(within - within.mean(0, keepdims=True)):
        return not_applicable("rm_anova", target, True, n,
                              "no variation: the groups differ by the same amounts in every seed (no residual), so no F statistic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = AnovaRM(long, depvar="value", subject="seed", within=["group"]).fit().anova_table
    return TestResult("rm_anova", target, float(res["F Value"].iloc[0]), float(res["Pr > F"].iloc[0]), True, n)


def _as_dict(t: TestResult) -> dict:
    return {**t.as_dict(), **{k: num(v) for k, v in t.extra.items()}}


def _group_attributes(results: dict, endpoint: str) -> dict:
    """The group audit's per-attribute results of ``endpoint`` (schema 2: ``results["audits"]["group"]``)."""
    group = (results.get("audits") or {}).get("group") or {}
    return group.get("endpoints", {}).get(endpoint, {}).get("attributes", {})


def imaging_tests(results: list[dict]) -> list[TestResult]:
    """Paired tests across seeds of the group audit's per-group AUCs and of the tuned vs 0.5 dp_gap
    (runs without a group audit, e.g. text runs, have none)."""
    tests = []
    if not all("group" in (r.get("audits") or {}) for r in results):
        return tests
    e = results[0]["metrics"]["question"]
    for attr in _group_attributes(results[0], e):
        per_seed = []
        for r in results:
            res = _group_attributes(r, e).get(attr, {})
            per_seed.append({g: v["auc"] for g, v in res.get("groups", {}).items() if not v["small"]})
        table = pd.DataFrame(per_seed)
        if table.shape[1] == 2:
            g1, g2 = table.columns
            tests.append(paired_t(table[g1].tolist(), table[g2].tolist(), f"{e}/{attr}/auc: {g1} vs {g2}"))
        elif table.shape[1] > 2:
            tests.append(rm_anova(table, f"{e}/{attr}/auc across groups"))
        tuned = [_group_attributes(r, e).get(attr, {}).get("dp_gap", {}).get("value") for r in results]
        fixed = [_group_attributes(r, e).get(attr, {}).get("dp_gap_at_0.5", {}).get("value") for r in results]
        tests.append(paired_t(tuned, fixed, f"{e}/{attr}/dp_gap: validation threshold vs 0.5"))
    return tests


def summarize(results: list[dict], run_dirs: list[Path]) -> dict:
    tests = imaging_tests(results)
    correct(tests)  # applicable tests only: the not-applicable ones are listed in "correction"
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "seeds",
        "run_kind": results[0].get("kind") or results[0]["run"].get("kind"),
        "model": results[0]["run"]["model"],
        "task": results[0]["run"]["task"],
        "prompt_mode": results[0]["run"].get("prompt_mode"),
        "seeds": [r["run"]["seed"] for r in results],
        **({"label_fraction": results[0]["run"]["label_fraction"]} if results[0]["run"].get("label_fraction") is not None else {}),
        "runs": [str(d) for d in run_dirs],
        "metrics": {k: mean_ci(v, (0.0, 1.0) if UNIT_INTERVAL.search(k) else None) for k, v in _values(results).items()},
        "tests": [_as_dict(t) for t in tests],
        "correction": correction_summary(tests, "holm", 0.05),
        "definitions": {"ci": "95% t-interval of the mean over seeds, clipped to [0, 1] for rates, AUCs and their gaps; "
                              "none when the seeds agree (note); seeds without a value are left out (n_missing)",
                        "tests": "paired across seeds, Holm-corrected over the applicable tests"},
    }


def compare(results_a: list[dict], results_b: list[dict], metrics: list[str] | None = None) -> dict:
    """Model A vs model B on the same seeds: paired t-test per headline metric, Holm-corrected over the
    applicable tests (``audits.stats.correct``). ``metrics``: the family (default: every metric both
    have), e.g. the columns a board shows. Returns {"seeds", "tests", "correction"}."""
    seeds_a = {r["run"]["seed"]: r for r in results_a}
    seeds_b = {r["run"]["seed"]: r for r in results_b}
    common = sorted(set(seeds_a) & set(seeds_b))
    if len(common) < 2:
        raise FairbenchError(f"comparing models needs at least 2 shared seeds; found {common}. Run both with the same --seed/--seeds.")
    va, vb = _values([seeds_a[s] for s in common]), _values([seeds_b[s] for s in common])
    names = [k for k in va if k in vb] if metrics is None else [k for k in metrics if k in va and k in vb]
    tests = [paired_t(va[k], vb[k], k) for k in names]
    correct(tests)
    return {"seeds": common, "tests": [_as_dict(t) for t in tests], "correction": correction_summary(tests, "holm", 0.05)}


def run_seeds(spec, n: int, quiet: bool = False) -> tuple[Path, dict]:
    from .engine import run as run_engine

    if n < 1:
        raise FairbenchError(f"--seeds must be a positive number of seeds, got {n}.")
    run_dirs = [run_engine(dataclasses.replace(spec, seed=spec.seed + i), quiet=quiet) for i in range(n)]
    results = [read_results(d) for d in run_dirs]
    summary = summarize(results, run_dirs)
    name = re.sub(r"[^A-Za-z0-9._+=-]", "_", f"{spec.model}__{spec.task}__seeds{spec.seed}-{spec.seed + n - 1}")
    if spec.limit is not None:
        name += f"__limit{spec.limit}"
    if getattr(spec, "sample", None) is not None:
        name += f"__sample{spec.sample}"
    if getattr(spec, "label_fraction", None) is not None:
        name += f"__frac{spec.label_fraction!r}"
    out = Path(spec.output_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "summary.json", dumps(summary))
    return out, summary


def rescore_seeds(seeds_dir: Path, tasks_dir: Path | None = None) -> dict:
    """``fairbench score`` of a multi-seed directory: rescore every seed's run from its stored outputs
    (``rescore.rescore``, no model) and rewrite ``summary.json`` with this code's statistics. A run is
    found at its recorded path or, when the runs were moved together, beside ``seeds_dir``.

    Raises FairbenchError naming the missing run directory."""
    from .rescore import rescore

    import json

    seeds_dir = Path(seeds_dir)
    summary = json.loads((seeds_dir / "summary.json").read_text(encoding="utf-8"))
    run_dirs = []
    for recorded in summary.get("runs") or []:
        here = Path(recorded) if (Path(recorded) / "results.json").is_file() else seeds_dir.parent / Path(recorded).name
        if not (here / "results.json").is_file():
            raise FairbenchError(f"{seeds_dir / 'summary.json'}: seed run {recorded} not found (nor beside it as {here}); "
                                 "move the seed run directories together with the summary.")
        run_dirs.append(here)
    if not run_dirs:
        raise FairbenchError(f"{seeds_dir / 'summary.json'}: field runs is empty; rerun `fairbench run --seeds N`.")
    results = [rescore(d, tasks_dir) for d in run_dirs]
    new = summarize(results, run_dirs)
    scored = next((r["run"]["rescored"] for r in results if r["run"].get("rescored")), None)
    if scored:  # the statistics are this commit's, the predictions the runs' (board: "RUN (scored SCORER)")
        new["rescored"] = scored
    write_atomic(seeds_dir / "summary.json", dumps(new))
    return new


def print_summary(summary: dict, out: Path, console) -> None:
    from rich.markup import escape

    from .boards.terminal import Col, estimate, label, show_table

    fmt = lambda x: "-" if x is None else f"{x:.3g}"  # noqa: E731
    rows = []
    for name, m in summary["metrics"].items():
        interval = (f"[{fmt(m['ci_low'])}, {fmt(m['ci_high'])}]" if m["ci_low"] is not None
                    else f"({m['note'].split(':')[0]})" if m.get("note") else "")
        rows.append((escape(name), estimate(f"{fmt(m['mean'])} {interval}".strip()), fmt(m["sd"]), ", ".join(fmt(v) for v in m["values"])))
    show_table(console, escape(f"{summary['model']} on {summary['task']}: {len(summary['seeds'])} seeds, mean [95% CI]"),
               [Col("metric"), Col("mean [95% CI]", "right"), Col("sd", "right"), Col("per seed")], rows)
    if summary["tests"]:
        tests = [(label(t["target"]), t["test"], str(t["n"]), fmt(t["statistic"]), f"{fmt(t['p_value'])} / {fmt(t['p_adjusted'])}")
                 for t in summary["tests"]]
        show_table(console, "paired tests across seeds (p raw / Holm)",
                   [Col("target"), Col("test"), Col("n", "right"), Col("statistic", "right", "stat"), Col("p")], tests)
    console.print(f"summary: [bold]{out / 'summary.json'}[/bold]")
