"""`fairbench report BOARD.csv` on a multi-seed board (`leaderboard --reference`, boards.seeds): per-metric
tables of mean [95% CI], paired difference against the reference with Holm p and a significance marker,
the seeds, and the trade-off figure drawn by the paper-figure code (PNG 300 dpi, SVG, PDF)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from seeds_fixtures import auc_dp_seeds as _fake_seeds

from benchmark.boards import report, seeds
from benchmark.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "leaderboards" / "mitigation-imaging.csv"


@pytest.fixture()
def board(tmp_path):
    erm = _fake_seeds(tmp_path, "erm", [(0.70, 0.30), (0.72, 0.28), (0.71, 0.33), (0.69, 0.31), (0.73, 0.29)])
    fix = _fake_seeds(tmp_path, "erm+fix", [(0.69, 0.10), (0.72, 0.09), (0.70, 0.14), (0.69, 0.12), (0.72, 0.08)])
    out = tmp_path / "lb" / "mitigation-imaging"
    paths = seeds.write([erm, fix], out, "erm")
    return out, paths


def test_seeds_write_draws_the_paper_figure_in_three_formats(board):
    out, paths = board
    for ext in ("png", "svg", "pdf"):
        f = out.parent / f"mitigation-imaging.tradeoff.{ext}"
        assert f.is_file() and paths[ext] == f
    assert "mitigation-imaging.tradeoff.png" in paths["md"].read_text()


def test_seeds_csv_is_recognised_and_read_back(board):
    out, _ = board
    csv = out.with_suffix(".csv")
    assert seeds.is_seeds_csv(csv) and seeds.is_seeds_csv(COMMITTED)
    assert not seeds.is_seeds_csv(ROOT / "leaderboards" / "demo.csv")
    rows, reference = seeds.read(csv)
    assert reference == "erm" and [r["model"] for r in rows] == ["erm", "erm+fix"]
    assert rows[1]["seeds"] == "0 1 2 3 4" and rows[1]["kind"] == "imaging"


def test_seeds_board_view_tables_per_metric(board):
    out, _ = board
    csv = out.with_suffix(".csv")
    df = pd.read_csv(csv).set_index("model")
    view = report.board_view(csv)
    sb = view["seeds"]
    assert sb["reference"] == "erm" and [t["metric"] for t in sb["tables"]] == seeds.METRICS
    dp = next(t for t in sb["tables"] if t["metric"] == "dp_gap")
    ref, fix = dp["rows"]
    assert ref["reference"] and ref["diff"] == "—" and not ref["significant"]
    assert fix["mean"] == report.fmt_est({"value": df.loc["erm+fix", "dp_gap"], "ci_low": df.loc["erm+fix", "dp_gap_ci_low"],
                                          "ci_high": df.loc["erm+fix", "dp_gap_ci_high"]})
    assert fix["diff"] == f"{df.loc['erm+fix', 'dp_gap_diff']:+.3f}"
    assert fix["p_holm"] == report.fmt_p(df.loc["erm+fix", "dp_gap_p_holm"])
    assert df.loc["erm+fix", "dp_gap_p_holm"] < 0.05 and fix["significant"] and fix["mark"] == "↑"  # a lower gap is better
    assert fix["seeds"] == "0 1 2 3 4"
    assert view["tradeoff"] and "<svg" in view["tradeoff"]["svg"]


def test_cli_report_renders_a_seeds_board(board, tmp_path):
    out, _ = board
    html_path = tmp_path / "board.html"
    assert main(["report", str(out.with_suffix(".csv")), "-o", str(html_path)]) == 0
    html = html_path.read_text()
    assert "Leaderboard <code>mitigation-imaging</code>" in html and "Multi-seed board" in html
    assert "Holm p" in html and "↑ yes" in html and "0 1 2 3 4" in html and "<svg" in html
    assert "Δ vs erm" in html


def test_redraw_committed_seeds_board_from_its_csv_alone(tmp_path):
    csv = tmp_path / "mitigation-imaging.csv"
    shutil.copy(COMMITTED, csv)
    figures = report.redraw(csv)
    assert figures == {"tradeoff": "mitigation-imaging.tradeoff.png"}
    for ext in ("png", "svg", "pdf"):
        assert (tmp_path / f"mitigation-imaging.tradeoff.{ext}").is_file()
    html = report.render(report.context([csv]))
    rows, reference = seeds.read(csv)
    assert reference == "vit-tiny" and len(rows) == len(pd.read_csv(COMMITTED))
    assert "vit-tiny+fairmed-vlm" in html and "Holm p" in html


def test_leaderboard_html_writes_the_report_of_a_seeds_board(tmp_path, capsys):
    erm = _fake_seeds(tmp_path, "erm", [(0.70, 0.30), (0.72, 0.28), (0.71, 0.33)])
    fix = _fake_seeds(tmp_path, "erm+fix", [(0.69, 0.10), (0.72, 0.09), (0.70, 0.14)])
    out = tmp_path / "lb" / "seeds-board"
    assert main(["leaderboard", str(erm), str(fix), "-o", str(out), "--reference", "erm", "--no-plots", "--html"]) == 0
    html = out.with_suffix(".html")
    assert html.is_file() and str(html) in capsys.readouterr().out
    assert "erm+fix" in html.read_text()


def test_rows_are_paired_against_their_like_for_like_control(tmp_path):
    """`--control GLOB=MODEL`: a LoRA method is tested against ERM + LoRA (same adapter), the control against
    ERM; Holm runs over exactly the metrics shown; a non-significant difference is labelled n.s."""
    import numpy as np
    from scipy import stats as sps
    from statsmodels.stats.multitest import multipletests

    erm = _fake_seeds(tmp_path, "erm", [(0.70, 0.30), (0.72, 0.28), (0.71, 0.33), (0.69, 0.31), (0.73, 0.29)])
    lora = _fake_seeds(tmp_path, "erm+lora", [(0.80, 0.20), (0.81, 0.22), (0.79, 0.21), (0.80, 0.19), (0.82, 0.23)])
    fair = _fake_seeds(tmp_path, "erm+fair-lora", [(0.85, 0.21), (0.86, 0.20), (0.84, 0.22), (0.86, 0.20), (0.87, 0.22)])
    import json

    for i, d in enumerate(sorted(tmp_path.glob("*__seed[0-9]*"))):  # a metric the board does not show: outside the Holm family
        r = json.loads((d / "results.json").read_text())
        r["metrics"]["ece_gap"] = {"value": 0.01 * (i * i % 7) + (0.05 if "fair" in d.name else 0.0)}
        (d / "results.json").write_text(json.dumps(r))
    out = tmp_path / "lb" / "board"
    assert main(["leaderboard", str(erm), str(lora), str(fair), "-o", str(out), "--reference", "erm",
                 "--control", "*fair-lora=erm+lora", "--control", "*+tune=erm+tune-fullft", "--no-plots"]) == 0  # no +tune row: ignored
    df = pd.read_csv(out.with_suffix(".csv")).set_index("model")
    assert list(df.index) == ["erm", "erm+lora", "erm+fair-lora"]
    assert df.loc["erm+fair-lora", "reference"] == "erm+lora" and df.loc["erm+lora", "reference"] == "erm"
    fair_dp, lora_dp = [0.21, 0.20, 0.22, 0.20, 0.22], [0.20, 0.22, 0.21, 0.19, 0.23]
    assert df.loc["erm+fair-lora", "dp_gap_diff"] == pytest.approx(np.mean(fair_dp) - np.mean(lora_dp), abs=1e-6)
    assert df.loc["erm+fair-lora", "dp_gap_p"] == pytest.approx(sps.ttest_rel(fair_dp, lora_dp).pvalue, rel=1e-4)
    raw = [df.loc["erm+fair-lora", f"{m}_p"] for m in seeds.METRICS if np.isfinite(df.loc["erm+fair-lora", f"{m}_p"])]
    holm = [df.loc["erm+fair-lora", f"{m}_p_holm"] for m in seeds.METRICS if np.isfinite(df.loc["erm+fair-lora", f"{m}_p"])]
    assert holm == pytest.approx(list(multipletests(raw, method="holm")[1]), rel=1e-6)
    md = out.with_suffix(".md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| `erm+fair-lora`"))
    assert "| `erm+lora` |" in line and "n.s." in line and "↑" in line  # dp_gap not significant, AUC higher
    assert seeds.METRICS[:3] == ["eod", "auc_gap", "underdiag_gap"] and seeds.METRICS[-1] == "dp_gap"
    # provenance: the runs' commits are on the board (the fakes have no manifest: unknown commit)
    assert "Runs of commit" in md and "git_commit" in df.columns
    assert main(["leaderboard", str(erm), str(fair), "-o", str(out), "--reference", "erm", "--control", "nonsense"]) == 2
    assert main(["leaderboard", str(erm), str(fair), "-o", str(out), "--reference", "erm", "--control", "*fair-lora=erm+lora"]) == 2


def test_seed_intervals_stay_in_the_unit_interval_for_rates_aucs_and_gaps():
    """Five seeds of a small gap: the raw t-interval dips below 0; a gap's (and an AUC's) interval is
    clipped to [0, 1], other metrics are not."""
    from benchmark.seeds import UNIT_INTERVAL, mean_ci

    xs = [0.0, 0.01, 0.09, 0.0, 0.04]
    raw, clipped = mean_ci(xs), mean_ci(xs, (0.0, 1.0))
    assert raw["ci_low"] < 0 and clipped["ci_low"] == 0.0 and clipped["ci_high"] == raw["ci_high"]
    assert mean_ci([0.99, 1.0, 0.97, 1.0, 0.999], (0.0, 1.0))["ci_high"] == 1.0
    assert all(UNIT_INTERVAL.search(m) for m in ("eod", "auc_gap", "underdiag_gap", "worst_group_auc", "accuracy", "dp_gap"))
    assert not UNIT_INTERVAL.search("cf_mean_abs_delta")
