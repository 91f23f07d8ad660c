"""Issue 17: results tables read at 80 columns (CI logs): no two rows may look the same after
truncation (``race=Asian|…`` twice); long labels fold onto further lines instead."""

from __future__ import annotations

import io

from rich.console import Console

from benchmark.boards.terminal import print_results


def _est(v):
    return {"value": v, "ci_low": v - 0.0123, "ci_high": v + 0.0123}


def _results() -> dict:
    races, genders = ["Asian", "Black", "Hispanic", "White"], ["man", "woman"]
    def grp(i):
        return {"n_cases": 50, "mean_outcome": _est(0.4 + i / 100), "decision_rate": _est(0.3 + i / 100), "n_invalid": 0, "n_rows": 50}
    inter = {f"race={r}|gender={g}": grp(i) for i, (r, g) in enumerate((r, g) for r in races for g in genders)}
    tests = [{"target": f"treat/intersection/{k}", "test": "friedman", "paired": True, "n": 50, "statistic": 3.2,
              "p_value": 0.01, "p_adjusted": 0.03, "significant": True} for k in ("outcome", "decision")]
    attributes = {
        "race": {"groups": {r: grp(i) for i, r in enumerate(races)}, "tests": [], "reference": "White",
                 "delta_vs_reference": {r: _est(0.01) for r in races[:3]}, "dp_gap": _est(0.2)},
        "gender": {"groups": {g: grp(i) for i, g in enumerate(genders)}, "tests": [], "reference": "man",
                   "delta_vs_reference": {"woman": _est(0.02)}, "dp_gap": _est(0.1)},
        "intersection": {"groups": inter, "tests": tests, "dp_gap": _est(0.3)},
    }
    q = {"attributes": attributes, "cf_flip_rate": _est(0.32), "cf_mean_abs_delta": _est(0.031), "accuracy": _est(0.44),
         "invalid_rate": 0.0, "n_invalid": 0, "n_rows": 400}
    return {"run": {"model": "smollm2-135m-instruct-long-name", "task": "qpain", "prompt_mode": "zero_shot", "seed": 0},
            "audits": {"counterfactual": {"questions": {"treat": q}, "warnings": []}}}


def _render(width: int) -> str:
    buf = io.StringIO()
    print_results(_results(), "runs/x", Console(file=buf, width=width, color_system=None, force_terminal=False))
    return buf.getvalue()


def test_80_column_tables_never_truncate_labels_to_the_same_text():
    out = _render(80)
    assert "…" not in out and "..." not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    # Reassemble the group column of the mean-outcome table: each group label is whole and unique.
    table = out.split("┏", 1)[1].split("└", 1)[0]  # the first table: mean outcome by group
    labels: list[str] = []
    for line in table.splitlines():
        cells = line.split("│")
        if len(cells) < 7:
            continue
        group, cases = cells[2].strip(), cells[3].strip()
        if cases.isdigit():
            labels.append(group)
        elif labels and group and cases == "":
            labels[-1] += group
    inter = [x for x in labels if x.startswith("race=")]
    assert len(inter) == 8 and len(set(inter)) == 8
    assert "race=Hispanic|gender=woman" in inter


def test_wide_terminal_unchanged_one_line_per_group():
    out = _render(200)
    assert "│ intersection │ race=Asian|gender=man " in out
