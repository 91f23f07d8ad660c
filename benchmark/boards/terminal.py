"""Rich tables of a run's results for the terminal, for every kind: one section per audit present in
``results["audits"]`` (``counterfactual``: mean outcome by group, counterfactual metrics and tests;
``group``: per-group performance and the fairness gaps with CIs)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Label columns fold (break inside a word) instead of ending in "…": at 80 columns two intersection
# groups (``race=Asian|gender=man`` / ``...|gender=woman``) must never print as the same truncated text.
LABEL = {"overflow": "fold"}

GAP_ROWS = ("dp_gap", "dp_gap_at_0.5", "eod", "eod_at_0.5", "auc_gap", "worst_group_auc", "es_auc", "ece_gap", "underdiag_gap")


def _ci(est: dict | None, pct: bool = False) -> str:
    if not est or est.get("value") is None:
        return "-"
    scale, unit = (100.0, "%") if pct else (1.0, "")
    v = est["value"] * scale
    if est.get("ci_low") is None:  # say why there is no interval (e.g. no variation), if known
        return f"{v:.3g}{unit}" + (f" ({str(est['note']).split(':')[0]})" if est.get("note") else "")
    return f"{v:.3g}{unit} [{est['ci_low'] * scale:.3g}, {est['ci_high'] * scale:.3g}]"


def _f(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def _probs(probs: dict | None) -> str:
    """Multiple choice: the mean probability of each option label."""
    return " ".join(f"{k}:{v:.2f}" for k, v in (probs or {}).items() if v is not None) or "-"


def _p(test: dict) -> str:
    if test.get("p_value") is None:
        return "-"
    mark = " *" if test.get("significant") else ""
    return f"{test['p_value']:.3g} / {test['p_adjusted']:.3g}{mark}"


def print_counterfactual(results: dict, audit: dict, console: Console) -> None:
    """The ``counterfactual`` audit: per question, mean outcome by group, the counterfactual metrics, the tests."""
    run = results["run"]
    for qid, q in audit["questions"].items():
        title = f"{run['model']} on {run['task']} ({run['prompt_mode']}), question '{qid}': mean outcome by group, 95% CI"
        table = Table(title=title, title_justify="left")
        for col in ("attribute", "group", "cases", "mean outcome", "decision rate", "invalid"):
            table.add_column(col, justify="right" if col not in ("attribute", "group") else "left",
                             **(LABEL if col in ("attribute", "group") else {}))
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
        summary.add_column("metric", **LABEL)
        summary.add_column("value [95% CI; contrasts: simultaneous]", justify="right")
        for name in ("accuracy", "cf_flip_rate", "cf_mean_abs_delta", "cf_mean_tvd", "cf_spread"):
            if name in q:
                summary.add_row(name, _ci(q[name]))
        summary.add_row("invalid_rate", f"{q['invalid_rate']:.3g} ({q['n_invalid']}/{q['n_rows']})")
        for attr, ares in q.get("attributes", {}).items():
            for value, est in (ares.get("delta_vs_reference") or {}).items():
                # Contrasts: the simultaneous interval at the run's correction level (never the marginal one).
                conf = est.get("confidence") if est.get("ci_low") is not None else None
                label = f"delta[{attr}={value} - {ares['reference']}]" + (f" simult. {100 * conf:.3g}%" if conf else "")
                summary.add_row(escape(label), _ci(est) + (" *" if est.get("significant") else ""))
        for attr, ares in q.get("attributes", {}).items():
            if "dp_gap" in ares:
                summary.add_row(escape(f"dp_gap[{attr}]"), _ci(ares["dp_gap"]))
        console.print(summary)
        tests = Table(title=f"question '{qid}': tests (p raw / p adjusted, * significant after correction)", title_justify="left")
        for col in ("target", "test", "paired", "n", "statistic", "p"):
            tests.add_column(col, **(LABEL if col == "target" else {}))
        for attr, ares in q.get("attributes", {}).items():
            for t in ares["tests"]:
                stat = "-" if t["statistic"] is None else f"{t['statistic']:.3g}"
                tests.add_row(escape(t["target"]), t["test"], "yes" if t["paired"] else "no", str(t["n"]), stat, _p(t))
        console.print(tests)


def print_group(results: dict, audit: dict, console: Console) -> None:
    """The ``group`` audit: per endpoint and attribute, per-group performance and the gaps with CIs."""
    run = results["run"]
    for e, ep in audit["endpoints"].items():
        if not ep.get("attributes"):
            continue
        thr = (results.get("thresholds") or {}).get(e)
        console.print(
            f"[bold]{escape(run['model'])} on {escape(run['task'])} (seed {run['seed']}), endpoint '{escape(e)}'[/bold]: "
            f"threshold {thr} (validation), accuracy {_ci(ep.get('accuracy'))}, AUC {_ci(ep.get('auc'))}, "
            f"{ep.get('n_images')} test images / {ep.get('n_patients')} patients"
        )
        for attr, res in ep["attributes"].items():
            table = Table(title=f"{e} by {attr}", title_justify="left")
            for col in ("group", "n", "prevalence", "AUC", "pos rate", "TPR", "FPR", "ECE", "pos rate @0.5"):
                table.add_column(col, justify="left" if col == "group" else "right", **(LABEL if col == "group" else {}))
            for g, v in res["groups"].items():
                name = escape(g) + (" (small)" if v.get("small") else "")
                table.add_row(name, str(v.get("n")), _f(v.get("prevalence")), _f(v.get("auc")), _f(v.get("pos_rate")),
                              _f(v.get("tpr")), _f(v.get("fpr")), _f(v.get("ece")), _f(v.get("pos_rate_at_0.5")))
            console.print(table)
            gaps = Table(title=f"{e} by {attr}: fairness metrics, 95% CI", title_justify="left")
            gaps.add_column("metric", **LABEL)
            gaps.add_column("value [95% CI]", justify="right")
            for name in GAP_ROWS:
                if name in res:
                    gaps.add_row(name, _ci(res[name]))
            for t in res.get("tests", []):
                gaps.add_row(f"{t['test']} p (Holm)", f"{_f(t['p_value'])} / {_f(t['p_adjusted'])}")
            console.print(gaps)


SECTIONS = {"counterfactual": print_counterfactual, "group": print_group}


def print_results(results: dict, run_dir, console: Console | None = None) -> None:
    """Every audit of ``results["audits"]`` that has a section, then the warnings and the run directory."""
    console = console or Console()
    audits = results.get("audits") or {}
    warnings: list[str] = []
    for name, audit in audits.items():
        if name in SECTIONS:
            SECTIONS[name](results, audit, console)
        else:
            console.print(f"audit {escape(name)}: no terminal table; see results.json")
        warnings += audit.get("warnings", [])
    report = results.get("data_report") or {}
    warnings += [f"data: {x}" for x in report.get("quirks", [])] + [f"data: {x}" for x in report.get("skipped", [])]
    for w in warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(str(w))}")
    console.print(f"run directory: [bold]{run_dir}[/bold]")
