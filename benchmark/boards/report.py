"""``fairbench report``: run directories (or a leaderboard) -> one self-contained, offline HTML file.

The page is rendered from Jinja2 templates (``boards/templates/``) with its styles and scripts inline:
no CDN, no server, it opens from ``file://``. What the template receives is built here, as plain
dicts (tested without a browser):

- **verdict** per question and attribute: does a paired test find an effect after the run's
  multiple-testing correction, the largest effect with its 95% CI, the evidence size, and the warnings
  (degenerate decisions, invalid answers that differ by group, small groups);
- **forest plots** of ``delta_vs_reference`` per attribute value (text: simultaneous intervals at the
  run's correction level, which exclude 0 exactly when the contrast's test is significant) and of the fairness gaps
  (imaging), as inline SVG whose geometry is computed here;
- group tables, the tests with raw and adjusted p-values, the provenance of every run;
- **per-case drill-down** (text): the cases are embedded once as JSON and rendered lazily by the page
  script, a page at a time; a variant's prompt is stored as the word-level difference from the
  reference variant's prompt, which is both what the page highlights and what keeps a 10,000-request
  report small;
- imaging: per-group ROC and reliability curves, confusion tables at the validation-tuned threshold
  and at 0.5;
- several runs: the same cases side by side, and the paired difference of each headline metric with
  a 95% bootstrap CI over the cases (patients) both runs share (``boards.check``'s paired machinery).
"""

from __future__ import annotations

import base64
import difflib
import json
import math
import re
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import FairbenchError
from ..store import read_requests, read_results, write_atomic
from .verdict import OMNIBUS_ONLY

TEMPLATES = Path(__file__).resolve().parent / "templates"
PAIRED_TESTS = ("friedman", "wilcoxon", "cochran_q", "mcnemar")
TEXT_HEADLINE = ["accuracy", "agreement", "cf_flip_rate", "cf_mean_abs_delta", "cf_spread", "dp_gap", "worst_group_outcome"]
IMAGING_HEADLINE = ["auc", "accuracy", "dp_gap", "eod", "auc_gap", "worst_group_auc", "es_auc", "ece_gap", "underdiag_gap"]
IMAGING_GAPS = ["dp_gap", "eod", "auc_gap", "ece_gap", "underdiag_gap"]
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]  # Okabe-Ito without yellow
ROC_POINTS = 80


# ----- small helpers -----

def _est(x) -> dict | None:
    """An estimate as {value, ci_low, ci_high, n} (a bare number becomes {value})."""
    if isinstance(x, dict) and "value" in x:
        return x
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return {"value": x}
    return None


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(x, digits: int = 3) -> str:
    if not _finite(x):
        return "—"
    return f"{x:.{digits}f}"


def fmt_est(est, digits: int = 3) -> str:
    est = _est(est)
    if not est or not _finite(est.get("value")):
        return "—"
    text = fmt(est["value"], digits)
    if _finite(est.get("ci_low")) and _finite(est.get("ci_high")):
        text += f" [{fmt(est['ci_low'], digits)}, {fmt(est['ci_high'], digits)}]"
    elif est.get("note"):  # why there is no interval (e.g. no variation): a bare value is not a finding
        text += f" ({str(est['note']).split(':')[0]})"
    return text


def fmt_p(p) -> str:
    if not _finite(p):
        return "—"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], first
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 10))
        t += step
    return ticks


def axis(values: list[float], include_zero: bool = True, pad: float = 0.06, bounds: tuple | None = None) -> dict:
    """A linear axis: domain covering ``values`` (and 0 for effects), clipped to ``bounds``, with ticks."""
    vals = [v for v in values if _finite(v)] + ([0.0] if include_zero else [])
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.05, hi + 0.05
    span = hi - lo
    lo, hi = lo - pad * span, hi + pad * span
    if bounds:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    ticks = nice_ticks(lo, hi)
    return {"lo": lo, "hi": hi, "ticks": ticks}


def _scale(ax: dict, width: float, x0: float = 0.0):
    return lambda v: x0 + (v - ax["lo"]) / (ax["hi"] - ax["lo"]) * width


# ----- one run -----

class Run:
    """A finished run directory: results (schema 2), manifest, request rows (read lazily)."""

    def __init__(self, run_dir: Path, index: int):
        self.dir = Path(run_dir)
        self.index = index
        self.results = read_results(self.dir)
        mpath = self.dir / "manifest.json"
        self.manifest = json.loads(mpath.read_text(encoding="utf-8")) if mpath.is_file() else {}
        run = self.results.get("run") or {}
        self.kind = self.results.get("kind") or run.get("kind") or "text"
        self.task = run.get("task", "?")
        self.model = run.get("model", "?")
        self.mode = run.get("prompt_mode") or ("image" if self.kind == "imaging" else "")
        self.label = f"{self.model} · {self.task} · {self.mode}" + (
            f" · {run['eval_split']}" if run.get("eval_split") not in (None, "", "all") else "")
        self.id = f"run{index}"
        self._rows = None

    @property
    def rows(self) -> list[dict]:
        if self._rows is None:
            self._rows = read_requests(self.dir) if (self.dir / "requests.jsonl").is_file() else []
        return self._rows

    @property
    def audits(self) -> dict:
        return self.results.get("audits") or {}


def portable_command(argv: list[str]) -> str:
    """The recorded command without the machine's paths (a report is shared and committed): the
    program is ``fairbench`` and an absolute path keeps only its last part (``--data-dir .../data``)."""
    words = []
    for i, word in enumerate(argv):
        if i == 0 and Path(word).name in ("fairbench", "__main__.py", "cli.py"):
            words.append("fairbench")
        elif word.startswith("/") and len(Path(word).parts) > 1:
            words.append(".../" + Path(word).name)
        else:
            words.append(word)
    return " ".join(words)


