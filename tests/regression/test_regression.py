"""Regression guard that holds on any CPU and still catches real change (issue 22).

Two halves, each with its own tolerance:

- **Statistics from stored outputs, exact.** The recorded runs' outputs (golden/stored/<name>/:
  requests.jsonl, results.json, manifest.json) are rescored by this code (`fairbench score`, no model)
  and every numeric, string, boolean and null leaf of results.json, the parsed outcome of every request,
  the leaderboard rows and the result of `fairbench check` must equal the golden values (floats within
  record.FLOAT_TOL = 1e-9). This is numpy/scipy only and the same on every processor.
- **Model outputs, within a measured tolerance.** Each run is also made afresh; prompts, rendered
  prompts, options, generated text and token counts must equal the stored ones exactly, and the floats a
  model computes (option log-probabilities, image probabilities) must agree within the tolerance that
  measure_tolerance.py measured across kernel paths (golden/tolerances.json). On the kernel path they
  were recorded on (same CPU, same ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA / MKL_ENABLE_INSTRUCTIONS,
  same llama.cpp build), they must be bit-identical and the whole fresh output must equal the golden file.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record as R  # noqa: E402 - the one definition of the runs and of the flattening

# Golden dotted prefix (old schema) -> dotted prefix in the new results (e.g. "results.metrics.dp_gap"
# -> "results.fairness.dp_gap"). ONLY schema renames that are documented (changelog / schema notes of
# the refactor) may be added here; anything else that moved or changed must fail this test.
RENAMES: dict[str, str] = {
    # results schema 2 (README: Results schema): every audit sits under ``audits``.
    "results.counterfactual": "results.audits.counterfactual",
    "results.group": "results.audits.group",
}


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> R.Runner:
    return R.Runner(tmp_path_factory.mktemp("regression"))


def _fail(name: str, problems: list[str], total: int, what: str) -> None:
    shown = "\n".join(problems[: R.MAX_LISTED])
    more = f"\n... and {len(problems) - R.MAX_LISTED} more" if len(problems) > R.MAX_LISTED else ""
    pytest.fail(f"{name}: {len(problems)} of {total} {what} missing or changed "
                f"(golden/{name}.json; RENAMES applied: {len(RENAMES)}):\n{shown}{more}", pytrace=False)


def _compare_or_record(name: str, tree: dict, skip_prefixes: tuple[str, ...] = ()) -> None:
    if R.recording():
        R.save_golden(name, tree)
        return
    golden, values = R.load_golden(name), R.flatten(tree)
    golden = {k: v for k, v in golden.items() if not k.startswith(skip_prefixes)}
    problems = R.differences(golden, values, RENAMES)
    if problems and golden.get("fixture.tiny_llama") not in (None, values.get("fixture.tiny_llama")):
        problems.insert(0, "NOTE  the tiny_llama_dir fixture (tests/conftest.py) is not the one recorded: differences "
                           "may come from the fixture, not from benchmark/")
    if problems:
        _fail(name, problems, len(golden), "golden values")


def _prepare(runner: R.Runner, run: R.Run, request) -> None:
    if run.needs_data and runner.data_dir is None:
        runner.data_dir = request.getfixturevalue("shared_data")  # skips with a reason where absent
    if run.tiny and runner.tiny_llama_dir is None:
        runner.tiny_llama_dir = request.getfixturevalue("tiny_llama_dir")
    for dep in run.requires:
        _prepare(runner, R.RUNS_BY_NAME[dep], request)


@pytest.mark.parametrize("name", [
    pytest.param(r.name, marks=[pytest.mark.integration] if r.integration else [], id=r.name) for r in R.RUNS
])
def test_statistics_from_stored_outputs_match_golden(name, runner):
    """Rescoring the stored outputs gives the golden statistics at 1e-9, whatever the processor."""
    if R.recording():
        pytest.skip("recording: the stored outputs are written by test_run_matches_golden")
    _compare_or_record(name, runner.rescored_values(name), skip_prefixes=("cli.", "fixture."))


@pytest.mark.numerics
@pytest.mark.parametrize("name", [
    pytest.param(r.name, marks=[pytest.mark.integration] if r.integration else [], id=r.name) for r in R.RUNS
])
def test_run_matches_golden(name, runner, request):
    """A fresh run: exact text, model floats within the measured tolerance (exact on the recorded kernels)."""
    _prepare(runner, R.RUNS_BY_NAME[name], request)
    tree = runner.run_values(name)
    if R.recording():
        R.save_golden(name, tree)
        runner.store(name)
        return
    same_kernels = R.kernel_signature() == R.recorded_signature(name)
    tol = 0.0 if same_kernels else R.tolerance_for(name)
    kind = R.RUNS_BY_NAME[name].kind
    stored = R.output_rows(R.STORED / name, kind)
    problems, worst = R.output_differences(stored, R.output_rows(runner.run(name), kind), tol)
    measure = os.environ.get("FAIRBENCH_REGRESSION_MEASURE")
    if measure:  # measure_tolerance.py: the largest model-output difference on this kernel path
        with open(measure, "a", encoding="utf-8") as f:
            f.write(json.dumps({"run": name, "max_abs_diff": worst, "kernels": R.kernel_signature()}) + "\n")
        return
    if problems:
        _fail(name, problems, len(stored), f"stored rows ({'bit for bit' if same_kernels else f'tolerance {tol:g}'})")
    if same_kernels:
        _compare_or_record(name, tree)


def test_leaderboard_and_check_match_golden(runner):
    """The board and the gate over the rescored stored runs: exact on any CPU."""
    _compare_or_record("leaderboard", runner.leaderboard_values())


def test_imaging_runs_in_leaderboard(runner):
    """Before the refactor `fairbench leaderboard` did not accept imaging runs (recorded in
    golden/imaging-leaderboard.json: ``KeyError: 'counterfactual'``). The one results schema makes
    them ordinary rows: alone and next to text runs, the command now succeeds."""
    tree = runner.imaging_leaderboard_status()
    # The golden file is history (what the old code did): never re-recorded.
    golden = R.load_golden("imaging-leaderboard")
    assert golden["imaging_leaderboard.imaging_only.accepted"] is False  # what the old code did
    now = R.flatten(tree)
    for case in ("imaging_only", "with_text_runs"):
        assert now[f"imaging_leaderboard.{case}.accepted"] is True and now[f"imaging_leaderboard.{case}.exit_code"] == 0, now
