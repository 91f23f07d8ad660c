"""The Python API of fairbench; the ``fairbench`` command line calls it.

>>> import benchmark as fb
>>> res = fb.evaluate(model="smollm2-135m", task="qpain-demo", limit=2)   # doctest: +SKIP
>>> res.metrics          # one row per metric: question, metric, value, ci_low, ci_high, n
>>> res.groups           # one row per question x attribute x group
>>> res.requests         # one row per request (requests.jsonl), outcome and decision flattened
>>> print(res.verdict)   # the plain-words verdict and warnings

Errors: :class:`benchmark.errors.FairbenchError` for input the caller can fix (unknown model or task,
invalid value), with a one-line message naming the field and the fix;
:class:`benchmark.errors.StorageError` (a subclass) when the disk is full, read-only, not permitted or
the output directory vanished. Definitions of every metric: README "Metrics"; of the verdict and
warnings: README "Reading the results" (:mod:`benchmark.boards.verdict`).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .boards.verdict import Verdict, build
from .errors import FairbenchError
from .spec import RunSpec
from .store import read_requests, read_results

__all__ = ["Results", "check", "evaluate", "evaluate_grid", "leaderboard", "load", "score", "split_list"]


@dataclass
class Results:
    """One finished run: its directory, ``results.json`` (``raw``), ``manifest.json`` and tidy frames.

    - ``metrics``: DataFrame, one row per (question, metric); columns ``question`` (``None`` for the
      run's headline metrics), ``metric``, ``value``, ``ci_low``, ``ci_high`` (95% bootstrap CI over
      cases), ``n`` (cases). Rates are fractions in [0, 1], probabilities are P(option).
    - ``groups``: DataFrame, one row per (question, attribute, group); columns ``n_cases``, ``n_rows``,
      ``n_invalid``, ``mean_outcome`` (+ ``_ci_low``/``_ci_high``), ``decision_rate`` (+ CI), ``small``.
      Imaging runs: one row per (endpoint, attribute, group) with the group audit's columns.
    - ``requests``: DataFrame, one row per request of ``requests.jsonl``; the ``scored`` dict is
      flattened into ``outcome``, ``decision``, ``valid`` and the other scorer fields.
    - ``tests``: DataFrame of every statistical test (``p_value`` raw, ``p_adjusted`` after the run's
      correction, ``significant``; ``p_value`` NaN = not applicable).
    """

    run_dir: Path
    raw: dict
    manifest: dict = field(default_factory=dict)

    @property
    def verdict(self) -> Verdict:
        return build(self.raw)

    @property
    def metrics(self) -> pd.DataFrame:
        rows = []

        def add(question, name, est):
            if isinstance(est, dict) and "value" in est:
                rows.append({"question": question, "metric": name, "value": est.get("value"), "ci_low": est.get("ci_low"),
                             "ci_high": est.get("ci_high"), "n": est.get("n")})
            elif isinstance(est, (int, float)) and not isinstance(est, bool):
                rows.append({"question": question, "metric": name, "value": est, "ci_low": None, "ci_high": None, "n": None})

        for name, est in (self.raw.get("metrics") or {}).items():
            add(None, name, est)
        for qid, q in (((self.raw.get("audits") or {}).get("counterfactual") or {}).get("questions") or {}).items():
            for name, est in q.items():
                add(qid, name, est)
        return pd.DataFrame(rows, columns=["question", "metric", "value", "ci_low", "ci_high", "n"])

    @property
    def groups(self) -> pd.DataFrame:
        rows = []
        audits = self.raw.get("audits") or {}
        for qid, q in ((audits.get("counterfactual") or {}).get("questions") or {}).items():
            for attr, a in (q.get("attributes") or {}).items():
                for group, g in (a.get("groups") or {}).items():
                    row = {"question": qid, "attribute": attr, "group": group}
                    for k, v in g.items():
                        if isinstance(v, dict) and "value" in v:
                            row.update({k: v.get("value"), f"{k}_ci_low": v.get("ci_low"), f"{k}_ci_high": v.get("ci_high")})
                        elif not isinstance(v, (dict, list)):
                            row[k] = v
                    rows.append(row)
        for endpoint, e in ((audits.get("group") or {}).get("endpoints") or {}).items():
            for attr, a in (e.get("attributes") or {}).items():
                for group, g in (a.get("groups") or {}).items():
                    row = {"question": endpoint, "attribute": attr, "group": group}
                    row.update({k: (v.get("value") if isinstance(v, dict) else v) for k, v in g.items() if not isinstance(v, list)})
                    rows.append(row)
        return pd.DataFrame(rows)

    @property
    def tests(self) -> pd.DataFrame:
        rows = []
        for name, audit in (self.raw.get("audits") or {}).items():
            for t in (audit or {}).get("tests") or []:
                rows.append({"audit": name, **t})
        return pd.DataFrame(rows)

    @property
    def requests(self) -> pd.DataFrame:
        rows = []
        for r in read_requests(self.run_dir):
            scored = r.pop("scored", None) or {}
            rows.append({**r, **{k: v for k, v in scored.items() if k not in r}})
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        run = self.raw.get("run") or {}
        return (f"Results({run.get('model')} on {run.get('task')} ({run.get('prompt_mode')}), seed {run.get('seed')}, "
                f"{run.get('n_cases')} cases, {self.raw.get('n_requests')} requests: {self.run_dir})")


def load(run_dir: str | Path) -> Results:
    """The :class:`Results` of a finished run directory (FairbenchError if it is not one)."""
    run_dir = Path(run_dir)
    manifest_path = run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    return Results(run_dir, read_results(run_dir), manifest)


def _spec(model: str, task: str, **options) -> RunSpec:
    known = set(RunSpec.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise FairbenchError(f"evaluate(): unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known - {'model', 'task'}))}.")
    for key in ("output_dir", "models_file", "tasks_dir", "data_dir", "cache_dir"):
        if options.get(key) is not None:
            options[key] = Path(options[key])
    options.setdefault("argv", ["benchmark.api.evaluate", f"model={model}", f"task={task}"])
    return RunSpec(model=model, task=task, **options)


def evaluate(model: str = "smollm2-135m", task: str = "qpain-demo", *, quiet: bool = True, **options) -> Results:
    """Audit ``model`` on ``task`` (or resume the same run) and return its :class:`Results`.

    ``model``: a models.yaml name, or a backend name with ``model_args="pretrained=ID,..."``.
    ``options``: any :class:`benchmark.spec.RunSpec` field: ``prompt_mode``, ``seed`` (0..2^63-1),
    ``limit`` (first cases, >= 1), ``sample`` (cases at random, seeded), ``output_dir`` (default ``runs``), ``temperature`` (>= 0), ``shard``
    ((i, n)), ``models_file``, ``tasks_dir``, ``data_dir``, ``cache_dir``, ``use_cache``, ``cases_from``.
    A sharded run that has not completed the grid raises FairbenchError (no results yet)."""
    from .engine import run

    run_dir = run(_spec(model, task, **options), quiet=quiet)
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("status") == "partial":
        raise FairbenchError(f"{run_dir}: shard done, {manifest.get('n_missing')} requests of other shards still missing.")
    return Results(run_dir, read_results(run_dir), manifest)


def split_list(value: str | list[str] | tuple[str, ...] | None) -> list:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``; ``None`` -> ``[None]`` (the default)."""
    if value is None:
        return [None]
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [i.strip() if isinstance(i, str) else i for i in items]
    if not items or any(i == "" for i in items):
        raise FairbenchError(f"empty name in the list {value!r}; separate names with commas and no empty entries.")
    return list(dict.fromkeys(items))


