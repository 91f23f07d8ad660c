"""``fairbench leaderboard``: run directories -> ``NAME.md``, ``NAME.csv``, ``NAME.groups.csv`` and plots.

The CSV files are the leaderboard's state: adding runs reads them, merges the new rows (one row per
model x task x prompt mode x evaluation split; a newer run replaces an older one), and rewrites every
output under a file lock, so concurrent writers never lose a row. Only ``results.json`` and
``manifest.json`` of a run are read; the per-request data is not needed.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from filelock import FileLock

from .errors import FairbenchError
from .store import write_atomic

KEY = ["task", "prompt_mode", "model", "eval_split"]
# Fairness metrics a leaderboard can be sorted by and `fairbench check` can gate on; all lower-is-fairer.
FAIRNESS_METRICS = ["cf_flip_rate", "cf_mean_abs_delta", "dp_gap"]
MARKED = FAIRNESS_METRICS + ["worst_group"]
# Continuous and defined for binary and ordinal questions (the flip rate is coarse and ties often).
DEFAULT_SORT = "cf_mean_abs_delta"
EST_COLS = ["value", "ci_low", "ci_high"]
COLUMNS = (
    KEY
    + ["base_model", "question", "utility_metric", "utility", "utility_ci_low", "utility_ci_high"]
    + [f"{m}{s}" for m in FAIRNESS_METRICS for s in ("", "_ci_low", "_ci_high", "_p_adjusted", "_significant")]
    + ["worst_group", "worst_group_outcome", "worst_group_outcome_ci_low", "worst_group_outcome_ci_high",
       "worst_group_p_adjusted", "worst_group_significant"]
    + ["n_cases", "n_requests", "n_invalid", "invalid_rate", "invalid_rate_ci_low", "invalid_rate_ci_high",
       "small_groups", "correction", "seed", "limit", "run_id", "model_fingerprint", "git_commit", "finished_at"]
)
GROUP_COLUMNS = (
    KEY + ["question", "attribute", "group", "n_cases", "n_rows", "n_invalid", "invalid_rate"]
    + [f"{m}{s}" for m in ("mean_outcome", "decision_rate") for s in ("", "_ci_low", "_ci_high")]
    + ["small"]
)
INT_COLUMNS = ["n_cases", "n_requests", "n_invalid", "small_groups", "seed", "limit", "n_rows"]
BOOL_COLUMNS = [c for c in COLUMNS + GROUP_COLUMNS if c.endswith("_significant")] + ["small"]

GLOSSARY = [
    ("utility", "accuracy against the reference answer (invalid answers count as wrong), or agreement where the task has no reference; higher is better"),
    ("cf_flip_rate", "share of cases whose decision is not the same in every counterfactual variant; lower is fairer"),
    ("cf_mean_abs_delta", "mean over cases of the mean \\|outcome(variant) − outcome(reference variant)\\|; lower is fairer"),
    ("dp_gap", "max − min over the headline groups of the positive-decision rate (binary questions only); lower is fairer"),
    ("worst group", "the headline group with the lowest mean outcome (P(positive) or expected score), with that mean"),
    ("n", "cases (requests = cases × variants)"),
    ("invalid rate", "share of requests whose answer could not be scored; counted, never dropped"),
]


# ----- one run -> one row + its per-group rows -----

def split_name(value) -> str:
    """Evaluation split of a run: "all" unless the run is marked (e.g. "held-out" for mitigations)."""
    return str(value) if value not in (None, "") else "all"


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(float(ts), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FairbenchError(f"{path} not found: {path.parent} is not a finished fairbench run directory.") from None
    except json.JSONDecodeError as exc:
        raise FairbenchError(f"{path}: not valid JSON ({exc.msg}); re-run `fairbench score {path.parent}`.") from None


def _put(row: dict, prefix: str, est: dict | None) -> None:
    est = est or {}
    row[prefix] = est.get("value")
    row[f"{prefix}_ci_low"] = est.get("ci_low")
    row[f"{prefix}_ci_high"] = est.get("ci_high")


def headline_groups(results: dict) -> tuple[str, dict]:
    """The primary question's per-attribute results (the intersection is the headline groups)."""
    qid = results["metrics"]["question"]
    return qid, results["counterfactual"]["questions"].get(qid, {}).get("attributes", {})


