"""Rich tables of a run's results for the terminal, for every kind: one section per audit present in
``results["audits"]`` (``counterfactual``: mean outcome by group, counterfactual metrics and tests;
``group``: per-group performance and the fairness gaps with CIs).

Every table goes through :func:`show_table`, which never lets rich fold a word or a number in the
middle (``race=Hisp`` / ``anic``, ``smol`` / ``lm2-``): it prints the first layout whose natural width
fits the console (full headers; then short headers with a legend, labels and intervals on several
lines at their own separators, columns that hold one value in every row moved into the title);
below that width, one record per row (``psql``'s expanded display). Tested at 80 and 120 columns.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class Col:
    """A column: ``name`` (full header), ``justify``, ``short`` (header of the compact layouts,
    explained in a legend line), ``keep`` (never moved above the table as a constant)."""

    name: str
    justify: str = "left"
    short: str | None = None
    keep: bool = False


class Split(tuple):
    """A cell of pieces that may go on separate lines when the table is too wide (joined by ``sep``
    otherwise): a label broken after ``|``, ``/`` or ``+``, an estimate broken before its interval.
    Pieces are plain text (escaped here)."""

    sep = ""

    def __new__(cls, pieces, sep: str = ""):
        obj = super().__new__(cls, [escape(p) for p in pieces])
        obj.sep = sep
        return obj


def label(text: str) -> Split:
    """``race=Hispanic|gender=woman`` -> pieces ``race=Hispanic|`` and ``gender=woman``."""
    pieces, cur = [], ""
    for ch in str(text):
        cur += ch
        if ch in "|/+" and len(cur) > 1:
            pieces.append(cur)
            cur = ""
    return Split([*pieces, cur] if cur else pieces)


def estimate(text: str) -> Split:
    """``0.336 [0.31, 0.36]`` -> ``0.336`` and ``[0.31, 0.36]`` (the interval stays whole)."""
    head, sep, tail = str(text).partition(" [")
    return Split([head, "[" + tail] if sep else [head], " ")


def _cell(value, split: bool) -> Text:
    if isinstance(value, Split):
        return Text.from_markup(("\n" if split else value.sep).join(value))
    return Text.from_markup(str(value))


def print_line(console: Console, text: str, indent: int = 4) -> None:
    """Plain text (no markup): on a terminal wrapped at words with a hanging indent (rich wraps
    without one, and folds a word longer than the line), never inside a word or a path; in logs and
    pipes one line, for grep."""
    if console.is_terminal:
        import textwrap

        lead = " " * (len(text) - len(text.lstrip()) + indent)
        text = textwrap.fill(text, width=console.width, subsequent_indent=lead, break_long_words=False, break_on_hyphens=False)
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _natural_width(console: Console, table: Table) -> int:
    return console.measure(table, options=console.options.update_width(100_000)).maximum


def show_table(console: Console, title: str | None, columns, rows, *, legend: dict[str, str] | None = None,
               records_key: int = 1, compact: tuple[list, list] | None = None) -> None:
    """Print ``rows`` (tuples of cells: markup strings or :class:`Split`) under ``columns`` (:class:`Col`
    or ``(name, justify)``) without folding any word or number: see the module docstring.
    ``compact``: other (columns, rows) for the narrower layouts (e.g. two label columns merged into
    one). In the record layout a row is headed by its first ``records_key`` cells, then ``name value``
    fields packed into lines of the console's width."""
    def norm(cs, rs):
        return [c if isinstance(c, Col) else Col(*c) for c in cs], [tuple(r) for r in rs]

    full = norm(columns, rows)
    small = norm(*compact) if compact is not None else full
    layouts = [(*full, False, False, False)] + [(*small, True, split, drop) for drop in (False, True) for split in (False, True)]
    for cols, rs, narrow, split, drop in layouts:
        heading, table, used = _build(title, cols, rs, narrow, split, drop)
        if _natural_width(console, table) <= console.width:
            if heading:  # above the table, not its title: a title wraps at the table's width, not the terminal's
                print_line(console, Text.from_markup(heading).plain)
            console.print(table)
            items = {**used, **(legend or {})}
            if items:
                console.print("  " + "; ".join(f"{k} = {v}" for k, v in items.items()), markup=False, highlight=False)
            return
    _records(console, title, *small, records_key)