def provenance(run: Run) -> list[tuple[str, str]]:
    """(field, value) pairs: what a reviewer needs to reproduce the run."""
    m, r = run.manifest, run.results.get("run") or {}
    model = m.get("model") or {}
    spec = model.get("spec") or {}
    git = m.get("git") or {}
    out = [
        ("run directory", run.dir.name),
        ("model", f"{r.get('model')}" + (f" (base {r['base_model']})" if r.get("base_model") else "")),
        ("backend / weights", " · ".join(str(x) for x in (spec.get("backend"), spec.get("model"), spec.get("gguf_file"),
                                                          spec.get("revision")) if x)),
        ("model fingerprint", r.get("model_fingerprint") or model.get("fingerprint") or "—"),
        ("task", f"{r.get('task')} (card sha256 {((m.get('task') or {}).get('card_sha256') or '?')[:16]})"),
        ("prompt mode", run.mode),
        ("seed / limit", f"{r.get('seed')} / {r.get('limit') or 'all'}"),
        ("cases", f"{r.get('n_cases')} of {r.get('n_cases_available', r.get('n_cases'))} available"),
        ("git commit", (git.get("commit") or "?") + (" (dirty tree)" if git.get("dirty") else "")),
        ("fairbench", m.get("fairbench_version") or "?"),
        ("python / platform", f"{m.get('python', '?')} / {m.get('platform', '?')}"),
        ("command", portable_command(m.get("command") or []) or "—"),
    ]
    for name, sha in sorted(((m.get("data") or {}).get("files") or {}).items()):
        out.append((f"data: {name}", f"sha256 {sha}"))
    if m.get("started_at") and m.get("finished_at"):
        start = datetime.fromtimestamp(float(m["started_at"]), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        out.append(("started", f"{start}, {m.get('wall_seconds', '?')} s wall"))
    pk = m.get("packages") or {}
    if pk:
        out.append(("packages", ", ".join(f"{k} {v}" for k, v in sorted(pk.items()) if v)))
    if m.get("repairs"):
        out.append(("repairs", "; ".join(map(str, m["repairs"]))))
    return out


def headline(run: Run) -> list[dict]:
    m = run.results.get("metrics") or {}
    names = IMAGING_HEADLINE if run.kind == "imaging" else TEXT_HEADLINE
    sig = m.get("significance") or {}
    out = []
    for name in names:
        est = _est(m.get(name))
        if est is None:
            continue
        label = name
        if name == "worst_group_outcome" and m.get("worst_group"):
            label = f"worst group ({m['worst_group']})"
        if name == "worst_group_auc" and m.get("worst_group"):
            label = f"worst-group AUC ({m['worst_group']})"
        s = sig.get("worst_group" if name == "worst_group_outcome" else name) or {}
        out.append({"name": label, "text": fmt_est(est), "n": est.get("n"), "p_adjusted": s.get("p_adjusted"),
                    "significant": s.get("significant"), "test": s.get("test")})
    inv = _est(m.get("invalid_rate_ci")) or _est(m.get("invalid_rate"))
    if inv is not None:
        out.append({"name": "invalid_rate", "text": fmt_est(inv), "n": run.results.get("n_requests"), "p_adjusted": None,
                    "significant": None, "test": None})
    return out


# ----- text: verdict, forest, tables -----

def _reference(question: dict) -> dict[str, str]:
    return {a: v["reference"] for a, v in (question.get("attributes") or {}).items() if v.get("reference")}


def _decisions(run: Run, qid: str) -> list:
    return [r["scored"].get("decision") for r in run.rows
            if r.get("question_id") == qid and (r.get("scored") or {}).get("valid")]


def text_verdict(run: Run) -> list[dict]:
    """One entry per question and attribute (intersection last)."""
    cf = run.audits.get("counterfactual") or {}
    correction = (cf.get("correction") or {}).get("method", "holm")
    invalid_by_group = cf.get("invalid_by_group") or {}
    out = []
    for qid, q in (cf.get("questions") or {}).items():
        decisions = _decisions(run, qid)
        degenerate = None
        if decisions and len({json.dumps(d) for d in decisions}) == 1:
            degenerate = (f"every valid answer to '{qid}' has the same decision ({decisions[0]}): the flip rate and "
                          "decision gaps are 0 by construction; read the probability shifts (Δ) instead")
        for attr, a in sorted((q.get("attributes") or {}).items(), key=lambda kv: kv[0] == "intersection"):
            tests = [t for t in a.get("tests", []) if t.get("paired")]
            real = [t for t in tests if _finite(t.get("p_adjusted"))]
            best = min(real, key=lambda t: t["p_adjusted"]) if real else None
            largest = None
            for value, est in (a.get("delta_vs_reference") or {}).items():
                if _finite((est or {}).get("value")) and (largest is None or abs(est["value"]) > abs(largest["value"])):
                    conf = est.get("confidence") if est.get("ci_low") is not None else None
                    kind = f"Δ outcome (simultaneous {100 * conf:.3g}%)" if conf else "Δ outcome"
                    largest = {"label": f"{value} vs {a.get('reference')}", "kind": kind, **est}
            if largest is None and _finite((a.get("outcome_gap") or {}).get("value")):
                largest = {"label": "max − min over groups", "kind": "outcome gap", **a["outcome_gap"]}
            groups = a.get("groups") or {}
            warn = []
            small = [g for g, v in groups.items() if v.get("small")]
            if small:
                warn.append(f"small group(s): {', '.join(small)}")
            inv = invalid_by_group.get(attr) or {}
            if inv and max(inv.values()) > 0:
                warn.append("invalid answers by group: " + ", ".join(f"{g} {100 * v:.1f}%" for g, v in inv.items()))
            if degenerate:
                warn.append(degenerate)
            contrasts = [e for e in (a.get("delta_vs_reference") or {}).values() if e and e.get("significant") is not None]
            if best and best.get("significant") and contrasts and not any(e["significant"] for e in contrasts):
                warn.append(OMNIBUS_ONLY)
            for t in tests:
                if t.get("p_value") is None and t.get("note"):
                    warn.append(f"{t['test']}: {t['note']}")
            n_cases = max((g.get("n_cases") or 0 for g in groups.values()), default=0)
            out.append({
                "question": qid, "attribute": attr, "effect": bool(best and best.get("significant")),
                "tested": bool(real), "test": best, "correction": correction, "largest": largest,
                "largest_text": fmt_est(largest) if largest else "—", "n_cases": n_cases,
                "n_rows": sum(g.get("n_rows") or 0 for g in groups.values()), "warnings": warn,
            })
    return out


def forest_text(run: Run) -> list[dict]:
    """Forest panels: per question, one row per attribute value: Δ outcome vs the reference value."""
    cf = run.audits.get("counterfactual") or {}
    panels = []
    for qid, q in (cf.get("questions") or {}).items():
        rows = []
        for attr, a in (q.get("attributes") or {}).items():
            for value, est in (a.get("delta_vs_reference") or {}).items():
                if est and _finite(est.get("value")):
                    rows.append({"group": attr, "label": f"{value}", "value": est["value"],
                                 "lo": est.get("ci_low"), "hi": est.get("ci_high"),
                                 "note": f"vs {a.get('reference')}"})
        if rows:
            ordinal = q.get("kind") == "ordinal"
            unit = "Δ expected score" if ordinal else "Δ P(" + (str(q.get("positive") or "positive")) + ")"
            conf = sorted({e.get("confidence") for a in (q.get("attributes") or {}).values()
                           for e in (a.get("delta_vs_reference") or {}).values() if e and e.get("confidence")})
            level = (f"simultaneous {100 * conf[0]:.3g}% intervals over each attribute's contrasts at the run's "
                     "correction level" if conf else "95% CI")
            panels.append(forest_geometry(f"{qid}: {unit} vs the reference variant ({level})", rows, zero=True))
    return panels


def forest_geometry(title: str, rows: list[dict], zero: bool = True, bounds: tuple | None = None,
                    width: int = 560, label_w: int = 170, row_h: int = 22, signed: bool = True) -> dict:
    """SVG coordinates of a forest plot: a point and 95% CI per row, a zero-effect line. ``signed``:
    the rows are signed effects, and a CI that excludes 0 is marked (not for non-negative gaps)."""
    vals = [v for r in rows for v in (r["value"], r.get("lo"), r.get("hi"))]
    ax = axis(vals, include_zero=zero, bounds=bounds)
    plot_w = width - label_w - 70
    x = _scale(ax, plot_w, label_w)
    out_rows, y, prev = [], 14, None
    for r in rows:
        if r["group"] != prev:
            y += 6 if prev is not None else 0
            out_rows.append({"header": True, "text": r["group"], "y": y + 12})
            y += row_h
            prev = r["group"]
        lo = r["lo"] if _finite(r.get("lo")) else r["value"]
        hi = r["hi"] if _finite(r.get("hi")) else r["value"]
        excludes = signed and zero and (lo > 0 or hi < 0)
        out_rows.append({"header": False, "text": r["label"], "note": r.get("note", ""), "y": y + 11,
                         "x": x(r["value"]), "x_lo": x(max(lo, ax["lo"])), "x_hi": x(min(hi, ax["hi"])),
                         "value_text": fmt_est({"value": r["value"], "ci_low": r.get("lo"), "ci_high": r.get("hi")}),
                         "strong": excludes})
        y += row_h
    height = y + 34
    return {"title": title, "signed": signed, "width": width, "height": height, "top": 8, "bottom": y + 2,
            "x0": label_w, "x1": label_w + plot_w, "zero": x(0.0) if zero and ax["lo"] <= 0 <= ax["hi"] else None,
            "ticks": [{"x": x(t), "text": f"{t + 0.0:g}" if abs(t) > 1e-12 else "0"} for t in ax["ticks"]], "rows": out_rows}


def text_groups(run: Run) -> list[dict]:
    cf = run.audits.get("counterfactual") or {}
    out = []
    for qid, q in (cf.get("questions") or {}).items():
        for attr, a in (q.get("attributes") or {}).items():
            rows = []
            for name, g in (a.get("groups") or {}).items():
                probs = g.get("option_probs")
                rows.append({
                    "group": name, "n_cases": g.get("n_cases"), "n_rows": g.get("n_rows"), "n_invalid": g.get("n_invalid"),
                    "mean_outcome": fmt_est(g.get("mean_outcome")) if g.get("mean_outcome") else
                    " ".join(f"{k}:{v:.2f}" for k, v in (probs or {}).items() if _finite(v)) or "—",
                    "decision_rate": fmt_est(g.get("decision_rate")), "small": bool(g.get("small")),
                    "delta": fmt_est((a.get("delta_vs_reference") or {}).get(name)),
                })
            gaps = {k: fmt_est(a.get(k)) for k in ("dp_gap", "outcome_gap", "cf_mean_abs_delta") if a.get(k)}
            out.append({"question": qid, "attribute": attr, "reference": a.get("reference"), "rows": rows, "gaps": gaps})
    return out


def tests_table(run: Run) -> tuple[list[dict], dict]:
    audit = run.audits.get("counterfactual") or run.audits.get("group") or {}
    tests = [{**t, "p_text": fmt_p(t.get("p_value")), "p_adj_text": fmt_p(t.get("p_adjusted")),
              "stat_text": fmt(t.get("statistic"), 3)} for t in audit.get("tests") or []]
    return tests, audit.get("correction") or {}


# ----- text: per-case drill-down data -----

TOKEN = re.compile(r"\S+|\s+")


def word_diff(ref: str, other: str) -> list[list]:
    """Word-level difference of ``other`` from ``ref``: [[i1, i2, replacement], ...] over ``ref``'s
    tokens (words and whitespace runs); applying them to the tokens gives ``other`` back."""
    a, b = TOKEN.findall(ref or ""), TOKEN.findall(other or "")
    ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    return [[i1, i2, "".join(b[j1:j2])] for tag, i1, i2, j1, j2 in ops if tag != "equal"]


def apply_diff(ref: str, ops: list[list]) -> str:
    tokens = TOKEN.findall(ref or "")
    out, pos = [], 0
    for i1, i2, rep in ops:
        out.extend(tokens[pos:i1])
        out.append(rep)
        pos = i2
    out.extend(tokens[pos:])
    return "".join(out)


def changed_words(ref: str, ops: list[list]) -> tuple[list[str], list[str]]:
    """(words of ``ref`` replaced, words put in their place): what the page highlights."""
    tokens = TOKEN.findall(ref or "")
    old = [w for i1, i2, _ in ops for w in "".join(tokens[i1:i2]).split()]
    new = [w for _, _, rep in ops for w in rep.split()]
    return old, new


def _r4(x):
    return round(float(x), 4) if _finite(x) else None


def case_payload(runs: list[Run]) -> dict:
    """The per-case JSON the page renders lazily: cases of the text runs keyed by (task, question,
    case); each case stores the reference variant's prompt once and every other variant as a word
    diff, and per run each variant's probabilities, answer, decision, validity, outcome and (generate
    modes) the generated text; plus per run the case's spread, flip and largest |Δ| for sorting."""
    text_runs = [r for r in runs if r.kind == "text" and r.audits.get("counterfactual")]
    cases: dict[tuple, dict] = {}
    options_index: dict[str, int] = {}
    options: list[list[str]] = []
    for run in text_runs:
        questions = (run.audits["counterfactual"].get("questions") or {})
        refs = {qid: _reference(q) for qid, q in questions.items()}
        by_case: dict[tuple, list[dict]] = {}
        for row in run.rows:
            if row.get("question_id") is None or row.get("case_id") is None:
                continue
            by_case.setdefault((run.task, row["question_id"], row["case_id"]), []).append(row)
        for key, rows in by_case.items():
            ref_attrs = refs.get(key[1]) or {}
            case = cases.get(key)
            if case is None:
                ref_row = next((r for r in rows if r.get("attributes") == ref_attrs), rows[0])
                case = cases[key] = {"t": key[0], "q": key[1], "c": key[2], "ref": ref_row.get("variant"),
                                     "base": ref_row.get("prompt") or "", "v": [], "vi": {}, "r": {}, "st": {}}
            per_variant = {}
            for row in rows:
                name = row.get("variant") or json.dumps(row.get("attributes"), sort_keys=True)
                if name not in case["vi"]:
                    case["vi"][name] = len(case["v"])
                    prompt = row.get("prompt") or ""
                    case["v"].append({"n": name, "a": row.get("attributes") or {},
                                      "d": [] if prompt == case["base"] else word_diff(case["base"], prompt)})
                opts = json.dumps(row.get("options") or [])
                if opts not in options_index:
                    options_index[opts] = len(options)
                    options.append(row.get("options") or [])
                s = row.get("scored") or {}
                probs = s.get("probs")
                if isinstance(probs, dict):
                    probs = list(probs.values())
                per_variant[case["vi"][name]] = [
                    [_r4(p) for p in probs] if isinstance(probs, list) else None, s.get("answer"),
                    s.get("decision"), bool(s.get("valid")), _r4(s.get("outcome")), options_index[opts],
                    row.get("raw_output") if row.get("method") == "generate" else None, s.get("correct"),
                ]
            case["r"][run.index] = [per_variant.get(i) for i in range(len(case["v"]))]
            case["st"][run.index] = case_stats(per_variant, case["vi"].get(case["ref"]))
    out = []
    for case in cases.values():
        n = len(case["v"])
        case["r"] = {k: (v + [None] * (n - len(v))) for k, v in case["r"].items()}
        case.pop("vi")
        out.append(case)
    out.sort(key=lambda c: (c["t"], c["q"], c["c"]))
    return {"runs": [{"i": r.index, "label": r.label, "model": r.model, "task": r.task, "mode": r.mode} for r in text_runs],
            "options": options, "cases": out}


def case_stats(per_variant: dict[int, list], ref_index: int | None) -> dict:
    """Per case: spread (max − min outcome), flip (decision not the same in every valid variant),
    largest |Δ| (vs the reference variant), number of invalid answers."""
    valid = {i: v for i, v in per_variant.items() if v and v[3]}
    outcomes = [v[4] for v in valid.values() if v[4] is not None]
    decisions = {json.dumps(v[2]) for v in valid.values()}
    ref = valid.get(ref_index) if ref_index is not None else None
    deltas = [abs(v[4] - ref[4]) for i, v in valid.items() if ref and i != ref_index and v[4] is not None and ref[4] is not None]
    return {"s": _r4(max(outcomes) - min(outcomes)) if len(outcomes) > 1 else None,
            "f": 1 if len(valid) > 1 and len(decisions) > 1 else 0,
            "m": _r4(max(deltas)) if deltas else None,
            "x": sum(1 for v in per_variant.values() if v and not v[3])}


# ----- imaging -----

def _card(task: str, tasks_dir: Path | None):
    from ..cards import load_task

    try:
        return load_task(task, tasks_dir)
    except FairbenchError:
        return None


def imaging_frame(run: Run, card):
    from ..kinds.image.evaluate import endpoint_frame, image_rows

    frame, _ = endpoint_frame(image_rows(run.rows, card), card)
    return frame[frame["split"] == "test"].reset_index(drop=True)


def roc_points(y: np.ndarray, p: np.ndarray, n: int = ROC_POINTS) -> list[tuple[float, float]]:
    """ROC curve (FPR, TPR), thinned to about ``n`` points (corners kept)."""
    order = np.argsort(-p, kind="mergesort")
    y, p = y[order], p[order]
    distinct = np.r_[np.nonzero(np.diff(p))[0], len(p) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (1 + distinct) - tps
    P, N = y.sum(), len(y) - y.sum()
    if P == 0 or N == 0:
        return []
    fpr, tpr = np.r_[0, fps / N], np.r_[0, tps / P]
    if len(fpr) > n:
        keep = np.unique(np.r_[0, np.linspace(0, len(fpr) - 1, n).round().astype(int), len(fpr) - 1])
        fpr, tpr = fpr[keep], tpr[keep]
    return [(float(a), float(b)) for a, b in zip(fpr, tpr)]


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict]:
    """Equal-width bins of predicted probability: mean prediction, observed rate, count."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        if m.any():
            out.append({"p": float(p[m].mean()), "o": float(y[m].mean()), "n": int(m.sum())})
    return out


def confusion(y: np.ndarray, d: np.ndarray) -> dict:
    return {"tp": int(((d == 1) & (y == 1)).sum()), "fp": int(((d == 1) & (y == 0)).sum()),
            "fn": int(((d == 0) & (y == 1)).sum()), "tn": int(((d == 0) & (y == 0)).sum())}


def _curve_svg(series: list[dict], kind: str, size: int = 230) -> dict:
    """Unit-square chart geometry: one polyline per group (ROC) or points + line (reliability)."""
    pad = 34
    inner = size - pad - 10

    def x(v):
        return pad + v * inner

    def y(v):
        return 10 + (1 - v) * inner

    out = []
    for i, s in enumerate(series):
        pts = s["points"]
        out.append({"name": s["name"], "color": PALETTE[i % len(PALETTE)], "dash": ["", "5,3", "2,2", "8,3,2,3"][(i // len(PALETTE)) % 4],
                    "path": " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in pts),
                    "dots": [{"x": x(a), "y": y(b), "r": 2 + min(4, math.sqrt(n) / 4)} for a, b, n in s.get("dots", [])]})
    ticks = [{"v": f"{t:g}", "x": x(t), "y": y(t)} for t in (0, 0.25, 0.5, 0.75, 1)]
    return {"kind": kind, "size": size, "x0": x(0), "x1": x(1), "y0": y(0), "y1": y(1), "series": out, "ticks": ticks,
            "diag": f"{x(0):.1f},{y(0):.1f} {x(1):.1f},{y(1):.1f}"}


def imaging_view(run: Run, tasks_dir: Path | None) -> dict:
    """Per endpoint and attribute: group ROC and reliability curves, confusion tables at the tuned
    threshold and at 0.5, the gap forest. Curves need the task card (to read the stored rows)."""
    group = run.audits.get("group") or {}
    card = _card(run.task, tasks_dir)
    frame = None
    note = ""
    if card is None:
        note = f"task card {run.task!r} not found: pass --tasks-dir to draw ROC and reliability curves"
    elif run.rows:
        try:
            frame = imaging_frame(run, card)
        except (KeyError, ValueError, FairbenchError) as exc:  # a run of another card version
            note = f"could not rebuild the per-image table ({exc}); curves omitted"
    thresholds = run.results.get("thresholds") or {}
    endpoints = []
    for e, ep in (group.get("endpoints") or {}).items():
        attrs = []
        forest_rows = []
        for attr, a in (ep.get("attributes") or {}).items():
            for gap in IMAGING_GAPS:
                est = a.get(gap)
                if est and _finite(est.get("value")):
                    forest_rows.append({"group": attr, "label": gap, "value": est["value"], "lo": est.get("ci_low"),
                                        "hi": est.get("ci_high")})
            rows = []
            for name, g in (a.get("groups") or {}).items():
                rows.append({"group": name, **{k: g.get(k) for k in ("n", "n_pos", "prevalence", "auc", "accuracy", "pos_rate",
                                                                      "tpr", "fpr", "ece", "underdiag", "pos_rate_at_0.5",
                                                                      "tpr_at_0.5", "fpr_at_0.5")}, "small": bool(g.get("small"))})
            view = {"attribute": attr, "rows": rows, "worst_group": a.get("worst_group"),
                    "gaps": {k: fmt_est(a.get(k)) for k in IMAGING_GAPS + ["dp_gap_at_0.5", "eod_at_0.5", "worst_group_auc", "es_auc"] if a.get(k)}}
            if frame is not None and "*" not in attr and f"y:{e}" in frame:
                from ..audits.group import GroupAudit

                labels = GroupAudit.group_column(frame, attr)
                ok = frame["valid"].to_numpy(bool) & ~np.isnan(frame[f"y:{e}"].to_numpy(float))
                roc, rel, conf = [], [], []
                for name in sorted({str(v) for v in labels[ok].dropna()}):
                    m = ok & (labels.astype(str) == name).to_numpy()
                    yv, pv = frame.loc[m, f"y:{e}"].to_numpy(float), frame.loc[m, f"p:{e}"].to_numpy(float)
                    pts = roc_points(yv, pv)
                    if pts:
                        roc.append({"name": name, "points": pts})
                    bins = reliability(yv, pv)
                    rel.append({"name": name, "points": [(b["p"], b["o"]) for b in bins], "dots": [(b["p"], b["o"], b["n"]) for b in bins]})
                    conf.append({"group": name, "n": int(m.sum()),
                                 "tuned": confusion(yv, frame.loc[m, f"d:{e}"].to_numpy(float)),
                                 "half": confusion(yv, frame.loc[m, f"d05:{e}"].to_numpy(float))})
                view.update({"roc": _curve_svg(roc, "roc") if roc else None, "rel": _curve_svg(rel, "rel") if rel else None,
                             "confusion": conf})
            attrs.append(view)
        endpoints.append({
            "name": e, "threshold": thresholds.get(e), "n_images": ep.get("n_images"), "n_patients": ep.get("n_patients"),
            "auc": fmt_est(ep.get("auc")), "accuracy": fmt_est(ep.get("accuracy")), "prevalence": ep.get("prevalence"),
            "attributes": attrs,
            "forest": forest_geometry(f"{e}: fairness gaps by attribute (95% CI; 0 = no gap; a max − min gap is biased "
                                      "upward, read it with the test)", forest_rows, zero=True, signed=False)
            if forest_rows else None,
        })
    return {"endpoints": endpoints, "note": note, "definitions": group.get("definitions") or {}}


def imaging_verdict(run: Run) -> list[dict]:
    group = run.audits.get("group") or {}
    correction = (group.get("correction") or {}).get("method", "holm")
    out = []
    for e, ep in (group.get("endpoints") or {}).items():
        for attr, a in (ep.get("attributes") or {}).items():
            tests = [t for t in a.get("tests", []) if _finite(t.get("p_adjusted"))]
            best = min(tests, key=lambda t: t["p_adjusted"]) if tests else None
            largest = None
            for gap in IMAGING_GAPS:
                est = a.get(gap)
                if est and _finite(est.get("value")) and (largest is None or est["value"] > largest["value"]):
                    largest = {"label": gap, "kind": "gap", **est}
            groups = a.get("groups") or {}
            warn = []
            small = [g for g, v in groups.items() if v.get("small")]
            if small:
                warn.append(f"small group(s), left out of the gaps: {', '.join(small)}")
            if a.get("n_unknown"):
                warn.append(f"{a['n_unknown']} image(s) without a value for {attr}")
            pos = [g.get("pos_rate") for g in groups.values() if _finite(g.get("pos_rate"))]
            if pos and (max(pos) == 0 or min(pos) == 1):
                warn.append("every image gets the same decision at the tuned threshold: decision gaps are 0 by construction")
            out.append({"question": e, "attribute": attr, "effect": bool(best and best.get("significant")), "tested": bool(tests),
                        "test": best, "correction": correction, "largest": largest,
                        "largest_text": fmt_est(largest) if largest else "—",
                        "n_cases": ep.get("n_patients"), "n_rows": sum(g.get("n") or 0 for g in groups.values()), "warnings": warn})
    return out


# ----- several runs: paired differences -----

TEXT_PAIRED = ["cf_flip_rate", "cf_mean_abs_delta", "dp_gap", "invalid_rate"]


def _comparable(a: Run, b: Run) -> bool:
    qa, qb = (a.results.get("metrics") or {}).get("question"), (b.results.get("metrics") or {}).get("question")
    return a.kind == b.kind and a.task == b.task and qa == qb


def _accuracy_diff(a: Run, b: Run, question: str, seed: int, n_boot: int = 2000) -> dict | None:
    """Paired bootstrap over shared cases of accuracy(b) − accuracy(a) (invalid counts as wrong)."""
    def per_case(run):
        acc: dict[str, list] = {}
        for r in run.rows:
            s = r.get("scored") or {}
            if r.get("question_id") == question and s.get("correct") is not None:
                acc.setdefault(r["case_id"], []).append(float(bool(s["correct"]) and bool(s.get("valid"))))
        return {k: float(np.mean(v)) for k, v in acc.items()}

    pa, pb = per_case(a), per_case(b)
    common = sorted(set(pa) & set(pb))
    if len(common) < 2:
        return None
    xa, xb = np.array([pa[c] for c in common]), np.array([pb[c] for c in common])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(common), size=(n_boot, len(common)))
    d = xb[idx].mean(1) - xa[idx].mean(1)
    return {"metric": "accuracy", "a": fmt(xa.mean()), "b": fmt(xb.mean()), "diff": float(xb.mean() - xa.mean()),
            "lo": float(np.percentile(d, 2.5)), "hi": float(np.percentile(d, 97.5)), "n": len(common)}


def compare(a: Run, b: Run, tasks_dir: Path | None, seed: int = 0) -> dict:
    """Paired difference b − a of each headline metric, with a 95% percentile bootstrap CI over the
    cases (text) or patients (imaging) both runs share; lower is fairer for the gaps."""
    from . import check

    rows, unit, n_common, note = [], "cases", 0, ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if a.kind == "text":
            q = a.results["metrics"]["question"]
            ra = [r for r in a.rows if r.get("question_id") == q]
            rb = [r for r in b.rows if r.get("question_id") == q]
            keys = {(r["case_id"], r["variant"]) for r in ra} & {(r["case_id"], r["variant"]) for r in rb}
            binary = (a.audits["counterfactual"]["questions"].get(q) or {}).get("kind") == "binary"
            ref = _reference(a.audits["counterfactual"]["questions"].get(q) or {})
            if keys:
                pa, pb = check.per_case(ra, keys, ref, binary), check.per_case(rb, keys, ref, binary)
                n_common = len(pb.cases)
                metrics = [m for m in TEXT_PAIRED if binary or m != "dp_gap"]
                for c in check.paired(pa, pb, {m: 0.0 for m in metrics}, seed):
                    rows.append({"metric": c.metric, "a": fmt(c.baseline[0]), "b": fmt(c.candidate[0]), "diff": c.diff,
                                 "lo": c.diff_ci[0], "hi": c.diff_ci[1], "n": n_common, "note": c.note})
                acc = _accuracy_diff(a, b, q, seed)
                if acc:
                    rows.insert(0, {**acc, "note": "higher is better"})
        else:
            unit = "patients"
            card = _card(a.task, tasks_dir)
            if card is None:
                note = f"task card {a.task!r} not found (pass --tasks-dir): no paired comparison"
            else:
                m = a.results["metrics"]
                fa = imaging_frame(a, card).drop_duplicates("id").set_index("id")
                fb = imaging_frame(b, card).drop_duplicates("id").set_index("id")
                pa, pb, n_img = check.per_patient(fa, fb, card, m["question"], m.get("attribute"))
                n_common = len(pb.cases)
                for c in check.paired(pa, pb, {g: 0.0 for g in IMAGING_GAPS + ["invalid_rate"]}, seed, n_boot=500):
                    rows.append({"metric": c.metric, "a": fmt(c.baseline[0]), "b": fmt(c.candidate[0]), "diff": c.diff,
                                 "lo": c.diff_ci[0], "hi": c.diff_ci[1], "n": n_common, "note": c.note})
    forest_rows = [{"group": "paired difference", "label": r["metric"], "value": r["diff"], "lo": r["lo"], "hi": r["hi"]}
                   for r in rows if _finite(r.get("diff"))]
    for r in rows:
        r["diff_text"] = fmt_est({"value": r.get("diff"), "ci_low": r.get("lo"), "ci_high": r.get("hi")})
    return {"a": a.label, "b": b.label, "a_model": a.model, "b_model": b.model, "unit": unit, "n": n_common, "rows": rows,
            "note": note, "forest": forest_geometry(f"B − A: {b.label} − {a.label} (95% CI)", forest_rows) if forest_rows else None}


def comparisons(runs: list[Run], tasks_dir: Path | None) -> list[dict]:
    """Each run against the first run of the same task and question (the reference model)."""
    out, firsts = [], {}
    for run in runs:
        key = next((k for k in firsts if _comparable(firsts[k], run)), None)
        if key is None:
            firsts[len(firsts)] = run
            continue
        out.append(compare(firsts[key], run, tasks_dir))
    return out


# ----- a leaderboard -----

def board_view(csv_path: Path) -> dict:
    """A leaderboard's CSV (its state): one table per task and prompt mode, and its figures inline."""
    from .keys import group_plot_name, tradeoff_plot_name
    from .leaderboard import COLUMNS, FAIRNESS_BY_KIND, _records, order

    from .seeds import is_seeds_csv

    if is_seeds_csv(csv_path):
        return seeds_board_view(csv_path)
    rows = order(_records(csv_path, COLUMNS), "cf_mean_abs_delta")
    if not rows:
        raise FairbenchError(f"{csv_path}: no rows; not a fairbench leaderboard CSV.")
    name = csv_path.name[: -len(".csv")]
    blocks: dict[tuple, dict] = {}
    for r in rows:
        kind = r.get("kind") or "text"
        block = blocks.setdefault((r["task"], r["prompt_mode"]), {
            "task": r["task"], "mode": r["prompt_mode"], "kind": kind, "metrics": FAIRNESS_BY_KIND.get(kind, []), "rows": [],
            "figure": _figure(csv_path.with_name(group_plot_name(name, r["task"], r["prompt_mode"])))})
        cells = {m: fmt_est({"value": r.get(m), "ci_low": r.get(f"{m}_ci_low"), "ci_high": r.get(f"{m}_ci_high")})
                 + (" *" if r.get(f"{m}_significant") else "") for m in block["metrics"]}
        block["rows"].append({
            "model": r["model"], "derived": bool(r.get("base_model")), "split": r.get("eval_split"),
            "utility": f"{r.get('utility_metric') or ''} " + fmt_est({"value": r.get("utility"), "ci_low": r.get("utility_ci_low"),
                                                                      "ci_high": r.get("utility_ci_high")}),
            "cells": cells, "worst": r.get("worst_group") or "—", "n": f"{r.get('n_cases')} ({r.get('n_requests')} req.)",
            "invalid": fmt_est({"value": r.get("invalid_rate"), "ci_low": r.get("invalid_rate_ci_low"),
                                "ci_high": r.get("invalid_rate_ci_high")}),
            "run_id": r.get("run_id"), "commit": r.get("git_commit"), "finished": r.get("finished_at"),
        })
    return {"name": name, "blocks": list(blocks.values()), "tradeoff": _figure(csv_path.with_name(tradeoff_plot_name(name))),
            "seeds": None}


def seeds_board_view(csv_path: Path) -> dict:
    """A multi-seed board's CSV (``boards.seeds``: its ``n_seeds``/``seeds`` columns): one table per metric,
    a row per model with the mean over seeds and its 95% t-interval, the mean paired difference against the
    reference model, the paired t-test's raw and Holm-adjusted p, and ↑ / ↓ when the difference is
    significantly better / worse (Holm p < 0.05); and the trade-off figure."""
    from .keys import tradeoff_plot_name
    from .seeds import HIGHER, read, row_metrics

    csv_path = Path(csv_path)
    rows, reference = read(csv_path)
    name = csv_path.name[: -len(".csv")]
    kinds = sorted({r.get("kind") or "imaging" for r in rows})
    tables = []
    for m in row_metrics(rows):
        trs = []
        for r in rows:
            diff, p, p_holm = r.get(f"{m}_diff"), r.get(f"{m}_p"), r.get(f"{m}_p_holm")
            significant = _finite(diff) and _finite(p_holm) and p_holm < 0.05
            better = _finite(diff) and (diff > 0) == HIGHER.get(m, False)
            trs.append({
                "model": r["model"], "reference": r["model"] == reference, "derived": bool(r.get("base_model")),
                "seeds": r.get("seeds") or "—", "n_seeds": r.get("n_seeds"),
                "mean": fmt_est({"value": r.get(m), "ci_low": r.get(f"{m}_ci_low"), "ci_high": r.get(f"{m}_ci_high"),
                                 "note": r.get(f"{m}_note")})
                        + (f" ({r[f'{m}_n_missing']:.0f} of {r.get('n_seeds')} seeds missing)" if _finite(r.get(f"{m}_n_missing"))
                           and r.get(f"{m}_n_missing") else ""),
                "sd": fmt(r.get(f"{m}_sd")),
                # A row tested against its own control (leaderboard --control) names it beside the difference.
                "diff": (f"{diff:+.3f}" + (f" vs {r['reference']}" if r.get("reference") not in (None, reference) else "")) if _finite(diff) else "—",
                "p": fmt_p(p) if _finite(p) or not r.get(f"{m}_test_note") else f"— ({str(r[f'{m}_test_note']).split(':')[0]})",
                "p_holm": fmt_p(p_holm), "significant": bool(significant),
                "mark": ("↑" if better else "↓") if significant else "",
            })
        tables.append({"metric": m, "higher": HIGHER.get(m, False), "rows": trs})
    return {"name": name, "blocks": [], "seeds": {
        "reference": reference, "task": rows[0].get("task"), "mode": rows[0].get("prompt_mode") or "—", "kinds": kinds,
        "split": rows[0].get("eval_split") or "—", "n_test": rows[0].get("n_test"), "tables": tables},
        "tradeoff": _figure(csv_path.with_name(tradeoff_plot_name(name)))}


def redraw(csv_path: Path, sort_by: str = "cf_mean_abs_delta") -> dict:
    """Draw a leaderboard's figures again from its CSVs alone (no run directories, no model): the
    committed boards get the current figure style with ``fairbench report NAME.csv --redraw``."""
    from . import plots
    from .leaderboard import COLUMNS, GROUP_COLUMNS, _records, order, sort_metrics
    from .seeds import is_seeds_csv

    csv_path = Path(csv_path)
    if is_seeds_csv(csv_path):  # a multi-seed board: its trade-off figure (PNG 300 dpi, SVG, PDF)
        from .seeds import read
        from .seeds import draw as draw_seeds

        figures = draw_seeds(csv_path.with_suffix(""), read(csv_path)[0])
        return {"tradeoff": figures[0].name} if figures else {}
    rows = order(_records(csv_path, COLUMNS), sort_by)
    groups = _records(csv_path.with_name(csv_path.name[: -len(".csv")] + ".groups.csv"), GROUP_COLUMNS)
    block_metrics = {(r["task"], r["prompt_mode"]): sort_metrics(r.get("kind"), sort_by)[0] for r in rows}
    return plots.draw_all(csv_path.with_suffix(""), rows, groups, sort_by, block_metrics)


def _figure(png: Path) -> dict | None:
    """A board figure for inline use: its SVG when present (scales, small), else the PNG as a data URI."""
    svg = png.with_suffix(".svg")
    if svg.is_file():
        text = svg.read_text(encoding="utf-8")
        text = text[text.find("<svg"):]  # drop the XML prolog / doctype
        return {"svg": text, "name": png.name}
    if png.is_file():
        return {"png": "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode(), "name": png.name}
    return None


# ----- assemble and render -----

def _board_csv(path: Path) -> Path | None:
    path = Path(path)
    if path.suffix == ".csv" and path.is_file():
        return path
    if path.suffix in ("", ".md", ".html") and path.with_suffix(".csv").is_file() and not path.is_dir():
        return path.with_suffix(".csv")
    return None


def context(inputs: list[Path], tasks_dir: Path | None = None, board: Path | None = None) -> dict:
    """Everything the template receives. ``inputs``: run directories and/or one leaderboard CSV."""
    run_dirs = []
    for p in inputs:
        csv = _board_csv(Path(p))
        if csv is not None:
            board = csv
        elif Path(p).is_dir():
            run_dirs.append(Path(p))
        else:
            raise FairbenchError(f"{p}: neither a run directory nor a leaderboard CSV (leaderboards/NAME.csv).")
    if not run_dirs and board is None:
        raise FairbenchError("give at least one RUN_DIR written by `fairbench run`, or a leaderboard CSV.")
    runs = [Run(d, i) for i, d in enumerate(run_dirs)]
    views = []
    for run in runs:
        tests, correction = tests_table(run)
        view = {"id": run.id, "index": run.index, "label": run.label, "kind": run.kind, "model": run.model, "task": run.task,
                "mode": run.mode, "provenance": provenance(run), "headline": headline(run), "tests": tests,
                "correction": correction, "warnings": list((run.audits.get("counterfactual") or run.audits.get("group") or {}).get("warnings") or []),
                "data_report": run.results.get("data_report") or {}}
        if run.kind == "imaging":
            view.update({"verdict": imaging_verdict(run), "imaging": imaging_view(run, tasks_dir), "forest": [], "groups": []})
        else:
            view.update({"verdict": text_verdict(run), "forest": forest_text(run), "groups": text_groups(run), "imaging": None})
        views.append(view)
    payload = case_payload(runs)
    title = (f"fairbench report: {runs[0].label}" if len(runs) == 1 else
             f"fairbench report: {len(runs)} runs" if runs else f"fairbench leaderboard: {board.stem}")
    return {
        "title": title, "version": __version__, "runs": views,
        "board": board_view(board) if board is not None else None,
        "comparisons": comparisons(runs, tasks_dir), "cases": payload,
        "n_cases": len(payload["cases"]), "palette": PALETTE,
    }


def _json_script(obj) -> str:
    """JSON safe inside <script type="application/json">: no '<' can close the element."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_default)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.bool_):
        return bool(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update({"fmt": fmt, "fmt_est": fmt_est, "fmt_p": fmt_p,
                        "json_script": lambda obj: jinja2.utils.markupsafe.Markup(_json_script(obj))})
    return env


def render(ctx: dict) -> str:
    return environment().get_template("report.html.j2").render(**ctx)


def default_output(inputs: list[Path]) -> Path:
    """One run: RUN_DIR/report.html; a leaderboard: NAME.html next to its CSV; else ./report.html."""
    csvs = [c for c in (_board_csv(Path(p)) for p in inputs) if c is not None]
    if csvs:
        return csvs[0].with_suffix(".html")
    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        return Path(inputs[0]) / "report.html"
    return Path("report.html")


def write_report(inputs: list[Path], output: Path | None = None, tasks_dir: Path | None = None,
                 board: Path | None = None) -> Path:
    """Build the report of ``inputs`` (run directories and/or a leaderboard CSV) and write it."""
    output = Path(output) if output is not None else default_output(list(inputs) + ([board] if board else []))
    html = render(context([Path(p) for p in inputs], tasks_dir, board))
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(output, html)
    except OSError as exc:
        raise FairbenchError(f"cannot write {output} ({exc.strerror}); choose another --output.") from None
    return output