def _attribute_rank(attr: str, attributes: dict) -> tuple:
    """Task-card order (read off the intersection labels, ``race=..|gender=..``), intersection last."""
    inter = attributes.get("intersection", {}).get("groups", {})
    order = [part.split("=", 1)[0] for part in next(iter(inter), "").split("|") if part]
    if attr == "intersection":
        return (2, 0, attr)
    return (0, order.index(attr), attr) if attr in order else (1, 0, attr)


def run_entry(run_dir: Path) -> tuple[dict, list[dict]]:
    """The leaderboard row and the per-group rows of one finished run directory."""
    run_dir = Path(run_dir)
    results = _read_json(run_dir / "results.json")
    manifest = _read_json(run_dir / "manifest.json") if (run_dir / "manifest.json").exists() else {}
    run, m = results["run"], results["metrics"]
    finished = manifest.get("finished_at") or (run_dir / "results.json").stat().st_mtime
    git = manifest.get("git") or {}
    row: dict = {
        "task": run["task"], "prompt_mode": run["prompt_mode"], "model": run["model"],
        "eval_split": split_name(run.get("eval_split")), "base_model": run.get("base_model") or "",
        "question": m.get("question"),
    }
    utility = next((u for u in ("accuracy", "agreement") if m.get(u)), None)
    row["utility_metric"] = utility or ""
    _put(row, "utility", m.get(utility) if utility else None)
    sig = m.get("significance", {})
    for name in FAIRNESS_METRICS:
        _put(row, name, m.get(name))
    for name in MARKED:
        row[f"{name}_p_adjusted"] = sig.get(name, {}).get("p_adjusted") if name in m else None
        row[f"{name}_significant"] = sig.get(name, {}).get("significant") if name in m else None
    row["worst_group"] = m.get("worst_group") or ""
    _put(row, "worst_group_outcome", m.get("worst_group_outcome"))
    qid, attributes = headline_groups(results)
    q = results["counterfactual"]["questions"].get(qid, {})
    inv = m.get("invalid_rate_ci") or {"value": m.get("invalid_rate")}
    row.update({"n_cases": m.get("n_cases"), "n_requests": m.get("n_rows"), "n_invalid": q.get("n_invalid")})
    _put(row, "invalid_rate", inv)
    row.update({
        "small_groups": sum(bool(g.get("small")) for a in attributes.values() for g in a.get("groups", {}).values()),
        "correction": results["counterfactual"].get("correction", {}).get("method"),
        "seed": run.get("seed"), "limit": run.get("limit"), "run_id": run_dir.name,
        "model_fingerprint": run.get("model_fingerprint"),
        "git_commit": (git.get("commit") or "")[:12] + ("+dirty" if git.get("dirty") else ""),
        "finished_at": _iso(finished),
    })
    groups = []
    for attr, ares in sorted(attributes.items(), key=lambda kv: _attribute_rank(kv[0], attributes)):
        for name, g in ares.get("groups", {}).items():
            grow = {k: row[k] for k in KEY}
            grow.update({"question": qid, "attribute": attr, "group": name, "n_cases": g.get("n_cases"),
                         "n_rows": g.get("n_rows"), "n_invalid": g.get("n_invalid"), "invalid_rate": g.get("invalid_rate"),
                         "small": bool(g.get("small"))})
            _put(grow, "mean_outcome", g.get("mean_outcome"))
            _put(grow, "decision_rate", g.get("decision_rate"))
            groups.append(grow)
    return row, groups


# ----- merge, order -----

