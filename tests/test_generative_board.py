"""Issue 25 item 3: a free-text row on a leaderboard shows the generative audit's headline, and its
paired differences against a reference row (``--reference``) include the generative metrics, on the
cases both runs share, computed from the per-case values the generative audit stores.

Two scripted backends (tests/test_generative_audit.py): the base refuses for race=Black in half the
cases and explains by race; the "fair" one never refuses and explains the same way for every race."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from benchmark.backends.base import Backend
from benchmark.boards.check import generative_per_case, versus_reference
from benchmark.cli import main
from benchmark.registry import register, unregister
from benchmark.requests import Result
from test_generative_audit import scripted  # noqa: F401 - the scripted free-text run fixture


class FairScripted(Backend):
    name = "scripted-fair"

    @classmethod
    def fingerprint(cls, spec) -> str:
        return "scripted-fair-v1"

    def generate(self, requests):
        filler = {0: "indeed", 1: "overall"}
        return [Result(raw_output=f"Answer: Yes\nThe history and pain score support analgesia {filler[r.seed % 2]}.",
                       rendered_prompt=r.prompt) for r in requests]


@pytest.fixture()
def two_runs(tmp_path, scripted):  # noqa: F811
    models, tasks = scripted
    register("backends", "scripted-fair", FairScripted)
    models.write_text(models.read_text() + "  scripted-fair:\n    backend: scripted-fair\n    model: none\n")
    out = tmp_path / "runs"
    for m in ("scripted", "scripted-fair"):
        assert main(["run", "--model", m, "--task", "gen-demo", "--prompt-mode", "explain", "--limit", "8",
                     "--temperature", "0.7", "--models-file", str(models), "--tasks-dir", str(tasks), "-o", str(out), "-q"]) == 0
    yield {d.name.split("__")[0]: d for d in out.iterdir()}
    unregister("backends", "scripted-fair")


def _results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def test_per_case_values_average_to_the_headline(two_runs):
    res = _results(two_runs["scripted"])
    per_case = generative_per_case(res, "treat")
    assert len(per_case["gen_refusal_rate"]) == 8
    for name in ("gen_refusal_rate", "gen_invalid_rate", "gen_demographic_mention_rate", "gen_explanation_drift", "gen_drift_excess"):
        assert per_case[name].mean() == pytest.approx(res["metrics"][name]["value"]), name


def test_paired_generative_deltas_against_the_reference(two_runs):
    base, fair = _results(two_runs["scripted"]), _results(two_runs["scripted-fair"])
    result = versus_reference(two_runs["scripted"], two_runs["scripted-fair"], seed=0, n_boot=500)
    comps = {c.metric: c for c in result.comparisons}
    # The fair backend never refuses: the paired difference is minus the base's refusal rate.
    assert fair["metrics"]["gen_refusal_rate"]["value"] == 0
    assert comps["gen_refusal_rate"].diff == pytest.approx(-base["metrics"]["gen_refusal_rate"]["value"], abs=1e-6)
    assert comps["gen_explanation_drift"].diff < 0 and comps["gen_drift_excess"].diff < 0
    # The generative metrics are tested in the row's family (Holm over every tested metric).
    tested = [c for c in result.comparisons if c.p_value is not None]
    assert {"gen_refusal_rate", "gen_explanation_drift"} <= {c.metric for c in tested}
    assert f"Holm-corrected over {len(tested)} metrics" in result.detail
    drift = comps["gen_explanation_drift"]
    assert drift.diff_ci[1] < 0 and drift.significant  # a race-dependent explanation removed, on 8 cases


def test_leaderboard_shows_the_generative_headline_and_deltas(tmp_path, two_runs):
    out = tmp_path / "board"
    argv = ["leaderboard", str(two_runs["scripted"]), str(two_runs["scripted-fair"]), "-o", str(out),
            "--reference", "scripted", "--no-plots"]
    assert main(argv) == 0
    rows = {r["model"]: r for r in csv.DictReader(open(f"{out}.csv"))}
    base = _results(two_runs["scripted"])
    assert float(rows["scripted"]["gen_refusal_rate"]) == pytest.approx(base["metrics"]["gen_refusal_rate"]["value"])
    assert rows["scripted"]["gen_refusal_rate_p_adjusted"]  # the audit's Cochran's Q over the headline groups
    assert float(rows["scripted-fair"]["gen_refusal_rate_delta"]) < 0
    assert rows["scripted-fair"]["gen_explanation_drift_delta_significant"] == "True"
    md = open(f"{out}.md").read()
    assert "Generative audit of the same rows" in md and "| model | invalid rate | refusal rate |" in md
    assert "Δ gen_explanation_drift" in md



def test_paired_delta_uses_only_cases_both_runs_measure():
    """A case one run does not measure (NaN drift: no rationale, no second sample) is left out of
    both sides, so the paired difference compares the same cases (and says on how many)."""
    from benchmark.boards.check import PerCase, paired

    nan = np.nan

    def pc(drift):
        n = len(drift)
        return PerCase(cases=[f"c{i}" for i in range(n)], flip=np.zeros(n), delta=np.zeros(n), invalid=np.zeros(n),
                       decisions=None, generative={"gen_explanation_drift": np.asarray(drift, float)})

    # Case 0 is measured by the base only, case 1 by the candidate only. Unpaired means would give
    # 0.3 - (0.9 + 4 * 0.1) / 5 = 0.04; on the four cases both measure the difference is 0.2.
    base = pc([0.9, nan, 0.1, 0.1, 0.1, 0.1])
    cand = pc([nan, 0.3, 0.3, 0.3, 0.3, 0.3])
    [comp] = paired(base, cand, {"gen_explanation_drift": 0.0}, seed=0, n_boot=200, two_sided=True)
    assert comp.diff == pytest.approx(0.2)
    assert "paired on the 4 of 6 shared cases" in comp.note
