"""Issue 13 for multi-seed summaries and boards (benchmark/seeds.py, benchmark/boards/seeds.py): seeds that
all agree give no interval (a "no variation" note, not a zero-width t-interval); paired tests on seeds
without variation are not applicable (no placeholder p = 1) and stay out of the Holm family of the summary,
of ``compare`` and of the board; seeds without a value are left out of the mean and counted on the board."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from seeds_fixtures import fake_seeds as _fake_seeds
from statsmodels.stats.multitest import multipletests

from benchmark.boards import seeds as board
from benchmark.seeds import compare, mean_ci, paired_t, rm_anova, summarize


def test_mean_of_identical_seeds_has_no_interval():
    m = mean_ci([0.2] * 5, (0.0, 1.0))
    assert m["mean"] == pytest.approx(0.2) and m["ci_low"] is None and m["ci_high"] is None
    assert m["note"].startswith("no variation: all 5 seeds give 0.2")
    # floating-point noise is not variation
    assert mean_ci([0.1 + 0.2, 0.3, 0.3])["ci_low"] is None
    varied = mean_ci([0.2, 0.21, 0.19, 0.2, 0.22])
    assert varied["ci_low"] < 0.2 < varied["ci_high"] and "note" not in varied
    # a seed without a value is left out of the mean and counted
    missing = mean_ci([0.2, None, 0.22, 0.21, 0.19])
    assert missing["mean"] == pytest.approx(np.mean([0.2, 0.22, 0.21, 0.19])) and missing["n_missing"] == 1 and missing["n_seeds"] == 4


def test_paired_t_and_rm_anova_without_variation_are_not_applicable():
    a = [0.3, 0.5, 0.4, 0.45, 0.35]
    same = paired_t(a, list(a), "auc")
    assert same.p_value is None and same.statistic is None and not same.applicable
    assert same.note.startswith("no variation") and same.extra["mean_diff"] == 0.0
    shifted = paired_t(a, [x - 0.1 for x in a], "auc")  # the same difference in every seed, up to float noise
    assert shifted.p_value is None and shifted.extra["mean_diff"] == pytest.approx(0.1)
    assert paired_t(a, [0.31, 0.48, 0.42, 0.43, 0.36], "auc").applicable
    flat = rm_anova(pd.DataFrame({"a": a, "b": a, "c": a}), "auc across groups")
    assert flat.p_value is None and flat.statistic is None and flat.note.startswith("no variation")
    offset = rm_anova(pd.DataFrame({"a": a, "b": [x + 0.05 for x in a], "c": [x - 0.02 for x in a]}), "auc across groups")
    assert offset.p_value is None and "no residual" in offset.note
    rng = np.random.default_rng(0)
    real = rm_anova(pd.DataFrame(rng.normal(size=(5, 3)), columns=["a", "b", "c"]), "auc across groups")
    assert real.applicable and 0 < real.p_value <= 1


def _imaging_result(seed: int, aucs: dict, dp: float, dp05: float) -> dict:
    groups = {g: {"auc": v, "small": False} for g, v in aucs.items()}
    sex = {"groups": groups, "dp_gap": {"value": dp}, "dp_gap_at_0.5": {"value": dp05}}
    return {"kind": "imaging", "run": {"model": "m", "task": "t", "seed": seed},
            "metrics": {"question": "lesion", "auc": {"value": 0.7 + 0.01 * seed}},
            "audits": {"group": {"endpoints": {"lesion": {"attributes": {"sex": sex}}}}}}


def test_summary_family_leaves_out_tests_without_variation():
    """The tuned vs 0.5 dp_gap test has the same difference (0) in every seed: not applicable, out of the
    family, so the AUC test's Holm p is its raw p (a family of one), not doubled by a placeholder p = 1."""
    female, male = [0.70, 0.74, 0.69, 0.73, 0.71], [0.62, 0.69, 0.60, 0.66, 0.65]
    results = [_imaging_result(s, {"female": f, "male": m}, 0.1, 0.1) for s, (f, m) in enumerate(zip(female, male))]
    s = summarize(results, [f"run{i}" for i in range(5)])
    tests = {t["target"]: t for t in s["tests"]}
    dp = tests["lesion/sex/dp_gap: validation threshold vs 0.5"]
    assert dp["p_value"] is None and dp["p_adjusted"] is None and not dp["applicable"] and dp["significant"] is None
    auc = tests["lesion/sex/auc: female vs male"]
    assert auc["applicable"] and auc["p_adjusted"] == pytest.approx(auc["p_value"])
    assert s["correction"]["n_tests"] == 1
    assert [t["target"] for t in s["correction"]["not_applicable"]] == [dp["target"]]