def _clean(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if hasattr(v, "item"):  # numpy scalar
        v = v.item()
    return v


def _records(path: Path, columns: list[str]) -> list[dict]:
    if not path.exists():
        return []
    try:
        df = pd.read_csv(path, dtype={c: str for c in ("task", "prompt_mode", "model", "eval_split", "base_model")},
                         keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise FairbenchError(f"{path}: not a fairbench leaderboard CSV ({exc}). Move it away or choose another --output.") from None
    missing = [c for c in KEY if c not in df.columns]
    if missing:
        raise FairbenchError(f"{path}: missing column(s) {', '.join(missing)}; not a fairbench leaderboard CSV. Choose another --output.")
    out = []
    for rec in df.to_dict("records"):
        rec = {c: _clean(rec.get(c)) for c in columns}
        for c in KEY + ["base_model"]:
            if c in rec:
                rec[c] = rec[c] or ""
        rec["eval_split"] = split_name(rec.get("eval_split"))
        for c in BOOL_COLUMNS:
            if c in rec and rec[c] is not None:
                rec[c] = rec[c] in (True, "True", "true", 1)
        out.append(rec)
    return out


def _key(row: dict) -> tuple:
    return tuple(row.get(k) or "" for k in KEY)


def merge(rows: list[dict], groups: list[dict], new: list[tuple[dict, list[dict]]]) -> tuple[list[dict], list[dict]]:
    """Add new entries; an entry replaces the existing one of the same key unless that one is newer."""
    by_key = {_key(r): r for r in rows}
    groups_by_key: dict[tuple, list[dict]] = {}
    for g in groups:
        groups_by_key.setdefault(_key(g), []).append(g)
    for row, grows in new:
        old = by_key.get(_key(row))
        if old is not None and (old.get("finished_at") or "") > (row.get("finished_at") or ""):
            continue
        by_key[_key(row)] = row
        groups_by_key[_key(row)] = grows
    return list(by_key.values()), [g for k in by_key for g in groups_by_key.get(k, [])]


def _metric(row: dict, name: str) -> float:
    v = row.get(name)
    return math.inf if v is None else float(v)


def order(rows: list[dict], sort_by: str) -> list[dict]:
    """Group by (task, prompt mode); within, sort model families (a base and its derived models) by
    the base's ``sort_by`` (lower first; ties by cf_mean_abs_delta, then name); derived rows follow
    their base, themselves sorted by ``sort_by``."""
    tie = "cf_mean_abs_delta" if sort_by != "cf_mean_abs_delta" else "cf_flip_rate"

    def rank(r: dict) -> tuple:
        return (_metric(r, sort_by), _metric(r, tie), r["model"], r.get("eval_split") or "")

    out = []
    blocks: dict[tuple, list[dict]] = {}
    for r in rows:
        blocks.setdefault((r["task"], r["prompt_mode"]), []).append(r)
    for block_key in sorted(blocks):
        block = blocks[block_key]
        names = {r["model"] for r in block}
        families: dict[str, list[dict]] = {}
        for r in block:
            base = r.get("base_model") or ""
            families.setdefault(base if base in names else r["model"], []).append(r)
        fam_rank = {}
        for fam, members in families.items():
            heads = [r for r in members if r["model"] == fam] or members
            fam_rank[fam] = min(rank(r) for r in heads)
        for fam in sorted(families, key=lambda f: fam_rank[f]):
            members = families[fam]
            heads = sorted((r for r in members if r["model"] == fam), key=rank)
            out.extend(heads + sorted((r for r in members if r["model"] != fam), key=rank))
    return out


# ----- outputs -----

def _frame(records: list[dict], columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(records, columns=columns)
    for c in INT_COLUMNS:
        if c in df.columns:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    return df


def _fmt(v, ci_low=None, ci_high=None, mark: bool | None = None, digits: int = 3) -> str:
    if v is None:
        return "—"
    text = f"{v:.{digits}f}"
    if ci_low is not None and ci_high is not None:
        text += f" [{ci_low:.{digits}f}, {ci_high:.{digits}f}]"
    return text + (" \\*" if mark else "")


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def group_plot_name(name: str, task: str, mode: str) -> str:
    return f"{name}.{_slug(task)}.{_slug(mode)}.groups.png"


def render_markdown(name: str, rows: list[dict], groups: list[dict], sort_by: str, plots: dict) -> str:
    corrections = sorted({r.get("correction") for r in rows if r.get("correction")})
    lines = [
        f"# Leaderboard: {name}",
        "",
        f"Rows are sorted by **`{sort_by}`** (lower is fairer), within each task and prompt mode; derived models "
        "(`base+method`) follow their base (↳). Values are point estimates with 95% bootstrap CIs over cases in "
        "brackets. \\* marks a metric whose paired test of \"no group effect\" is significant after "
        f"{'/'.join(corrections) or 'multiple-testing'} correction over all tests of the run.",
        "",
    ]
    blocks: dict[tuple, list[dict]] = {}
    for r in rows:
        blocks.setdefault((r["task"], r["prompt_mode"]), []).append(r)
    for (task, mode), block in blocks.items():
        show_split = any(r.get("eval_split") != "all" for r in block)
        lines += [f"## {task} · {mode}", ""]
        head = ["model"] + (["eval split"] if show_split else []) + [
            "utility", "cf_flip_rate", "cf_mean_abs_delta", "dp_gap", "worst group", "n", "invalid rate"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join([":--"] * (1 + show_split) + ["--:"] * 3 + ["--:", ":--", "--:", "--:"]) + "|")
        for r in block:
            model = _md_escape(r["model"])
            if r.get("base_model") and any(o["model"] == r["base_model"] for o in block):
                model = f"↳ {model}"
            cells = [model] + ([_md_escape(r.get("eval_split") or "all")] if show_split else [])
            util = _fmt(r.get("utility"), r.get("utility_ci_low"), r.get("utility_ci_high"))
            cells.append(f"{r['utility_metric']} {util}" if r.get("utility_metric") else "—")
            for mname in FAIRNESS_METRICS:
                cells.append(_fmt(r.get(mname), r.get(f"{mname}_ci_low"), r.get(f"{mname}_ci_high"), r.get(f"{mname}_significant")))
            wg = r.get("worst_group")
            cells.append(
                f"{_md_escape(wg)}: " + _fmt(r.get("worst_group_outcome"), r.get("worst_group_outcome_ci_low"),
                                              r.get("worst_group_outcome_ci_high"), r.get("worst_group_significant"))
                if wg else "—"
            )
            n = f"{r.get('n_cases')} ({r.get('n_requests')} req.)"
            if r.get("small_groups"):
                n += f", {r['small_groups']} small group(s)"
            cells.append(n)
            cells.append(_fmt(r.get("invalid_rate"), r.get("invalid_rate_ci_low"), r.get("invalid_rate_ci_high")))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if (task, mode) in plots:
            lines += [f"![Mean outcome by group, {task} · {mode}]({plots[(task, mode)]})", ""]
    if plots.get("tradeoff"):
        lines += ["## Utility against fairness", "",
                  f"![Utility against {sort_by}, one point per model, Pareto frontier dashed]({plots['tradeoff']})", ""]
    lines += ["## Glossary", "", "| column | meaning |", "|:--|:--|"]
    lines += [f"| {k} | {v} |" for k, v in GLOSSARY]
    lines += [
        "| 95% CI | bootstrap over cases (BCa, percentile where BCa is undefined); variants of a case are resampled together |",
        "| \\* | the paired test over the headline groups (the intersection of all attributes) is significant after "
        "correction: Cochran's Q / McNemar on decisions for cf_flip_rate and dp_gap, Friedman / Wilcoxon on outcomes "
        "for cf_mean_abs_delta and the worst group |",
        "| small group | a group with fewer cases than the task's `audit.min_group_size`: its estimates are unreliable |",
        "",
    ]
    lines += ["## Per-group detail", "",
              "Primary question only; one table per run and attribute. Mean outcome is P(positive answer) for binary "
              "questions and the expected score for ordinal ones.", ""]
    by_key: dict[tuple, list[dict]] = {}
    for g in groups:
        by_key.setdefault(_key(g), []).append(g)
    for r in rows:
        grows = by_key.get(_key(r), [])
        if not grows:
            continue
        split = f" · {r['eval_split']}" if r.get("eval_split") != "all" else ""
        lines += [f"<details><summary>{r['model']} · {r['task']} · {r['prompt_mode']}{split}</summary>", ""]
        lines += ["| attribute | group | cases | requests | invalid | mean outcome | decision rate |",
                  "|:--|:--|--:|--:|--:|--:|--:|"]
        for g in grows:
            small = " (small)" if g.get("small") else ""
            lines.append(
                f"| {_md_escape(g['attribute'])} | {_md_escape(g['group'])}{small} | {g.get('n_cases')} | {g.get('n_rows')} | "
                f"{g.get('n_invalid')} | {_fmt(g.get('mean_outcome'), g.get('mean_outcome_ci_low'), g.get('mean_outcome_ci_high'))} | "
                f"{_fmt(g.get('decision_rate'), g.get('decision_rate_ci_low'), g.get('decision_rate_ci_high'))} |"
            )
        lines += ["", "</details>", ""]
    lines += ["## Runs", "", "| model | task | prompt mode | seed | limit | run id | commit | finished (UTC) |",
              "|:--|:--|:--|--:|--:|:--|:--|:--|"]
    for r in rows:
        lines.append(
            f"| {_md_escape(r['model'])} | {r['task']} | {r['prompt_mode']} | {r.get('seed')} | {r.get('limit') or 'all'} | "
            f"`{r.get('run_id')}` | `{r.get('git_commit') or '?'}` | {r.get('finished_at')} |"
        )
    return "\n".join(lines) + "\n"


def output_base(output: Path) -> Path:
    output = Path(output)
    if output.suffix in (".md", ".csv"):
        output = output.with_suffix("")
    if not output.name:
        raise FairbenchError("--output needs a leaderboard name, e.g. leaderboards/demo.")
    return output


def update(run_dirs: list[Path], output: Path, sort_by: str = DEFAULT_SORT, plots: bool = True) -> dict[str, Path]:
    """Merge ``run_dirs`` into the leaderboard at ``output`` (``leaderboards/NAME``); returns written files."""
    if sort_by not in FAIRNESS_METRICS:
        raise FairbenchError(f"--sort-by {sort_by!r} is not a fairness metric; use one of {', '.join(FAIRNESS_METRICS)}.")
    if not run_dirs:
        raise FairbenchError("give at least one RUN_DIR written by `fairbench run`.")
    base = output_base(output)
    new = [run_entry(Path(d)) for d in run_dirs]  # read (and validate) before taking the lock
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FairbenchError(f"cannot create {base.parent} ({exc.strerror}); choose another --output.") from None
    name = base.name
    paths = {"md": base.with_name(f"{name}.md"), "csv": base.with_name(f"{name}.csv"), "groups": base.with_name(f"{name}.groups.csv")}
    with FileLock(str(base.with_name(f".{name}.lock")), timeout=600):
        rows, groups = merge(_records(paths["csv"], COLUMNS), _records(paths["groups"], GROUP_COLUMNS), new)
        rows = order(rows, sort_by)
        figures: dict = {}
        if plots:
            from . import plots as plotting

            figures = plotting.draw_all(base, rows, groups, sort_by)
            paths.update({f"plot:{v}": base.with_name(v) for v in figures.values()})
        write_atomic(paths["csv"], _frame(rows, COLUMNS).to_csv(index=False, lineterminator="\n"))
        write_atomic(paths["groups"], _frame(groups, GROUP_COLUMNS).to_csv(index=False, lineterminator="\n"))
        write_atomic(paths["md"], render_markdown(name, rows, groups, sort_by, figures))
    return paths
