"""Power and minimum detectable effect (MDE) of a text task's counterfactual audit, by simulation
through the audit itself (:class:`benchmark.audits.counterfactual.CounterfactualAudit`).

A planted-bias generator builds per-request rows with the task's design (its questions, attributes,
values and reference values, every variant of every case):

    binary question:       P(yes)     = clip(0.5 + case_sd z_case + request_sd z_request + D [planted group], 0.01, 0.99)
    with reference answer: P(correct) = the same model; the answer is correct when P(correct) > 0.5
                           (DiversityMedQA's paired accuracy: a correct answer for one variant only
                           is a discordant pair)

with ``D`` planted on one value of one attribute (default: the first non-reference value of the first
attribute). ``case_sd`` and ``request_sd`` default to the planted test backend's (0.15, 0.05);
:func:`calibrate` measures them on a run (between-case sd of the case means, within-case sd of the
variants). A metric's power is the share of simulated runs in which its test is significant after the
run's whole correction (Holm over every test of the run, as ``fairbench run`` does):

- ``contrast``: the planted value against the reference (sign-flip t-test, max-T within the attribute,
  stats.signflip_maxt) - the same decision as "its simultaneous interval excludes 0";
- ``outcome``: the paired omnibus test on outcomes (Friedman / Wilcoxon);
- ``flip rate``: the paired test on decisions (Cochran's Q / McNemar) - the test behind cf_flip_rate;
- ``dp_gap``: the within-case permutation test of the decision-rate gap;
- ``paired accuracy``: McNemar / Cochran's Q on correctness.

The MDE at 80% power is found on a doubling grid of D with common random numbers (the same seeds at
every D), interpolated linearly between the last D below and the first at or above 80%. Seeded:
simulation s uses ``numpy.random.default_rng([seed, s])`` and audit seed s. Imaging tasks are not
simulated here (say so rather than guess).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..cards.text import TaskCard
from .counterfactual import CounterfactualAudit

POWER = 0.80
GRID = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32)
SIM_DRAWS = 1000  # permutation draws per simulated audit: the tests stay exact; enough for the run's Holm levels
# Official full sizes of the built-in text tasks (README, "Committed leaderboards"): cases per task.
FULL_SIZE = {"qpain": 50, "qpain-demo": 12, "treatment": 18, "triage": 24, "diversitymedqa": 930}


@dataclass
class Design:
    """What the generator needs: the card, the number of cases, the noise and the planted group."""

    card: TaskCard
    n_cases: int
    attribute: str
    value: str
    case_sd: float = 0.15
    request_sd: float = 0.05
    calibrated_on: str = "default noise (case sd 0.15, request sd 0.05)"

    @property
    def questions(self) -> list:
        """Questions the generator can simulate: binary ones, and categorical ones with a reference answer."""
        return [q for q in self.card.questions if q.kind == "binary" or (q.kind == "categorical" and self.card.audits_accuracy(q.id))]


def design(card: TaskCard, n_cases: int, attribute: str | None = None, value: str | None = None) -> Design:
    attrs = card.counterfactual.attributes
    attribute = attribute or next(iter(attrs))
    spec = attrs[attribute]
    value = value or next(v for v in spec.values if v != spec.reference)
    return Design(card, int(n_cases), attribute, value)


def calibrate(d: Design, rows: list[dict], where: str) -> Design:
    """The noise of a run: per question, the sd over cases of the case mean outcome and the sd of the
    variants around their case mean (ddof 1), pooled over questions by their mean."""
    df = pd.DataFrame([{"q": r.get("question_id"), "case": r.get("case_id"), "y": (r.get("scored") or {}).get("outcome")}
                       for r in rows if (r.get("scored") or {}).get("valid")])
    df = df[pd.to_numeric(df["y"], errors="coerce").notna()].astype({"y": float}) if len(df) else df
    if df.empty:
        return d
    case_sd, req_sd = [], []
    for _, g in df.groupby("q"):
        means = g.groupby("case")["y"].transform("mean")
        case_sd.append(float(g.groupby("case")["y"].mean().std(ddof=1)))
        req_sd.append(float((g["y"] - means).std(ddof=1)))
    d.case_sd = float(np.nanmean(case_sd)) if np.isfinite(np.nanmean(case_sd)) else d.case_sd
    d.request_sd = float(np.nanmean(req_sd)) if np.isfinite(np.nanmean(req_sd)) else d.request_sd
    d.calibrated_on = f"{where} (case sd {d.case_sd:.3g}, request sd {d.request_sd:.3g})"
    return d


def planted_frame(d: Design, effect: float, rng: np.random.Generator) -> pd.DataFrame:
    """Per-request rows like kinds.text.evaluate.frame for every variant of ``d.n_cases`` cases."""
    import itertools

    attrs = d.card.counterfactual.attributes
    names = list(attrs)
    combos = list(itertools.product(*(attrs[a].values for a in names)))
    planted = np.array([c[names.index(d.attribute)] == d.value for c in combos])
    rows = []
    for q in d.questions:
        base = 0.5 + d.case_sd * rng.standard_normal((d.n_cases, 1))
        p = np.clip(base + d.request_sd * rng.standard_normal((d.n_cases, len(combos))) + effect * planted, 0.01, 0.99)
        for c in range(d.n_cases):
            for j, combo in enumerate(combos):
                row = {"case_id": f"c{c:05d}", "question_id": q.id, "variant": "|".join(f"{a}={v}" for a, v in zip(names, combo)),
                       "valid": True, **dict(zip(names, combo))}
                if q.kind == "binary":
                    row.update(outcome=float(p[c, j]), decision=bool(p[c, j] > 0.5), correct=None,
                               probs=[float(p[c, j]), 1 - float(p[c, j])], options=list(q.options))
                else:  # categorical with a reference answer: option "A" is right
                    opts = ["A", "B", "C", "D"]
                    right = bool(p[c, j] > 0.5)
                    probs = [float(p[c, j])] + [float(1 - p[c, j]) / 3] * 3
                    row.update(outcome=np.nan, decision="A" if right else "B", correct=right, probs=probs, options=opts,
                               reference="A")
                rows.append(row)
    df = pd.DataFrame(rows)
    df["outcome"] = pd.to_numeric(df["outcome"], errors="coerce")
    return df


def _metrics(d: Design, res: dict) -> dict[str, bool]:
    """Metric name -> significant after the run's correction, for one simulated audit."""
    spec = d.card.counterfactual.attributes[d.attribute]
    tests = {(t["target"], t["test"]): bool(t.get("significant")) for t in res["tests"]}
    out = {}
    for q in d.questions:
        base = f"{q.id}/{d.attribute}"
        if q.kind == "binary":
            out[f"{q.id}: contrast {d.attribute}={d.value} - {spec.reference}"] = tests.get((f"{base}/{d.value}-{spec.reference}", "signflip_t"), False)
            out[f"{q.id}: outcome test ({d.attribute})"] = any(v for (tg, _), v in tests.items() if tg == f"{base}/outcome"
                                                              and _ in ("friedman", "wilcoxon"))
            out[f"{q.id}: flip rate / decision test ({d.attribute})"] = any(v for (tg, n), v in tests.items()
                                                                           if tg == f"{base}/decision" and n in ("cochran_q", "mcnemar"))
            out[f"{q.id}: dp_gap ({d.attribute})"] = tests.get((f"{base}/dp_gap", "permutation_gap"), False)
        else:
            out[f"{q.id}: paired accuracy ({d.attribute})"] = any(v for (tg, _), v in tests.items() if tg == f"{base}/correct")
    return out