def test_compare_family_is_the_applicable_tests():
    base = [{"run": {"seed": i}, "metrics": {"auc": {"value": v}, "eod": {"value": 0.1}, "dp_gap": {"value": d}}}
            for i, (v, d) in enumerate(zip([0.70, 0.72, 0.71, 0.69, 0.73], [0.30, 0.28, 0.33, 0.31, 0.29]))]
    other = [{"run": {"seed": i}, "metrics": {"auc": {"value": v}, "eod": {"value": 0.1}, "dp_gap": {"value": d}}}
             for i, (v, d) in enumerate(zip([0.69, 0.74, 0.70, 0.70, 0.72], [0.10, 0.09, 0.14, 0.12, 0.08]))]
    out = compare(other, base)
    tests = {t["target"]: t for t in out["tests"]}
    assert tests["eod"]["p_value"] is None and tests["eod"]["p_adjusted"] is None
    raw = [tests[m]["p_value"] for m in ("auc", "dp_gap")]
    assert [tests[m]["p_adjusted"] for m in ("auc", "dp_gap")] == pytest.approx(list(multipletests(raw, method="holm")[1]))
    assert out["correction"]["n_tests"] == 2
    assert [t["target"] for t in compare(other, base, ["dp_gap", "eod"])["tests"]] == ["dp_gap", "eod"]


def test_board_leaves_untestable_metrics_out_and_shows_why(tmp_path):
    """eod is 0.1 in every seed of both models: no interval ("no variation"), no test, out of the row's
    Holm family; a seed without an AUC is left out of the mean and counted in the cell."""
    auc_ref, auc_fix = [0.70, 0.72, 0.71, 0.69, 0.73], [0.69, 0.74, 0.70, 0.70, 0.72]
    dp_ref, dp_fix = [0.30, 0.28, 0.33, 0.31, 0.29], [0.10, 0.09, 0.14, 0.12, 0.08]
    ref = _fake_seeds(tmp_path, "erm", [{"auc": a, "eod": 0.1, "dp_gap": d} for a, d in zip(auc_ref, dp_ref)])
    fix_seeds = [{"auc": a, "eod": 0.1, "dp_gap": d} for a, d in zip(auc_fix, dp_fix)]
    fix_seeds[2]["auc"] = None
    fix = _fake_seeds(tmp_path, "erm+fix", fix_seeds)
    rows = {r["model"]: r for r in board.build([ref, fix], "erm")}
    r = rows["erm+fix"]
    assert r["eod_ci_low"] is None and r["eod_note"].startswith("no variation")
    assert r["eod_p"] is None and r["eod_p_holm"] is None and r["eod_test_note"].startswith("no variation")
    tested = [m for m in board.METRICS if r.get(f"{m}_p") is not None]
    assert sorted(tested) == ["auc", "dp_gap"]
    raw = [r[f"{m}_p"] for m in tested]
    assert [r[f"{m}_p_holm"] for m in tested] == pytest.approx(list(multipletests(raw, method="holm")[1]))
    assert r["auc_n_missing"] == 1 and r["auc"] == pytest.approx(np.mean([a for i, a in enumerate(auc_fix) if i != 2]))
    cells = {m: board._cell(r, m) for m in board.METRICS}
    assert cells["eod"].startswith("0.100 (no variation)") and "(no test: no variation)" in cells["eod"]
    assert "(1 of 5 seeds missing)" in cells["auc"] and "missing" not in cells["dp_gap"]
    md = board.render("b", list(rows.values()), "erm", None)
    assert "(1 of 5 seeds missing)" in md and "0.100 (no variation)" in md


def test_html_seeds_view_says_why_a_mean_has_no_interval(tmp_path):
    """The HTML report of a seeds board shows the same reasons as the Markdown board."""
    from benchmark.boards.report import seeds_board_view

    ref = _fake_seeds(tmp_path, "erm", [{"auc": 0.7 + 0.01 * i, "eod": 0.1, "dp_gap": 0.3 - 0.01 * i} for i in range(5)])
    fix_seeds = [{"auc": 0.71 + 0.01 * i, "eod": 0.1, "dp_gap": 0.1 + 0.02 * (i % 2)} for i in range(5)]
    fix_seeds[1]["auc"] = None
    fix = _fake_seeds(tmp_path, "erm+fix", fix_seeds)
    import pandas as pd

    csv = tmp_path / "b.csv"
    pd.DataFrame(board.build([ref, fix], "erm")).to_csv(csv, index=False)
    view = seeds_board_view(csv)
    cells = {t["metric"]: {r["model"]: r for r in t["rows"]} for t in view["seeds"]["tables"]}
    assert cells["eod"]["erm+fix"]["mean"] == "0.100 (no variation)"
    assert cells["eod"]["erm+fix"]["p"] == "— (no variation)"
    assert cells["auc"]["erm+fix"]["mean"].endswith("(1 of 5 seeds missing)")
