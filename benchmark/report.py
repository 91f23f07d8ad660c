"""Rich tables of a run's results for the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _ci(est: dict | None, pct: bool = False) -> str:
    if not est or est.get("value") is None:
        return "-"
    scale, unit = (100.0, "%") if pct else (1.0, "")
    v = est["value"] * scale
    if est.get("ci_low") is None:
        return f"{v:.3g}{unit}"
    return f"{v:.3g}{unit} [{est['ci_low'] * scale:.3g}, {est['ci_high'] * scale:.3g}]"


def _probs(probs: dict | None) -> str:
    """Multiple choice: the mean probability of each option label."""
    return " ".join(f"{k}:{v:.2f}" for k, v in (probs or {}).items() if v is not None) or "-"


def _p(test: dict) -> str:
    if test.get("p_value") is None:
        return "-"
    mark = " *" if test.get("significant") else ""
    return f"{test['p_value']:.3g} / {test['p_adjusted']:.3g}{mark}"


def print_results(results: dict, run_dir, console: Console | None = None) -> None:
    console = console or Console()
    if results.get("kind") == "imaging":
        from .imaging.report import print_group_results

        return print_group_results(results, run_dir, console)
    run = results["run"]
    audit = results["counterfactual"]
    for qid, q in audit["questions"].items():
        title = f"{run['model']} on {run['task']} ({run['prompt_mode']}), question '{qid}': mean outcome by group, 95% CI"
        table = Table(title=title, title_justify="left")
        for col in ("attribute", "group", "cases", "mean outcome", "decision rate", "invalid"):
            table.add_column(col, justify="right" if col not in ("attribute", "group") else "left")
        for attr, ares in q.get("attributes", {}).items():
            for group, g in ares["groups"].items():
                table.add_row(
                    attr, escape(group), str(g["n_cases"]), _ci(g.get("mean_outcome")) if "mean_outcome" in g else _probs(g.get("option_probs")),
                    _ci(g.get("decision_rate")),
                    f"{g['n_invalid']}/{g['n_rows']}",
                )
            table.add_section()
        console.print(table)
        summary = Table(title=f"question '{qid}': counterfactual metrics", title_justify="left")
        summary.add_column("metric")
        summary.add_column("value [95% CI]", justify="right")
        for name in ("accuracy", "cf_flip_rate", "cf_mean_abs_delta", "cf_mean_tvd", "cf_spread"):
            if name in q:
                summary.add_row(name, _ci(q[name]))
        summary.add_row("invalid_rate", f"{q['invalid_rate']:.3g} ({q['n_invalid']}/{q['n_rows']})")
        for attr, ares in q.get("attributes", {}).items():
            for value, est in (ares.get("delta_vs_reference") or {}).items():
                summary.add_row(escape(f"delta[{attr}={value} - {ares['reference']}]"), _ci(est))
        for attr, ares in q.get("attributes", {}).items():
            if "dp_gap" in ares:
                summary.add_row(escape(f"dp_gap[{attr}]"), _ci(ares["dp_gap"]))
        console.print(summary)
        tests = Table(title=f"question '{qid}': tests (p raw / p adjusted, * significant after correction)", title_justify="left")
        for col in ("target", "test", "paired", "n", "statistic", "p"):
            tests.add_column(col)
        for attr, ares in q.get("attributes", {}).items():
            for t in ares["tests"]:
                stat = "-" if t["statistic"] is None else f"{t['statistic']:.3g}"
                tests.add_row(escape(t["target"]), t["test"], "yes" if t["paired"] else "no", str(t["n"]), stat, _p(t))
        console.print(tests)
    for w in audit["warnings"] + [f"data: {x}" for x in results["data_report"]["quirks"]]:
        console.print(f"[yellow]warning:[/yellow] {w}")
    console.print(f"run directory: [bold]{run_dir}[/bold]")
