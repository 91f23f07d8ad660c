"""The ``fairbench`` command line. User errors print one line and exit with code 2."""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from rich.table import Table

from .errors import FairbenchError

app = typer.Typer(add_completion=False, no_args_is_help=False, help="Fairness audits for medical AI models.")
console = Console()
_debug = {"on": False}

ModelsFile = typer.Option(None, "--models-file", envvar="FAIRBENCH_MODELS_FILE", help="YAML merged over the built-in models.yaml.")
TasksDir = typer.Option(None, "--tasks-dir", envvar="FAIRBENCH_TASKS_DIR", help="Extra directory of tasks/<name>/task.yaml.")
DataDir = typer.Option(None, "--data-dir", envvar="FAIRBENCH_DATA", help="Directory with a task's official data files.")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks.")) -> None:
    _debug["on"] = debug


@app.command()
def run(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="A name from models.yaml."),
    task: str = typer.Option("qpain-demo", "--task", "-t", help="A task name (fairbench list tasks)."),
    prompt_mode: Optional[str] = typer.Option(None, "--prompt-mode", help="zero_shot, few_shot, cot ... (task default)."),
    limit: Optional[str] = typer.Option(None, "--limit", help="Use only the first N cases."),
    seed: int = typer.Option(0, "--seed"),
    seeds: int = typer.Option(1, "--seeds", help="Run seeds SEED..SEED+N-1; write mean ± CI and paired tests across seeds."),
    output_dir: Path = typer.Option(Path("runs"), "--output-dir", "-o"),
    temperature: float = typer.Option(0.0, "--temperature", help="Sampling temperature for generation modes."),
    shard: Optional[str] = typer.Option(None, "--shard", help="I/N: compute only shard I of N of the requests (deterministic); shards share the run directory."),
    cases_from: Optional[str] = typer.Option(None, "--cases-from", help="Use only the held-out cases of this derived model (BASE+METHOD), to compare a base model fairly."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or tables."),
    models_file: Optional[Path] = ModelsFile,
    tasks_dir: Optional[Path] = TasksDir,
    data_dir: Optional[Path] = DataDir,
) -> None:
    """Audit MODEL on TASK; write manifest.json, requests.jsonl and results.json to a run directory."""
    from .boards.terminal import print_results
    from .engine import run as run_engine
    from .shard import parse_shard
    from .spec import RunSpec
    from .store import read_results

    n = None
    if limit is not None:
        try:
            n = int(limit)
        except ValueError:
            raise FairbenchError(f"--limit must be a positive whole number of cases, got {limit!r}.") from None
    spec = RunSpec(
        model=model, task=task, prompt_mode=prompt_mode, seed=seed, limit=n, output_dir=output_dir,
        models_file=models_file, tasks_dir=tasks_dir, data_dir=data_dir, temperature=temperature,
        shard=parse_shard(shard), cases_from=cases_from,
    )
    if seeds != 1:
        from .seeds import print_summary, run_seeds

        out, summary = run_seeds(spec, seeds, quiet=quiet)
        print(out) if quiet else print_summary(summary, out, console)
        return
    run_dir = run_engine(spec, quiet=quiet)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    if manifest.get("status") == "partial":
        print(f"shard {shard} done; {manifest['n_missing']} requests of other shards still missing in {run_dir}. "
              "The shard that completes the grid writes the results (or use `fairbench merge`).")
        return
    results = read_results(run_dir)
    if quiet:
        print(run_dir)
    else:
        print_results(results, run_dir, console)


@app.command()
def score(
    run_dir: Path = typer.Argument(..., help="A run directory written by `fairbench run`."),
    tasks_dir: Optional[Path] = TasksDir,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Recompute parsing, metrics and statistics from stored raw outputs, without any model."""
    from .boards.terminal import print_results
    from .rescore import rescore

    results = rescore(run_dir, tasks_dir)
    if quiet:
        print(run_dir)
    else:
        print_results(results, run_dir, console)


@app.command()
def leaderboard(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories written by `fairbench run`."),
    output: Path = typer.Option(..., "--output", "-o", help="leaderboards/NAME: writes NAME.md, NAME.csv, NAME.groups.csv and PNG plots."),
    sort_by: str = typer.Option("cf_mean_abs_delta", "--sort-by", help="Fairness metric to sort by: text cf_mean_abs_delta, cf_flip_rate, dp_gap; imaging dp_gap, eod, auc_gap, ece_gap, underdiag_gap (rows lacking it use their kind's default)."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG figures."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Multi-seed directories (run --seeds N): the model every row is paired-tested against (e.g. ERM)."),
) -> None:
    """Merge runs into a leaderboard (one row per model x task x prompt mode; newer runs replace older)."""
    from .boards.leaderboard import update
    from .boards.seeds import is_seeds_dir

    if run_dirs and all(is_seeds_dir(d) for d in run_dirs):  # `run --seeds N` summaries: mean ± CI, paired tests
        from .boards.seeds import write

        if reference is None:
            raise FairbenchError("multi-seed leaderboards need --reference MODEL (the row every model is paired-tested against).")
        for path in write(run_dirs, output, reference, plots=not no_plots).values():
            print(path)
        return
    for path in update(run_dirs, output, sort_by=sort_by, plots=not no_plots).values():
        print(path)


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
    from .boards.check import check as run_check
    from .boards.check import render

    result, row, run = run_check(baseline, candidate, max_increase, baseline_model, baseline_run, runs_dir, tasks_dir=tasks_dir)
    render(result, row, run, console)
    if result.regressions:
        raise typer.Exit(1)


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


data_app = typer.Typer(no_args_is_help=True, help="Official task data: download and verify.")
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

    card = load_task(task, tasks_dir)
    for name, status in download(card, data_dir, force=force):
        console.print(f"{status:>10}  {name}  (sha256 verified)")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one-line errors with exit code 2; tracebacks only with --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or bool(os.environ.get("FAIRBENCH_DEBUG"))
    try:
        # Without standalone mode click returns (not raises) the code of a `typer.Exit(n)`.
        code = app(args=args, standalone_mode=False, prog_name="fairbench")
    except FairbenchError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except click.ClickException as exc:
        if debug:
            raise
        print(f"error: {exc.format_message()} (see fairbench --help)", file=sys.stderr)
        return exc.exit_code
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def entry() -> None:
    sys.exit(main())
