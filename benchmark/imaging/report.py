"""Rich tables of an imaging run: per-group performance and the fairness gaps with CIs."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..report import _ci

GAP_ROWS = ("dp_gap", "dp_gap_at_0.5", "eod", "eod_at_0.5", "auc_gap", "worst_group_auc", "es_auc", "ece_gap", "underdiag_gap")


def _f(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def print_group_results(results: dict, run_dir, console: Console | None = None) -> None:
    console = console or Console()
    run, audit = results["run"], results["group"]
    for e, ep in audit["endpoints"].items():
        if not ep.get("attributes"):
            continue
        thr = results["thresholds"].get(e)
        console.print(
            f"[bold]{escape(run['model'])} on {escape(run['task'])} (seed {run['seed']}), endpoint '{escape(e)}'[/bold]: "
            f"threshold {thr} (validation), accuracy {_ci(ep.get('accuracy'))}, AUC {_ci(ep.get('auc'))}, "
            f"{ep.get('n_images')} test images / {ep.get('n_patients')} patients"
        )
        for attr, res in ep["attributes"].items():
            table = Table(title=f"{e} by {attr}", title_justify="left")
            for col in ("group", "n", "prevalence", "AUC", "pos rate", "TPR", "FPR", "ECE", "pos rate @0.5"):
                table.add_column(col, justify="left" if col == "group" else "right")
            for g, v in res["groups"].items():
                name = escape(g) + (" (small)" if v["small"] else "")
                table.add_row(name, str(v["n"]), _f(v["prevalence"]), _f(v["auc"]), _f(v["pos_rate"]), _f(v["tpr"]),
                              _f(v["fpr"]), _f(v["ece"]), _f(v["pos_rate_at_0.5"]))
            console.print(table)
            gaps = Table(title=f"{e} by {attr}: fairness metrics, 95% CI", title_justify="left")
            gaps.add_column("metric")
            gaps.add_column("value [95% CI]", justify="right")
            for name in GAP_ROWS:
                if name in res:
                    gaps.add_row(name, _ci(res[name]))
            for t in res["tests"]:
                gaps.add_row(f"{t['test']} p (Holm)", f"{_f(t['p_value'])} / {_f(t['p_adjusted'])}")
            console.print(gaps)
    for w in audit["warnings"] + [f"data: {x}" for x in results["data_report"]["quirks"]] + [f"data: {x}" for x in results["data_report"]["skipped"]]:
        console.print(f"[yellow]warning:[/yellow] {escape(w)}")
    console.print(f"run directory: [bold]{run_dir}[/bold]")