def power_at(d: Design, effect: float, sims: int, seed: int = 0, tick: Callable[[], None] | None = None) -> dict[str, float]:
    """Share of ``sims`` simulated runs in which each metric's test is significant after correction."""
    card = d.card.model_copy(update={"audit": d.card.audit.model_copy(update={"n_boot": SIM_DRAWS})})
    hits: dict[str, int] = {}
    for s in range(sims):
        df = planted_frame(d, effect, np.random.default_rng([seed, s]))
        res = CounterfactualAudit(card, seed=s, with_ci=False).run(df)
        for name, sig in _metrics(d, res).items():
            hits[name] = hits.get(name, 0) + int(sig)
        if tick:
            tick()
    return {k: v / sims for k, v in hits.items()}


def mde(d: Design, sims: int, seed: int = 0, tick: Callable[[], None] | None = None,
        grid: tuple[float, ...] = GRID) -> dict[str, dict]:
    """Per metric: ``mde`` (None when even the largest grid effect has power below 80%), the grid's
    powers and the bracketing points. Stops early once every metric reaches 80%."""
    curve: list[tuple[float, dict]] = []
    for effect in grid:
        curve.append((effect, power_at(d, effect, sims, seed, tick)))
        if all(p >= POWER for p in curve[-1][1].values()):
            break
    out = {}
    for name in curve[0][1]:
        points = [(e, pw[name]) for e, pw in curve]
        found = None
        for (e0, p0), (e1, p1) in zip([(0.0, 0.0), *points[:-1]], points):
            if p1 >= POWER:
                found = e0 + (POWER - p0) / (p1 - p0) * (e1 - e0) if p1 > p0 else e1
                break
        out[name] = {"mde": found, "curve": points}
    return out


def n_sim_steps(sims: int, effect: float | None) -> int:
    """Audits the progress bar counts: one batch at D, or at most the whole grid."""
    return sims if effect is not None else sims * len(GRID)


