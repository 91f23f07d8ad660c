"""Issue 23, `fairbench power`: the planted-bias generator has the task's design, power grows with the
planted effect, the MDE lies where the simulated power crosses 80%, calibration recovers the noise of
a run, and usage errors are one line with exit 2. Few simulations (seconds); the docs/power.md table
was made with more."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.audits import power
from benchmark.cards import load_task
from benchmark.cli import main


@pytest.fixture(scope="module")
def demo():
    return power.design(load_task("qpain-demo"), 12)


def test_generator_has_the_task_design(demo):
    df = power.planted_frame(demo, 0.1, np.random.default_rng(0))
    assert len(df) == 12 * 8 and df["case_id"].nunique() == 12 and df["variant"].nunique() == 8
    shift = df[df["race"] == "Asian"]["outcome"].mean() - df[df["race"] == "White"]["outcome"].mean()
    assert shift == pytest.approx(0.1, abs=0.03)
    pairs = power.design(load_task("diversitymedqa"), 40)
    dq = power.planted_frame(pairs, 0.0, np.random.default_rng(0))
    assert len(dq) == 80 and dq["correct"].notna().all()


def test_power_grows_with_the_effect_and_the_mde_is_where_it_crosses_80_percent(demo):
    null = power.power_at(demo, 0.0, 6, seed=1)
    big = power.power_at(demo, 0.3, 6, seed=1)
    name = "treat: contrast race=Asian - White"
    assert null[name] <= 1 / 6 and big[name] == 1.0
    res = power.mde(demo, 6, seed=1, grid=(0.02, 0.08, 0.32))
    m = res[name]["mde"]
    curve = dict(res[name]["curve"])
    assert m is not None and 0.0 < m <= 0.32
    below = [e for e, p in curve.items() if p < power.POWER]
    assert all(e < m for e in below)  # the MDE is above every grid effect with power < 80%


def test_calibration_recovers_the_noise_of_a_run(demo):
    df = power.planted_frame(power.Design(demo.card, 200, "race", "Asian", case_sd=0.1, request_sd=0.03), 0.0, np.random.default_rng(2))
    rows = [{"case_id": r.case_id, "question_id": r.question_id, "scored": {"valid": True, "outcome": r.outcome}} for r in df.itertuples()]
    d = power.calibrate(power.design(demo.card, 12), rows, "synthetic")
    assert d.case_sd == pytest.approx(0.1, rel=0.15) and d.request_sd == pytest.approx(0.03, rel=0.1)


@pytest.mark.parametrize("argv, fragment", [
    (["power", "qpain-demo", "--sims", "1"], "--sims 1"),
    (["power", "qpain-demo", "--effect", "1.5"], "--effect 1.5"),
    (["power", "synth-xray"], "imaging task"),
    (["power", "qpain-demo", "--cases", "1"], "--cases 1"),
    (["power", "nope"], 'unknown task "nope"'),
    (["power", "qpain-demo", "--model", "m", "--run", "x"], "--model and --run"),
    (["power", "qpain-demo", "--model", "none-such"], "no run of model none-such"),
    (["power", "qpain-demo", "--effect", "nan"], "--effect nan"),
    (["power"], "task"),
    (["power", "qpain-demo", "--sims", "many"], "--sims"),
    (["power", "qpain-demo", "--run", "no-such-dir"], "no-such-dir"),
])
def test_usage_errors_are_one_line_exit_2(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and fragment in err and "\n" not in err, err


def test_power_command_prints_a_row_per_metric(capsys):
    assert main(["power", "qpain-demo", "--effect", "0.2", "--sims", "3"]) == 0
    out = capsys.readouterr().out
    for metric in ("contrast race=Asian - White", "outcome test", "flip rate", "dp_gap"):
        assert metric in out