def _build(title, cols: list[Col], rows: list[tuple], narrow: bool, split: bool, drop: bool) -> tuple[str | None, Table, dict]:
    """The table; ``narrow``: short headers, no outer edge; ``split``: Split cells on several lines;
    ``drop``: columns with one value in every row (of three or more) moved into the title. Returns
    the heading (markup), the table and the short headers used (for the legend)."""
    constant = [i for i, c in enumerate(cols) if drop and not c.keep and len(rows) > 2 and len({str(r[i]) for r in rows}) == 1]
    keep = [i for i in range(len(cols)) if i not in constant]
    note = ", ".join(f"{cols[i].name} {_cell(rows[0][i], False).plain}" for i in constant)
    heading = (title + (f" (every row: {escape(note)})" if note else "")) if title else None
    t = Table(show_edge=not narrow)
    used = {}
    for i in keep:
        c = cols[i]
        header = c.short if narrow and c.short else c.name
        if header != c.name:
            used[header] = c.name
        t.add_column(header, justify=c.justify, no_wrap=True)
    for r in rows:
        t.add_row(*(_cell(r[i], split) for i in keep))
    return heading, t, used


def _records(console: Console, title: str | None, cols: list[Col], rows, key: int) -> None:
    """One record per row: its key cells on one line, then ``name value`` fields packed into lines."""
    if title:
        print_line(console, Text.from_markup(title).plain)
    width = max(20, console.width - 4)
    for r in rows:
        console.print(Text.from_markup("[bold]" + " · ".join(_cell(c, False).markup for c in r[:key]) + "[/bold]"))
        line = ""
        for c, v in zip(cols[key:], r[key:]):
            field = f"{c.name}: {_cell(v, False).markup}"
            plain = Text.from_markup(field).plain
            if line and len(Text.from_markup(line).plain) + 3 + len(plain) > width:
                console.print(Text.from_markup("  " + line))
                line = ""
            line = f"{line}   {field}" if line else field
        if line:
            console.print(Text.from_markup("  " + line))


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
        title = escape(f"{run['model']} on {run['task']} ({run['prompt_mode']}), question '{qid}': mean outcome by group, 95% CI")
        cols = [Col("attribute"), Col("group"), Col("cases", "right"), Col("mean outcome", "right", "mean"),
                Col("decision rate", "right", "decision"), Col("invalid", "right", keep=True)]
        rows, merged = [], []
        for attr, ares in q.get("attributes", {}).items():
            for group, g in ares["groups"].items():
                mean = _ci(g.get("mean_outcome")) if "mean_outcome" in g else _probs(g.get("option_probs"))
                cells = (str(g["n_cases"]), estimate(mean), estimate(_ci(g.get("decision_rate"))), f"{g['n_invalid']}/{g['n_rows']}")
                rows.append((escape(attr), label(group), *cells))
                # Compact: one label column, the attribute inside it (intersections already name theirs).
                merged.append((label(group if "=" in group else f"{attr}={group}"), *cells))
        show_table(console, title, cols, rows, records_key=2, compact=([Col("group"), *cols[2:]], merged))
        summary = []
        for name in ("accuracy", "cf_flip_rate", "cf_mean_abs_delta", "cf_mean_tvd", "cf_spread"):
            if name in q:
                summary.append((name, estimate(_ci(q[name]))))
        summary.append(("invalid_rate", f"{q['invalid_rate']:.3g} ({q['n_invalid']}/{q['n_rows']})"))
        for attr, ares in q.get("attributes", {}).items():
            for value, est in (ares.get("delta_vs_reference") or {}).items():
                # Contrasts: the simultaneous interval at the run's correction level (never the marginal one).
                conf = est.get("confidence") if est.get("ci_low") is not None else None
                name = f"delta[{attr}={value} - {ares['reference']}]" + (f" simult. {100 * conf:.3g}%" if conf else "")
                summary.append((label(name), estimate(_ci(est) + (" *" if est.get("significant") else ""))))
        for attr, ares in q.get("attributes", {}).items():
            if "dp_gap" in ares:
                summary.append((escape(f"dp_gap[{attr}]"), estimate(_ci(ares["dp_gap"]))))
        show_table(console, f"question '{escape(qid)}': counterfactual metrics", [Col("metric"), Col("value [95% CI]", "right")], summary)
        tests = []
        for attr, ares in q.get("attributes", {}).items():
            for t in ares["tests"]:
                stat = "-" if t["statistic"] is None else f"{t['statistic']:.3g}"
                tests.append((label(t["target"]), t["test"], "yes" if t["paired"] else "no", str(t["n"]), stat, _p(t)))
        show_table(console, f"question '{escape(qid)}': tests (p raw / p adjusted, * significant after correction)",
                   [Col("target"), Col("test"), Col("paired"), Col("n", "right"), Col("statistic", "right", "stat"), Col("p")], tests)


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
            cols = [Col("group"), Col("n", "right"), Col("prevalence", "right", "prev"), Col("AUC", "right"),
                    Col("pos rate", "right", "pos"), Col("TPR", "right"), Col("FPR", "right"), Col("ECE", "right"),
                    Col("pos rate @0.5", "right", "pos@.5")]
            rows = []
            for g, v in res["groups"].items():
                rows.append((label(g + (" (small)" if v.get("small") else "")), str(v.get("n")), _f(v.get("prevalence")), _f(v.get("auc")),
                             _f(v.get("pos_rate")), _f(v.get("tpr")), _f(v.get("fpr")), _f(v.get("ece")), _f(v.get("pos_rate_at_0.5"))))
            show_table(console, escape(f"{e} by {attr}"), cols, rows)
            gaps = [(name, estimate(_ci(res[name]))) for name in GAP_ROWS if name in res]
            gaps += [(f"{t['test']} p (Holm)", f"{_f(t['p_value'])} / {_f(t['p_adjusted'])}") for t in res.get("tests", [])]
            show_table(console, escape(f"{e} by {attr}: fairness metrics, 95% CI"), [Col("metric"), Col("value [95% CI]", "right")], gaps)


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
    # Never folded by rich: a path is one token to copy (a terminal narrower than it wraps it).
    console.print(f"run directory: {run_dir}", markup=False, highlight=False, soft_wrap=True)


def cache_summary(manifests: list[dict]) -> str | None:
    """One line over the runs' ``manifest.json``: how many request rows were computed, found in the
    run directory (resume) and copied from the shared request cache, and where that cache is
    (``fairbench cache info``). None when no manifest has timing facts."""
    timings = [m.get("timing") or {} for m in manifests]
    if not any("n_requests" in t for t in timings):
        return None
    total = sum(t.get("n_requests", 0) for t in timings)
    computed = sum(t.get("n_computed", 0) for t in timings)
    resumed = sum(t.get("n_cached", 0) for t in timings)
    reused = sum(t.get("n_reused", 0) for t in timings)
    parts = [f"{computed} computed"]
    if resumed:
        parts.append(f"{resumed} already in the run directory")
    caches = sorted({m["request_cache"] for m in manifests if m.get("request_cache")})
    if reused:
        parts.append(f"{reused} from the request cache {', '.join(caches)} (--no-cache recomputes; fairbench cache info)")
    elif not caches:
        parts.append("request cache off (--no-cache)")
    return f"{total} requests: " + ", ".join(parts)
