"""Issues 17 and 24: terminal output reads at 80 columns. No table cell is folded in the middle of a
word or a number (``smol`` / ``lm2-``, ``cf_f`` / ``lip``, ``treat/gender/ou`` / ``tcome``), nothing is
truncated (``race=Asian|…`` twice), and no line is wider than the terminal. Checked on the demo
summary, a grid summary with long model names, ``check`` and ``leaderboard``, at 80 and 120 columns,
against the same output at a width where nothing needs to fit.

How "no token broken" is tested: the output at an unconstrained width gives the set of tokens
(split at white space and box lines, after the separators ``| / +`` where boards.terminal may
put a line break, and at ``=``, since the compact layout writes ``race=Asian`` for ``race``, ``Asian``); every one of them must appear whole at 80 and 120 columns, and nothing may
appear there that is not one of them (a folded piece ``tcome`` is not), except the short headers and
layout words a narrow layout adds."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest
from rich.console import Console

import benchmark.cli as cli
from benchmark.boards.terminal import Col, print_results, show_table

BOX = "│┃┏┓┗┛┡┩└┘├┤┬┴┼╇╈╋━─┳┻╸╹╺╻ "
# Words only the narrow layouts add: short headers (their legend names the full header), the
# "(every row: ...)" note of columns moved into the title, the record layout's separators.
LAYOUT = {"mean", "decision", "stat", "n", "flip", "|Δ|", "dp", "base", "cand", "Δ", "p", "every", "row", "=", "·", "prev", "pos", "pos@.5"}


def tokens(text: str) -> set[str]:
    out = set()
    for word in re.split(f"[{re.escape(BOX)}\\s]+", text):
        for piece in re.split(r"(?<=[|/+])|=", word):  # "race=Asian" is the compact form of "race", "Asian"
            piece = piece.strip("():;,|/+")
            if piece:
                out.add(piece)
    return out


def assert_unbroken(narrow: str, wide: str, width: int) -> None:
    assert "…" not in narrow and "..." not in narrow
    # A path longer than the terminal is one token: printed whole on its own line (the terminal wraps it).
    too_wide = [line for line in narrow.splitlines() if len(line) > width and len(line.split()) > (3 if line.startswith("run directory:") else 1)]
    assert not too_wide, too_wide[:3]
    lost = tokens(wide) - tokens(narrow) - {"attribute"}  # the compact layout merges attribute into group
    assert not lost, f"broken or lost at {width} columns: {sorted(lost)[:20]}"
    extra = tokens(narrow) - tokens(wide) - LAYOUT
    assert not extra, f"fragments at {width} columns: {sorted(extra)[:20]}"


def _console(width: int) -> tuple[Console, io.StringIO]:
    """What a terminal of ``width`` columns shows (no colours, so the text can be compared)."""
    buf = io.StringIO()
    return Console(file=buf, width=width, color_system=None, force_terminal=True), buf


def _est(v):
    return {"value": v, "ci_low": v - 0.0123, "ci_high": v + 0.0123}


def _results() -> dict:
    races, genders = ["Asian", "Black", "Hispanic", "White"], ["man", "woman"]
    def grp(i):
        return {"n_cases": 50, "mean_outcome": _est(0.4 + i / 100), "decision_rate": _est(0.3 + i / 100), "n_invalid": 0, "n_rows": 50}
    inter = {f"race={r}|gender={g}": grp(i) for i, (r, g) in enumerate((r, g) for r in races for g in genders)}
    tests = [{"target": f"treat/intersection/{k}", "test": "friedman", "paired": True, "n": 50, "statistic": 3.2,
              "p_value": 0.01, "p_adjusted": 0.03, "significant": True} for k in ("outcome", "decision", "outcome_gap")]
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
    console, buf = _console(width)
    print_results(_results(), "runs/x", console)
    return buf.getvalue()


@pytest.mark.parametrize("width", [80, 120])
def test_results_tables_keep_every_label_and_number_whole(width):
    assert_unbroken(_render(width), _render(1000), width)


def test_80_columns_intersection_labels_are_distinct_and_break_only_at_the_bar():
    out = _render(80)
    assert "race=Hispanic|" in out.replace(" ", "") and "gender=woman" in out
    assert "Hispanic|gender=wo" not in out.replace("\n", "")  # never cut inside a name


def test_wide_terminal_unchanged_one_line_per_group():
    out = _render(200)
    assert "│ intersection │ race=Asian|gender=man " in out


def test_below_every_table_layout_one_record_per_row():
    console, buf = _console(40)
    rows = [("smollm2-135m-llamacpp", "diversitymedqa", "0.123 [0.1, 0.2]"), ("gemma3-270m", "qpain", "0.5")]
    show_table(console, "t", [Col("model"), Col("task"), Col("value [95% CI]", "right")], rows, records_key=2)
    out = buf.getvalue()
    assert "smollm2-135m-llamacpp · diversitymedqa" in out and "value [95% CI]: 0.123 [0.1, 0.2]" in out
    assert max(len(x) for x in out.splitlines()) <= 40


# ---------- real run directories: demo summary, grid, leaderboard, check ----------

LONG = "smollm2-135m-llamacpp"  # the longest built-in model name, here a tiny hf model


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama_dir):
    root = tmp_path_factory.mktemp("width")
    models = root / "models.yaml"
    models.write_text("models:\n" + "".join(f"  {n}:\n    backend: hf\n    model: {tiny_llama_dir}\n    chat_template: true\n"
                                            for n in ("tiny", LONG)))
    return root, models


def _cli(monkeypatch, width: int, *args: str) -> tuple[int, str]:
    console, buf = _console(width)
    monkeypatch.setattr(cli, "console", console)
    code = cli.main(list(args))
    return code, buf.getvalue()


@pytest.fixture()
def env(setup, monkeypatch):
    root, models = setup
    monkeypatch.setenv("FAIRBENCH_CACHE", str(root / "cache"))
    monkeypatch.setenv("FAIRBENCH_REQUEST_CACHE", str(root / "request-cache"))
    return root, models


def _grid(monkeypatch, env, width):
    root, models = env
    return _cli(monkeypatch, width, "run", "--model", f"tiny,{LONG}", "--task", "qpain-demo,diversitymedqa", "--limit", "2",
                "-o", str(root / "runs"), "--models-file", str(models))


def test_grid_summary_never_breaks_a_model_name(monkeypatch, env):
    assert _grid(monkeypatch, env, 1000)[0] == 0  # computes (or finds) the runs; the next ones resume them alike
    code, wide = _grid(monkeypatch, env, 1000)
    assert code == 0 and "grid summary" in wide
    for width in (80, 120):
        code, narrow = _grid(monkeypatch, env, width)
        assert code == 0
        assert LONG in narrow and "diversitymedqa" in narrow
        assert_unbroken(narrow, wide, width)


def test_demo_summary_fits(monkeypatch, env):
    root, models = env
    args = ("run", "--model", LONG, "--limit", "3", "-o", str(root / "runs"), "--models-file", str(models))
    assert _cli(monkeypatch, 1000, *args)[0] == 0
    code, wide = _cli(monkeypatch, 1000, *args)
    assert code == 0 and "mean outcome by group" in wide
    for width in (80, 120):
        code, narrow = _cli(monkeypatch, width, *args)
        assert code == 0
        assert_unbroken(narrow, wide, width)


def test_leaderboard_and_check_output_fit(monkeypatch, env, capsys):
    root, models = env
    assert _grid(monkeypatch, env, 1000)[0] == 0
    runs = sorted((root / "runs").glob("*__qpain-demo__*limit2"))
    board = root / "lb" / "w"
    capsys.readouterr()
    code, _ = _cli(monkeypatch, 80, "leaderboard", *map(str, runs), "-o", str(board), "--no-plots")
    assert code == 0
    printed = capsys.readouterr().out  # the written paths, one per line, never wrapped by rich
    assert str(board.with_suffix(".csv")) in printed.splitlines()
    cand = next(r for r in runs if r.name.startswith(LONG))
    args = ("check", "--baseline", str(board.with_suffix(".csv")), "--candidate", str(cand), "--baseline-model", "tiny",
            "--runs-dir", str(root / "runs"))
    code, wide = _cli(monkeypatch, 1000, *args)
    assert code in (0, 1) and "fairbench check" in wide
    for width in (80, 120):
        assert _cli(monkeypatch, width, *args)[0] == code
        assert_unbroken(_cli(monkeypatch, width, *args)[1], wide, width)