def evaluate_grid(models, tasks, prompt_modes=None, *, quiet: bool = True, progress=None, **options) -> list[Results | Path]:
    """Every model x task x prompt mode (each a name, a comma-separated string or a list), loading
    each model once. Returns one entry per cell, in order (model outer): :class:`Results`, or the
    run directory of a shard that has not completed the grid. ``progress``: a rich Progress (not
    started), shown once every cell has resolved: one bar over the grid and one per run."""
    from .engine import BackendPool, plan, run

    cells = list(itertools.product(split_list(models), split_list(tasks), split_list(prompt_modes)))
    specs = [_spec(m, t, prompt_mode=p, **options) for m, t, p in cells]
    for s in specs:  # every cell resolves before anything runs: a typo fails in a second, not after an hour
        plan(s)
    pool = BackendPool()
    out: list[Results | Path] = []
    grid_bar = progress.add_task("grid", total=len(specs), rate="") if progress is not None and len(specs) > 1 else None
    if progress is not None:
        progress.start()
    try:
        previous = None
        for s in specs:
            if previous is not None and previous != s.model:
                pool.close()  # one model in memory at a time; the grid is ordered model-outer
            previous = s.model
            run_dir = run(s, quiet=quiet, pool=pool, progress=progress)
            manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
            out.append(run_dir if manifest.get("status") == "partial" else Results(run_dir, read_results(run_dir), manifest))
            if grid_bar is not None:
                progress.advance(grid_bar)
    finally:
        pool.close()
        if progress is not None:
            progress.stop()
    return out