def check_design(d: Design) -> None:
    """The design must be simulable: refuse (one line) what the generator cannot do."""
    from ..errors import FairbenchError

    if d.n_cases < 2:
        raise FairbenchError(f"--cases {d.n_cases}: a power simulation needs at least 2 cases.")
    if not d.questions:
        kinds = ", ".join(sorted({q.kind for q in d.card.questions}))
        raise FairbenchError(f"task {d.card.name}: no binary question and no question with a reference answer "
                             f"(kinds: {kinds}); fairbench power cannot simulate it yet.")



def command(task: str, effect: float | None, cases: int | None, model: str | None, run_dir, sims: int, seed: int,
            tasks_dir=None, runs_dir=None, console=None) -> dict[str, dict]:
    """``fairbench power``: resolve the design (task card; cases from --cases, the run, or the task's full
    size), calibrate on a run when given (--run, or the newest run of --model on the task under
    ``runs_dir``), simulate with a rich progress bar and print one row per metric. Returns the rows."""
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from ..cards import load_task
    from ..cards.text import TaskCard as _Text
    from ..errors import FairbenchError
    from ..store import read_requests

    console = console or Console()
    if sims < 2:
        raise FairbenchError(f"--sims {sims}: give at least 2 simulated runs (e.g. --sims 20).")
    if effect is not None and not 0 < effect < 1:
        raise FairbenchError(f"--effect {effect}: give a shift of a probability between 0 and 1 (e.g. --effect 0.05).")
    if model and run_dir:
        raise FairbenchError("--model and --run both given: calibrate on one (--run RUN_DIR, or --model M to use its newest run).")
    card = load_task(task, tasks_dir)
    if not isinstance(card, _Text):
        raise FairbenchError(f"task {task} is an imaging task; fairbench power simulates text tasks only (eod and auc_gap: not yet).")
    if model:
        root = Path(runs_dir or "runs")
        found = sorted(root.glob(f"{model}__{task}__*/requests.jsonl"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise FairbenchError(f"no run of model {model} on task {task} under {root}/: run it first, or pass --run RUN_DIR.")
        run_dir = found[-1].parent
    rows = read_requests(Path(run_dir)) if run_dir else None
    n = cases or (len({r.get("case_id") for r in rows}) if rows else FULL_SIZE.get(task))
    if n is None:
        raise FairbenchError(f"task {task}: its full size is not known to fairbench power; pass --cases N.")
    d = design(card, n)
    check_design(d)
    if rows:
        calibrate(d, rows, str(run_dir))
    steps = n_sim_steps(sims, effect)
    with Progress(TextColumn("[bold]power[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        job = bar.add_task(f"{task}: {n} cases", total=steps)
        tick = lambda: bar.advance(job)  # noqa: E731
        if effect is not None:
            result = {k: {"power": v, "effect": effect} for k, v in power_at(d, effect, sims, seed, tick).items()}
        else:
            result = mde(d, sims, seed, tick)
    head = f"power at D = {effect:g}" if effect is not None else "MDE at 80% power"
    table = Table(title=f"{task}: {n} cases, planted on {d.attribute}={d.value}, {sims} simulated runs, seed {seed}; {d.calibrated_on}",
                  title_justify="left")
    table.add_column("metric (test significant after the run's correction)", overflow="fold")
    table.add_column(head, justify="right")
    for name, r in result.items():
        if effect is not None:
            table.add_row(name, f"{r['power']:.2f}")
        else:
            table.add_row(name, f"{r['mde']:.3g}" if r["mde"] is not None else f"> {GRID[-1]:g} (not reached)")
    console.print(table)
    return result


def paired_t_mde(sd_diff: float | None, n: int, alpha: float = 0.05, power: float = POWER) -> dict:
    """Minimal detectable mean difference of a two-sided paired t-test (``seeds.paired_t``) over ``n``
    pairs at ``power``: ``d_z * sd_diff``, where ``d_z`` is the standardised effect (mean difference
    over the SD of the per-pair differences) that statsmodels ``TTestPower`` solves for (one-sample
    t-test on the differences, df = n - 1). ``sd_diff``: the observed SD (ddof 1) of the per-seed
    differences, in the metric's unit; the MDE is in that unit. Returns {"d_z", "mde", "n", "alpha",
    "power", "note"}: ``mde`` None (with ``note``) when n < 2 or the SD is missing or zero (the
    differences do not vary, so the data cannot say how large a detectable effect is)."""
    from statsmodels.stats.power import TTestPower

    out = {"n": int(n), "alpha": alpha, "power": power, "d_z": None, "mde": None, "note": None}
    if n < 2:
        return {**out, "note": "fewer than 2 paired seeds"}
    d_z = float(TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power, alternative="two-sided"))
    out["d_z"] = d_z
    if sd_diff is None or not np.isfinite(sd_diff) or sd_diff <= 0:
        return {**out, "note": "no variation in the per-seed differences: no SD to scale the effect by"}
    return {**out, "mde": d_z * float(sd_diff)}
