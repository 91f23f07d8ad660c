"""The ``fairbench`` command line; it calls the Python API (:mod:`benchmark.api`).

Exit codes: 0 success; 1 ``fairbench check`` found a fairness regression; 2 usage or input error (any
parser error of any subcommand, a bad value, an unknown model or task, a malformed file); 3 the
environment failed (disk full, read-only or vanished output directory, permission denied); 4 an
internal error (a bug: rerun with ``--debug`` for the traceback); 130 interrupted. A missing
optional dependency (torch for the hf backend ...) is a usage error naming the extra to install
(``EXTRA_OF``). Every error is one line on stderr; ``--debug`` (before or after the subcommand,
or ``FAIRBENCH_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import FairbenchError

EXIT_REGRESSION, EXIT_USAGE, EXIT_ENVIRONMENT, EXIT_INTERNAL, EXIT_INTERRUPTED = 1, 2, 3, 4, 130

app = typer.Typer(add_completion=False, no_args_is_help=False, pretty_exceptions_enable=False,
                  help="Fairness audits for medical AI models.")
console = Console()
_debug = {"on": False}

ModelsFile = typer.Option(None, "--models-file", envvar="FAIRBENCH_MODELS_FILE", help="YAML merged over the built-in models.yaml.")
TasksDir = typer.Option(None, "--tasks-dir", envvar="FAIRBENCH_TASKS_DIR", help="Extra directory of tasks/<name>/task.yaml.")
DataDir = typer.Option(None, "--data-dir", envvar="FAIRBENCH_DATA", help="Directory with a task's official data files.")


# The first screen (``fairbench`` alone, and the top of ``fairbench run --help``): the three commands a
# newcomer needs and a worked example, in at most 24 lines of 80 columns (tests/test_first_screen.py).
START = """\
Start here: three commands, each prints where its files went.
  fairbench run                    audit the embedded SmolLM2-135M on the
                                   12-case Q-Pain demo (96 requests)
  fairbench report runs/smollm2-135m__qpain-demo__zero_shot__seed0
                                   one HTML page: verdict, plots, cases
  fairbench leaderboard runs/* -o leaderboards/mine
                                   compare runs: Markdown, CSV, plots
Worked example, two models x two tasks on 3 cases each:
  fairbench run --limit 3 -m smollm2-135m,gemma3-270m
                -t qpain-demo,diversitymedqa
"verdict: EFFECT FOUND": a paired test found a difference between
groups after correction; "no effect found" is not proof of fairness."""

def first_screen() -> str:
    """What ``fairbench`` alone prints; the command list is read from the app, so it never drifts."""
    import textwrap

    names = [c.name or c.callback.__name__ for c in app.registered_commands] + [g.name for g in app.registered_groups]
    commands = textwrap.fill("Commands: " + " ".join(names), 80, subsequent_indent="  ")
    return f"""\
fairbench: fairness audits for medical AI models.

{START}

Help: fairbench CMD --help, fairbench list models|tasks, fairbench cache info
{commands}
Docs: README.md and docs/ (mkdocs serve). Exit: 0 ok, 1 check failed, 2 usage"""


def _version(value: bool) -> None:
    if value:
        print(f"fairbench {__version__} (fairbench-med; results schema {__import__('benchmark').SCHEMA_VERSION})")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks (also accepted after the subcommand)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    _debug["on"] = debug or _debug["on"]
    _quiet_third_party()


def _quiet_third_party() -> None:
    """Keep third-party progress bars, logs and warnings (weight loading, dataset maps, deprecations,
    TRL's experimental notice) out of fairbench's output, for every subcommand; ``--debug`` shows
    them. Libraries read these environment variables when imported; those already imported (the
    Python API, tests) are told directly. Nothing is imported here: `fairbench list` stays fast and
    works without the hf extra."""
    if _debug["on"]:
        return
    for var, value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
                       ("TRANSFORMERS_VERBOSITY", "error"), ("DATASETS_VERBOSITY", "error"),
                       ("TRL_EXPERIMENTAL_SILENCE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(var, value)
    for name in ("transformers", "accelerate", "peft", "trl", "datasets", "huggingface_hub", "torch", "sentence_transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("transformers", "accelerate", "peft", "trl", "torch", "huggingface_hub", "datasets", "sklearn"):
        warnings.filterwarnings("ignore", module=module)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    hub_utils = getattr(sys.modules.get("huggingface_hub"), "utils", None)  # transformers' dependency, not ours
    if hub_utils is not None:
        hub_utils.disable_progress_bars()


RUN_HELP = ("Audit MODEL on TASK into a run directory (manifest, requests, results).\n\n\b\n"
            + START)


@app.command(help=RUN_HELP)
def run(
    model: str = typer.Option("smollm2-135m", "--model", "-m", metavar="NAME[,NAME...]",
                              help="models.yaml name(s); a comma-separated list runs a grid. With --model-args: a backend (hf, llamacpp, openai, vllm)."),
    model_args: Optional[str] = typer.Option(None, "--model-args", metavar="K=V[,K=V...]",
                                             help="Ad-hoc model without YAML: hf/vllm pretrained=ID_OR_DIR, llamacpp model_path=FILE.gguf, openai base_url=URL,model=NAME; plus any models.yaml field (dtype=bfloat16, revision=...)."),
    task: str = typer.Option("qpain-demo", "--task", "-t", metavar="TASK[,TASK...]", help="Task name(s) (fairbench list tasks); comma-separated for a grid."),
    prompt_mode: Optional[str] = typer.Option(None, "--prompt-mode", metavar="MODE[,MODE...]", help="zero_shot, few_shot, cot ... (task default); comma-separated for a grid."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Use only the first N cases."),
    sample: Optional[int] = typer.Option(None, "--sample", min=1, help="Text tasks: use N cases drawn at random, seeded by --seed (the same N cases for every model)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of data shuffles, sampling and training (0 to 2^63-1)."),
    seeds: int = typer.Option(1, "--seeds", min=1, help="Run seeds SEED..SEED+N-1; write mean ± CI and paired tests across seeds."),
    label_fraction: Optional[str] = typer.Option(None, "--label-fraction", metavar="F[,F...]", help="Imaging tasks, trained models: train on a seeded, stratified (label x primary attribute) share F in (0, 1] of the train split, same val/test; a comma-separated list runs each fraction (docs/label-budget.md)."),
    output_dir: Path = typer.Option(Path("runs"), "--output-dir", "-o", help="Where run directories are written."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature >= 0 for generation modes (default: the model entry's generation.temperature; 0 = greedy)."),
    shard: Optional[str] = typer.Option(None, "--shard", metavar="I/N", help="Compute only shard I of N of the requests (deterministic); shards share the run directory."),
    cases_from: Optional[str] = typer.Option(None, "--cases-from", metavar="BASE+METHOD", help="Use only the held-out cases of this derived model, to compare a base model fairly."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", envvar="FAIRBENCH_REQUEST_CACHE", help="Request cache shared by every run (default: ~/.cache/fairbench/requests; fairbench cache info)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the shared request cache (the run directory still resumes)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the verdict and the run directory (last line)."),
    models_file: Optional[Path] = ModelsFile,
    tasks_dir: Optional[Path] = TasksDir,
    data_dir: Optional[Path] = DataDir,
) -> None:
    from .api import _spec, split_list
    from .shard import parse_shard
    from .spec import check_fraction

    models, tasks, modes = split_list(model), split_list(task), split_list(prompt_mode)
    if model_args is not None and len(models) > 1:
        raise FairbenchError("--model-args describes one ad-hoc model; give one backend in --model.")
    options = dict(seed=seed, limit=limit, sample=sample, output_dir=output_dir, models_file=models_file, tasks_dir=tasks_dir, data_dir=data_dir,
                   temperature=temperature, shard=parse_shard(shard), cases_from=cases_from, cache_dir=cache_dir,
                   use_cache=not no_cache, model_args=model_args, argv=list(sys.argv))
    fractions = [None] if label_fraction is None else list(dict.fromkeys(check_fraction(f) for f in split_list(label_fraction)))
    if len(fractions) > 1:  # every fraction resolves first: an empty stratum at 0.01 fails before 0.5 trains
        from .engine import plan

        for fraction in fractions:
            for m in models:
                for t in tasks:
                    for pm in modes:
                        plan(_spec(m, t, prompt_mode=pm, **{**options, "label_fraction": fraction}))
    for fraction in fractions:  # each label fraction is a run (or a --seeds N set) of its own
        _run_cells(models, tasks, modes, seeds, quiet, shard, {**options, "label_fraction": fraction})


def _run_cells(models, tasks, modes, seeds, quiet, shard, options) -> None:
    from .api import Results, evaluate_grid
    from .boards.terminal import print_results
    from .boards.verdict import print_verdict
    from .engine import make_progress

    grid = len(models) * len(tasks) * len(modes) > 1
    if seeds != 1:
        from .api import _spec
        from .seeds import print_summary, run_seeds

        for m in models:
            for t in tasks:
                for pm in modes:
                    out, summary = run_seeds(_spec(m, t, prompt_mode=pm, **options), seeds, quiet=quiet)
                    print(out) if quiet else print_summary(summary, out, console)
        return
    cells = evaluate_grid(models, tasks, modes, quiet=quiet, progress=None if quiet else make_progress(quiet), **options)
    for cell in cells:
        if not isinstance(cell, Results):
            manifest = json.loads((cell / "manifest.json").read_text())
            print(f"shard {shard} done; {manifest['n_missing']} requests of other shards still missing in {cell}. "
                  "The shard that completes the grid writes the results (or use `fairbench merge`).")
            continue
        if quiet or grid:
            print_verdict(cell.raw, None if quiet else console)
            print(cell.run_dir)
        else:
            print_verdict(cell.raw, console)
            console.print()
            print_results(cell.raw, cell.run_dir, console)
            _cache_line([cell.manifest])
    if grid and not quiet:
        _grid_table([c for c in cells if isinstance(c, Results)])


def _grid_table(cells) -> None:
    """One summary table over a grid: one row per run, the verdict and the headline metrics."""
    from .boards.terminal import Col, label, show_table

    def est(m, name):
        e = m.get(name) or {}
        return "-" if not isinstance(e, dict) or e.get("value") is None else f"{e['value']:.3g}"

    rows = []
    for c in cells:
        run, m, v = c.raw.get("run", {}), c.raw.get("metrics", {}), c.verdict
        status = "effect" if v.any_effect else ("n/a" if v.findings and all(f.status == "not applicable" for f in v.findings) else "none found")
        rows.append((label(str(run.get("model"))), label(str(run.get("task"))), str(run.get("prompt_mode")), str(run.get("n_cases")), status,
                     est(m, "cf_flip_rate"), est(m, "cf_mean_abs_delta"), est(m, "dp_gap")))
    cols = [Col("model", keep=True), Col("task", keep=True), Col("mode"), Col("cases", "right", "n"), Col("verdict", keep=True),
            Col("cf_flip_rate", "right", "flip", keep=True), Col("cf_mean_abs_delta", "right", "|Δ|", keep=True), Col("dp_gap", "right", "dp", keep=True)]
    show_table(console, "grid summary (lower is fairer; verdict from the paired tests after correction)", cols, rows, records_key=2)
    _cache_line([c.manifest for c in cells])


def _cache_line(manifests: list[dict]) -> None:
    """Where this command's request rows came from: computed now, already in the run directory
    (resume), or copied from the shared request cache (with its path, so a reused row is never
    invisible)."""
    from .boards.terminal import cache_summary, print_line

    line = cache_summary(manifests)
    if line:
        print_line(console, line)


@app.command()
def score(
    run_dir: Path = typer.Argument(..., help="A run directory written by `fairbench run` (or a `run --seeds N` directory)."),
    tasks_dir: Optional[Path] = TasksDir,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Recompute parsing, metrics and statistics from stored raw outputs, without any model. A
    multi-seed directory (`run --seeds N`) rescores every seed's run and rewrites its summary."""
    from .api import score as api_score
    from .boards.seeds import is_seeds_dir
    from .boards.terminal import print_results
    from .boards.verdict import print_verdict

    if is_seeds_dir(run_dir):
        from .seeds import print_summary, rescore_seeds

        summary = rescore_seeds(run_dir, tasks_dir)
        if quiet:
            print(run_dir)
        else:
            print_summary(summary, run_dir, console)
        return

    results = api_score(run_dir, tasks_dir).raw
    print_verdict(results, None if quiet else console)
    if quiet:
        print(run_dir)
    else:
        console.print()
        print_results(results, run_dir, console)


@app.command()
def leaderboard(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories written by `fairbench run`."),
    output: Path = typer.Option(..., "--output", "-o", help="leaderboards/NAME: writes NAME.md, NAME.csv, NAME.groups.csv and PNG plots."),
    sort_by: str = typer.Option("cf_mean_abs_delta", "--sort-by", help="Fairness metric to sort by: text cf_mean_abs_delta, cf_flip_rate, dp_gap; imaging dp_gap, eod, auc_gap, ece_gap, underdiag_gap (rows lacking it use their kind's default)."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG figures."),
    reference: Optional[str] = typer.Option(None, "--reference", help="The model every row is paired-tested against: multi-seed directories (run --seeds N), paired t over seeds (e.g. ERM); text runs, Δ of each headline metric on the same cases with a bootstrap CI and Holm p (e.g. the base model of a mitigation board)."),
    control: Optional[list[str]] = typer.Option(None, "--control", metavar="GLOB=MODEL", help="Multi-seed boards: rows whose model matches GLOB are paired-tested against MODEL (their like-for-like control) instead of --reference; repeatable."),
    html: bool = typer.Option(False, "--html", help="Also write NAME.html: the board and the given runs' report (fairbench report)."),
    question: Optional[str] = typer.Option(None, "--question", help="Text runs: the question to show (default: each task's primary question); a board holds one question per task."),
    replace: bool = typer.Option(False, "--replace", help="Let a run replace the row of the same model x task x prompt mode x split even if it has another seed or a smaller --limit (default: such a run is dropped and listed)."),
) -> None:
    """Merge runs into a leaderboard (one row per model x task x prompt mode x split; a newer run of the
    same seed and at least the same --limit replaces the row; replaced and dropped runs are listed on stderr)."""
    from .boards.leaderboard import update
    from .boards.seeds import is_seeds_dir

    if run_dirs and all(is_seeds_dir(d) for d in run_dirs):  # `run --seeds N` summaries: mean ± CI, paired tests
        from .boards.budget import is_budget
        from .boards.seeds import write

        if reference is None:
            raise FairbenchError("multi-seed leaderboards need --reference MODEL (the row every model is paired-tested against).")
        if is_budget(run_dirs):  # summaries of `run --label-fraction F --seeds N`: the label-budget board
            from .boards import budget

            if control:
                raise FairbenchError("--control: the label-budget board pairs each mitigation with --reference at the same "
                                     "label fraction; drop --control.")
            if html:
                raise FairbenchError("--html: the label-budget board is Markdown, CSV and a figure; drop --html.")
            for path in budget.write(run_dirs, output, reference, plots=not no_plots,
                                     command="fairbench " + " ".join(sys.argv[1:])).values():
                print(path)
            return
        from .boards.seeds import parse_controls

        written = write(run_dirs, output, reference, plots=not no_plots, controls=parse_controls(control))
        for path in written.values():
            print(path)
        if html:
            from .boards.report import write_report

            print(write_report([], written["csv"].with_suffix(".html"), board=written["csv"]))
        return
    notes: list[str] = []
    annotate = None
    if reference is not None:  # Δ vs the reference row on the same cases (boards.check's paired bootstrap)
        from functools import partial

        from .boards.check import reference_deltas

        annotate = partial(reference_deltas, reference=reference, run_dirs=run_dirs)
    paths = update(run_dirs, output, sort_by=sort_by, plots=not no_plots, replace=replace, notes=notes,
                   question=question, annotate=annotate)
    for path in paths.values():
        print(path)
    for line in notes:
        print(line, file=sys.stderr)
    if html:  # the HTML report of the board (its CSV) and of the runs just added
        from .boards.report import write_report

        print(write_report(run_dirs, paths["csv"].with_suffix(".html"), board=paths["csv"]))


@app.command()
def check(
    baseline: Path = typer.Option(..., "--baseline", help="A leaderboard CSV (leaderboards/NAME.csv)."),
    candidate: Path = typer.Option(..., "--candidate", help="The run directory to gate."),
    max_increase: Optional[list[str]] = typer.Option(None, "--max-increase", help="METRIC=DELTA tolerated increase (repeatable; default 0 for the kind's fairness metrics: text cf_flip_rate, cf_mean_abs_delta, dp_gap; imaging dp_gap, eod, auc_gap, ece_gap, underdiag_gap)."),
    baseline_model: Optional[str] = typer.Option(None, "--baseline-model", help="The baseline row's model (default: the candidate's model, or the only row)."),
    baseline_run: Optional[Path] = typer.Option(None, "--baseline-run", help="The baseline's run directory, for the paired test."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where to look for the baseline's run directory by its run id."),
    tasks_dir: Optional[Path] = TasksDir,
) -> None:
    """Exit 0 if no fairness metric of CANDIDATE regressed beyond tolerance against BASELINE, 1 if one did."""
    from .api import check as api_check
    from .boards.check import render

    result, row, run = api_check(baseline, candidate, max_increase, baseline_model, baseline_run, runs_dir, tasks_dir=tasks_dir)
    render(result, row, run, console)
    if result.regressions:
        raise typer.Exit(1)


@app.command()
def report(
    inputs: list[Path] = typer.Argument(..., help="Run directories, and/or a leaderboard CSV (leaderboards/NAME.csv)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="The HTML file (default: RUN_DIR/report.html for one run, NAME.html next to a leaderboard, else ./report.html)."),
    tasks_dir: Optional[Path] = TasksDir,
) -> None:
    """Write one self-contained HTML report (opens offline from file://): verdict, forest plots, tables,
    provenance, per-case drill-down, and paired model comparisons when several runs are given."""
    from .boards.report import write_report

    print(write_report(inputs, output, tasks_dir=tasks_dir))


@app.command()
def power(
    task: str = typer.Argument(..., help="A text task (e.g. qpain)."),
    effect: Optional[float] = typer.Option(None, "--effect", help="Planted shift D of P(yes) / P(correct) for one group: print the power at D (default: the MDE at 80% power)."),
    cases: Optional[int] = typer.Option(None, "--cases", help="Number of cases (default: the run's, else the task's full size)."),
    model: Optional[str] = typer.Option(None, "--model", help="Calibrate the noise on this model's newest run of TASK (under --runs-dir)."),
    run_dir: Optional[Path] = typer.Option(None, "--run", help="Calibrate the noise on this run directory."),
    sims: int = typer.Option(20, "--sims", help="Simulated runs per effect size."),
    seed: int = typer.Option(0, "--seed"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where --model looks for runs."),
    tasks_dir: Optional[Path] = TasksDir,
) -> None:
    """Power or minimum detectable effect of each metric of TASK's audit, simulated through the audit (docs/power.md)."""
    from .audits.power import command

    command(task, effect, cases, model, run_dir, sims, seed, tasks_dir, runs_dir, console)


@app.command()
def merge(
    dest: Path = typer.Argument(..., help="The run directory to complete."),
    sources: list[Path] = typer.Argument(..., help="Run directories of the same run written by other shards (other machines)."),
) -> None:
    """Copy the stored requests of shard run directories into DEST; then finish with the same
    `fairbench run ...` command without --shard (it computes nothing already stored)."""
    from .shard import merge_caches

    for src, n in merge_caches(dest, sources).items():
        print(f"{src}: {n} requests added")


class ListKind(str, Enum):
    models = "models"
    tasks = "tasks"
    backends = "backends"
    loaders = "loaders"
    audits = "audits"
    mitigations = "mitigations"


@app.command()
def mitigate(
    method: str = typer.Option(..., "--method", help="A mitigation (fairbench list mitigations)."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="The base model (a name from models.yaml)."),
    task: str = typer.Option("qpain-demo", "--task", "-t", help="The task whose mitigation cases are used."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of the method's settings (README: Mitigations)."),
    seed: int = typer.Option(0, "--seed"),
    eval_fraction: float = typer.Option(0.5, "--eval-fraction", help="Share of cases held out for evaluation."),
    prompt_mode: Optional[str] = typer.Option(None, "--prompt-mode", help="Prompt mode used to fit (task default)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Artifact directory (default: the fairbench cache)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    models_file: Optional[Path] = ModelsFile,
    tasks_dir: Optional[Path] = TasksDir,
    data_dir: Optional[Path] = DataDir,
) -> None:
    """Fit METHOD on the mitigation cases of TASK and register the derived model(s) BASE+METHOD."""
    from .mitigations.runner import mitigate as run_mitigation

    names = run_mitigation(
        method, model, task, config_file=config, seed=seed, eval_fraction=eval_fraction, output_dir=output_dir,
        models_file=models_file, tasks_dir=tasks_dir, data_dir=data_dir, prompt_mode=prompt_mode, quiet=quiet,
    )
    for name in names:
        print(name if quiet else f"registered {name}: fairbench run --model {name} --task {task}")


@app.command()
def judge(
    run_dir: Optional[Path] = typer.Argument(None, help="A free-text run directory (e.g. --prompt-mode explain) to grade; omit with --calibrate."),
    model: str = typer.Option(..., "--model", "-m", help="The judge: any registered text model (fairbench list models)."),
    calibrate: bool = typer.Option(False, "--calibrate", help="Grade the labelled rationale table instead and report Cohen's kappa against the rule-based detectors and the labels."),
    table: Optional[Path] = typer.Option(None, "--table", help="The labelled table for --calibrate (default: tasks/qpain-demo/judge_calibration.csv)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="--calibrate: write the agreement JSON to this file."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    models_file: Optional[Path] = ModelsFile,
    tasks_dir: Optional[Path] = TasksDir,
) -> None:
    """Grade free-text rationales with an LLM judge (masked text, both option orders; docs/generative.md).
    The judge is never the only evidence for a finding."""
    from . import judge as J
    from .audits.mentions import card_vocabulary
    from .cards import load_task

    if calibrate == (run_dir is not None):
        raise FairbenchError("fairbench judge: give a RUN_DIR to grade, or --calibrate (not both).")
    backend, _ = J.make_judge(model, models_file)
    try:
        if calibrate:
            card = load_task("qpain-demo", tasks_dir)
            res = J.calibrate(backend, J.read_calibration(table or J.CALIBRATION), *card_vocabulary(card))
            res = {"judge_model": model, **res}
            if output is not None:
                output.write_text(json.dumps(res, indent=1, default=str), encoding="utf-8")
            shown = {k: v for k, v in res.items() if k != "grades"}
            print(json.dumps(shown, indent=1, default=str))
            return
        manifest = run_dir / "manifest.json"
        if not manifest.is_file():
            raise FairbenchError(f"{run_dir}: no manifest.json; give a run directory written by `fairbench run`.")
        card = load_task(json.loads(manifest.read_text())["task"]["name"], tasks_dir)
        res = J.judge_run(run_dir, backend, card)
    finally:
        backend.close()
    from .boards.verdict import print_verdict

    results = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").is_file() else {}
    print_verdict(results, None if quiet else console, judge=res)
    if quiet:
        print(run_dir / "judge.json")


@app.command("list")
def list_(
    kind: ListKind = typer.Argument(..., help="models | tasks | backends | loaders | audits | mitigations"),
    models_file: Optional[Path] = ModelsFile,
    tasks_dir: Optional[Path] = TasksDir,
) -> None:
    """Show what is registered."""
    table = Table(show_header=True)
    if kind == ListKind.models:
        from .config import load_models

        reg = load_models(models_file)
        for col in ("name", "backend", "model", "source"):
            table.add_column(col)
        for name in reg.names():
            s = reg.specs[name]
            table.add_row(name, s.backend, s.model + (f" ({s.gguf_file})" if s.gguf_file else ""), str(reg.sources[name]))
    elif kind == ListKind.tasks:
        from .cards import discover, read_card
        from .kinds import kind_for

        for col in ("name", "kind", "loader", "questions", "modes", "audits", "card"):
            table.add_column(col, no_wrap=col in ("name", "kind"), overflow="fold")
        for name, path in sorted(discover(tasks_dir).items()):
            card = read_card(path)
            outputs, modes = card.outputs()
            table.add_row(name, card.kind, card.loader, ", ".join(outputs), ", ".join(modes), ", ".join(kind_for(card).audits()), str(path))
    else:
        from .registry import describe

        table.add_column("name")
        table.add_column("provided by")
        for name, where in describe(kind.value).items():
            table.add_row(name, where)
    console.print(table)


data_app = typer.Typer(no_args_is_help=False, help="Official task data: download and verify.")
app.add_typer(data_app, name="data")


@data_app.command("download")
def data_download(
    task: str = typer.Argument(..., help="A task with official files (fairbench list tasks)."),
    data_dir: Optional[Path] = DataDir,
    tasks_dir: Optional[Path] = TasksDir,
    force: bool = typer.Option(False, "--force", help="Download again even if a verified copy is present."),
) -> None:
    """Fetch TASK's official files from the URLs pinned in its task card and verify their SHA-256s."""
    from .cards import load_task
    from .data.download import download
    from .progress import download_progress

    card = load_task(task, tasks_dir)
    bars: dict[str, object] = {}
    with download_progress(quiet=False) as progress:
        def on_bytes(name: str, done: int, total: int | None) -> None:
            if name not in bars:
                bars[name] = progress.add_task(name, total=total)
            progress.update(bars[name], completed=done)

        done = download(card, data_dir, force=force, on_bytes=on_bytes)
    for name, status in done:
        console.print(f"{status:>10}  {name}  (sha256 verified)")


cache_app = typer.Typer(no_args_is_help=False, help="The shared request cache: where it is, what it holds, clear it.")
app.add_typer(cache_app, name="cache")
CacheDir = typer.Option(None, "--cache-dir", help="The request cache directory (default: $FAIRBENCH_REQUEST_CACHE, else ~/.cache/fairbench/requests).")


@cache_app.command("info")
def cache_info(cache_dir: Optional[Path] = CacheDir) -> None:
    """Location and size of the request cache, rows per model fingerprint, and the other caches."""
    from rich.filesize import decimal

    from .boards.terminal import print_line, show_table
    from .caches import info

    i = info(cache_dir)
    print_line(console, f"request cache: {i.path} ({i.chosen_by})")
    if not i.exists:
        print_line(console, "  empty: no run has written to it yet")
    else:
        print_line(console, f"  {i.rows} rows, {decimal(i.bytes)} on disk")
        rows = [(m["model"] or "(unrecorded)", (m["fingerprint"] or "-")[:16], str(m["rows"]), decimal(m["bytes"])) for m in i.models]
        show_table(console, "rows per model fingerprint", [("model", "left"), ("fingerprint", "left"), ("rows", "right"), ("size", "right")], rows)
    if i.others:
        print_line(console, f"other caches in {i.root}:")
        show_table(console, None, [("name", "left"), ("size", "right"), ("holds", "left")],
                   [(name, decimal(size), what) for name, _, size, what in i.others])
    print_line(console, "fairbench cache clear [--model NAME] removes request rows; fairbench run --no-cache bypasses them.")


@cache_app.command("clear")
def cache_clear(
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="NAME|FINGERPRINT",
                                        help="Only the rows of this model (a models.yaml name, or a fingerprint prefix of 6+ hex digits)."),
    cache_dir: Optional[Path] = CacheDir,
) -> None:
    """Delete the request cache's rows (all of them, or one model's); later runs recompute them."""
    from rich.filesize import decimal

    from .caches import clear

    path, n, freed = clear(cache_dir, model)
    if model is not None and n == 0:
        raise FairbenchError(f"{path}: no cached rows of model {model!r}; `fairbench cache info` lists the models it holds.")
    print(f"removed {n} rows ({decimal(freed)}) from {path}")


# Optional dependencies by top-level module -> the extra that installs them (pyproject.toml).
EXTRA_OF = {
    **dict.fromkeys(("torch", "accelerate", "safetensors"), "hf"),
    **dict.fromkeys(("peft", "trl", "datasets", "optuna", "concept_erasure", "sentence_transformers"), "mitigations"),
    **dict.fromkeys(("wfdb", "h5py", "openpyxl", "PIL"), "vision"),
    **dict.fromkeys(("timm", "open_clip", "torchvision"), "timm"),
    "llama_cpp": "llamacpp",
    "vllm": "vllm",
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The one-line fix for a missing optional dependency, or None when the module is not one."""
    module = (exc.name or "").split(".")[0]
    extra = EXTRA_OF.get(module)
    if extra is None:
        return None
    return f"this needs {module}, which is not installed: pip install 'fairbench-med[{extra}]'"


def _exception_kinds() -> tuple[tuple, tuple, tuple]:
    """(parser errors, exits, aborts) of every click flavour present: typer >= 0.20 bundles its own
    click copy (``typer._click``, errors derive from ``typer.exceptions.TyperException``); older typer
    and plain click raise ``click.exceptions``. Caught by kind, whichever copy raised them."""
    import typer.exceptions as te

    parse: list[type] = [te.TyperException] if hasattr(te, "TyperException") else []
    exits: list[type] = [typer.Exit]
    aborts: list[type] = [te.Abort] if hasattr(te, "Abort") else []
    try:  # not a dependency: only present when something else installed it
        import click.exceptions as ce

        parse.append(ce.ClickException)
        exits.append(ce.Exit)
        aborts.append(ce.Abort)
    except ImportError:
        pass
    return tuple(parse), tuple(exits), tuple(aborts)


def _is_parser_error(exc: BaseException, kinds: tuple) -> bool:
    if isinstance(exc, kinds):
        return True
    # Any other copy of click's exception hierarchy: a message formatter and an exit code.
    return callable(getattr(exc, "format_message", None)) and isinstance(getattr(exc, "exit_code", None), int) \
        and type(exc).__module__.split(".")[0] in ("click", "typer")


def _split_debug(args: list[str]) -> tuple[list[str], bool]:
    """``--debug`` is accepted anywhere before ``--``: moved in front of the subcommand."""
    cut = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:cut]
    rest = [a for a in args[:cut] if a != "--debug"] + args[cut:]
    return (["--debug", *rest] if debug else rest), debug


def _line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one-line errors with the documented exit codes (module docstring);
    tracebacks only with --debug."""
    args, debug = _split_debug(list(sys.argv[1:] if argv is None else argv))
    debug = debug or bool(os.environ.get("FAIRBENCH_DEBUG"))
    if not [a for a in args if a != "--debug"]:  # `fairbench` alone: the first screen, not "Missing command"
        print(first_screen())
        return 0
    _debug["on"] = debug
    parse, exits, aborts = _exception_kinds()
    try:
        # Without standalone mode click returns (not raises) the code of a `typer.Exit(n)`.
        code = app(args=args, standalone_mode=False, prog_name="fairbench")
    except FairbenchError as exc:
        if debug:
            raise
        print(f"error: {_line(exc)}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_USAGE)
    except exits as exc:
        return getattr(exc, "exit_code", 0)
    except (KeyboardInterrupt, *aborts):
        print("aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every error is one line; --debug shows the traceback
        if debug:
            raise
        if isinstance(exc, ModuleNotFoundError) and (fix := missing_extra(exc)):
            print(f"error: {fix}", file=sys.stderr)
            return EXIT_USAGE
        if _is_parser_error(exc, parse):
            print(f"error: {_line(exc.format_message())} (see fairbench {_subcommand(args)}--help)", file=sys.stderr)
            return EXIT_USAGE
        from .errors import storage_error

        if isinstance(exc, OSError) or type(exc).__module__ == "sqlite3":
            err = storage_error(getattr(exc, "filename", None) or "output", exc)
            if err is not None:
                print(f"error: {_line(err)}", file=sys.stderr)
                return EXIT_ENVIRONMENT
        print(f"error: internal error {type(exc).__name__}: {_line(exc)} (rerun with --debug for the traceback and "
              "report it)", file=sys.stderr)
        return EXIT_INTERNAL
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def _subcommand(args: list[str]) -> str:
    names = {c.name or c.callback.__name__ for c in app.registered_commands} | {"data", "cache"}
    for a in args:
        if a in names:
            return f"{a} "
    return ""


def entry() -> None:
    sys.exit(main())