def score(run_dir: str | Path, tasks_dir: str | Path | None = None) -> Results:
    """Re-derive scores and audits of ``run_dir`` from its stored raw outputs (no model); rewrites
    ``requests.jsonl`` and ``results.json`` and returns the new :class:`Results`."""
    from .rescore import rescore

    run_dir = Path(run_dir)
    raw = rescore(run_dir, Path(tasks_dir) if tasks_dir else None)
    manifest_path = run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    return Results(run_dir, raw, manifest)


def leaderboard(runs, output: str | Path, sort_by: str = "cf_mean_abs_delta", plots: bool = True) -> pd.DataFrame:
    """Merge finished run directories (or :class:`Results`) into the leaderboard ``output``
    (``leaderboards/NAME``: writes NAME.md, NAME.csv, NAME.groups.csv and plots); returns NAME.csv as
    a DataFrame (one row per model x task x prompt mode, CIs in ``<metric>_ci_low``/``_ci_high``)."""
    from .boards.leaderboard import update

    dirs = [r.run_dir if isinstance(r, Results) else Path(r) for r in ([runs] if isinstance(runs, (str, Path, Results)) else runs)]
    paths = update(dirs, Path(output), sort_by=sort_by, plots=plots)
    return pd.read_csv(paths["csv"])


def check(baseline: str | Path, candidate, max_increase: dict[str, float] | list[str] | None = None,
          baseline_model: str | None = None, baseline_run: str | Path | None = None, runs_dir: str | Path | None = "runs",
          tasks_dir: str | Path | None = None):
    """The CI fairness gate (README "CI fairness gate"): compare ``candidate`` (a run directory or
    :class:`Results`) with a row of the leaderboard CSV ``baseline``. ``max_increase``: tolerated
    increase per metric (``{"dp_gap": 0.02}`` or ``["dp_gap=0.02"]``). Returns
    ``(CheckResult, baseline_row, run)``; ``CheckResult.regressions`` is empty when the gate passes."""
    from .boards.check import check as run_check

    cand = candidate.run_dir if isinstance(candidate, Results) else Path(candidate)
    items = [f"{k}={v}" for k, v in max_increase.items()] if isinstance(max_increase, dict) else max_increase
    return run_check(Path(baseline), cand, items, baseline_model, Path(baseline_run) if baseline_run else None,
                     Path(runs_dir) if runs_dir else None, tasks_dir=Path(tasks_dir) if tasks_dir else None)
