"""Regression guard for the benchmark/ refactor: fixed runs through the command line must give the
values recorded on the pre-refactor code (tests/regression/golden/*.json, written by record.py).

Compared: every numeric, string, boolean and null leaf of results.json (flattened to dotted paths,
without timings, paths, run directory names, fingerprints/hashes, environment and schema_version),
the parsed outcome of every request in requests.jsonl, the leaderboard CSV rows and the result of
`fairbench check`. Floats: absolute tolerance record.FLOAT_TOL (1e-9); everything else exactly.
Paths present now but not in the golden files are allowed (new fields); missing or changed ones fail.
"""

from __future__ import annotations

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


def _compare_or_record(name: str, tree: dict) -> None:
    if R.recording():
        R.save_golden(name, tree)
        return
    golden, values = R.load_golden(name), R.flatten(tree)
    problems = R.differences(golden, values, RENAMES)
    if problems and golden.get("fixture.tiny_llama") not in (None, values.get("fixture.tiny_llama")):
        problems.insert(0, "NOTE  the tiny_llama_dir fixture (tests/conftest.py) is not the one recorded: differences "
                           "may come from the fixture, not from benchmark/")
    if problems:
        shown = "\n".join(problems[: R.MAX_LISTED])
        more = f"\n... and {len(problems) - R.MAX_LISTED} more" if len(problems) > R.MAX_LISTED else ""
        pytest.fail(f"{name}: {len(problems)} of {len(golden)} golden values missing or changed "
                    f"(golden/{name}.json; RENAMES applied: {len(RENAMES)}):\n{shown}{more}", pytrace=False)


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
def test_run_matches_golden(name, runner, request):
    _prepare(runner, R.RUNS_BY_NAME[name], request)
    _compare_or_record(name, runner.run_values(name))


def _prepare_leaderboard(runner: R.Runner, request, extra: tuple[str, ...] = ()) -> None:
    for name in (*R.LEADERBOARD_RUNS, *extra):
        _prepare(runner, R.RUNS_BY_NAME[name], request)


def test_leaderboard_and_check_match_golden(runner, request):
    _prepare_leaderboard(runner, request)
    _compare_or_record("leaderboard", runner.leaderboard_values())


def test_imaging_runs_in_leaderboard(runner, request):
    """Before the refactor `fairbench leaderboard` did not accept imaging runs (recorded in
    golden/imaging-leaderboard.json: ``KeyError: 'counterfactual'``). The one results schema makes
    them ordinary rows: alone and next to text runs, the command now succeeds."""
    _prepare_leaderboard(runner, request, (R.IMAGING_LEADERBOARD_RUN,))
    tree = runner.imaging_leaderboard_status()
    if R.recording():
        R.save_golden("imaging-leaderboard", tree)
        return
    golden = R.load_golden("imaging-leaderboard")
    assert golden["imaging_leaderboard.imaging_only.accepted"] is False  # what the old code did
    now = R.flatten(tree)
    for case in ("imaging_only", "with_text_runs"):
        assert now[f"imaging_leaderboard.{case}.accepted"] is True and now[f"imaging_leaderboard.{case}.exit_code"] == 0, now
