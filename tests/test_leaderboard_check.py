"""`fairbench score` (byte-identical re-scoring), `fairbench leaderboard` and `fairbench check`, on one
tiny-model run whose stored outputs the tests edit (no model is called after the first run)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmark.cli import main

RUN_ID = "tiny__qpain-demo__zero_shot__seed0__limit4"


def _tiny(tmp_path_factory, tiny_llama_dir, name: str, *args: str) -> Path:
    """One real run of the tiny model on the demo task (``args``: e.g. --limit 4); its run directory."""
    root = tmp_path_factory.mktemp(name)
    models = root / "models.yaml"
    models.write_text(f"models:\n  tiny:\n    backend: hf\n    model: {tiny_llama_dir}\n    chat_template: true\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAIRBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "fairbench-cache"))
        assert main(["run", "--model", "tiny", *args, "-o", str(root / "runs"), "--models-file", str(models), "-q"]) == 0
    return next((root / "runs").iterdir())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llama_dir) -> Path:
    """4 demo cases (32 requests): too few for the paired gate to detect anything (it says so)."""
    run = _tiny(tmp_path_factory, tiny_llama_dir, "lbrun", "--limit", "4")
    assert run.name == RUN_ID
    return run


@pytest.fixture(scope="module")
def tiny_run_all(tmp_path_factory, tiny_llama_dir) -> Path:
    """All 12 demo cases (96 requests): enough for a paired test to detect a planted difference."""
    return _tiny(tmp_path_factory, tiny_llama_dir, "lbrun12")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _set_logprobs(run_dir: Path, fn) -> None:
    """Edit the stored raw outputs (option log-likelihoods) of every request, then re-score."""
    path = run_dir / "requests.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    for r in rows:
        r["option_logprobs"] = fn(r)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    assert main(["score", str(run_dir), "-q"]) == 0


def _fair(row):  # every variant: the same answer with the same probability
    return [-0.5, -1.0]


def _biased(row):  # Black patients are refused, everyone else is treated
    return [-5.0, -0.01] if row["attributes"]["race"] == "Black" else [-0.5, -1.0]


def _edit_results(run_dir: Path, finished_at: float | None = None, **run) -> None:
    res = json.loads((run_dir / "results.json").read_text())
    res["run"].update(run)
    (run_dir / "results.json").write_text(json.dumps(res))
    if finished_at is not None:
        man = json.loads((run_dir / "manifest.json").read_text())
        man["finished_at"] = finished_at
        (run_dir / "manifest.json").write_text(json.dumps(man))


# ----- fairbench score -----

def test_score_is_byte_identical_and_calls_no_model(tiny_run, tmp_path, monkeypatch):
    run_dir = _copy(tiny_run, tmp_path / "r")
    before = {f: (run_dir / f).read_bytes() for f in ("results.json", "requests.jsonl")}

    def no_model(*a, **k):
        raise AssertionError("score must not load a model")

    monkeypatch.setattr("benchmark.backends.hf.HFBackend.__init__", no_model)
    assert main(["score", str(run_dir), "-q"]) == 0
    for name, data in before.items():
        assert (run_dir / name).read_bytes() == data, name


def test_score_recomputes_from_stored_outputs(tiny_run, tmp_path):
    run_dir = _copy(tiny_run, tmp_path / "r")
    _set_logprobs(run_dir, _biased)
    m = json.loads((run_dir / "results.json").read_text())["metrics"]
    assert m["cf_flip_rate"]["value"] == 1.0 and m["dp_gap"]["value"] == 1.0
    assert m["significance"]["dp_gap"]["test"] == "cochran_q"


# ----- fairbench leaderboard -----

def test_leaderboard_files_csv_and_markdown(tiny_run, tmp_path):
    out = tmp_path / "lb" / "demo"
    assert main(["leaderboard", str(tiny_run), "--output", str(out)]) == 0
    df = pd.read_csv(out.with_name("demo.csv"))
    assert len(df) == 1 and df.loc[0, "model"] == "tiny" and df.loc[0, "run_id"] == RUN_ID
    res = json.loads((tiny_run / "results.json").read_text())["metrics"]
    for metric in ("cf_flip_rate", "cf_mean_abs_delta", "dp_gap"):
        assert df.loc[0, metric] == pytest.approx(res[metric]["value"])
        assert df.loc[0, f"{metric}_ci_low"] == pytest.approx(res[metric]["ci_low"])
        assert df[f"{metric}_significant"].dtype == bool
    assert df.loc[0, "utility_metric"] == "accuracy" and df.loc[0, "n_cases"] == 4 and df.loc[0, "n_requests"] == 32
    groups = pd.read_csv(out.with_name("demo.groups.csv"))
    assert set(groups["attribute"]) == {"race", "gender", "intersection"} and len(groups) == 4 + 2 + 8
    md = out.with_name("demo.md").read_text()
    assert "| model | utility | cf_flip_rate | cf_mean_abs_delta | dp_gap | worst group | n | invalid rate |" in md
    assert "## Glossary" in md and "## Per-group detail" in md and str(tmp_path) not in md
    for png in ("demo.qpain-demo.zero_shot.groups.png", "demo.tradeoff.png"):
        assert f"]({png})" in md and out.with_name(png).read_bytes()[:4] == b"\x89PNG"


def test_leaderboard_newer_replaces_older_and_derived_follow_base(tiny_run, tmp_path):
    old = _copy(tiny_run, tmp_path / "old")
    new = _copy(tiny_run, tmp_path / "new")
    derived = _copy(tiny_run, tmp_path / "derived")
    other = _copy(tiny_run, tmp_path / "other")
    _edit_results(old, finished_at=1000.0)
    _edit_results(new, finished_at=2000.0, seed=7)
    _edit_results(derived, finished_at=1500.0, model="tiny+steer", base_model="tiny")
    _set_logprobs(other, _fair)
    _edit_results(other, finished_at=1500.0, model="aaa-fair")
    out = tmp_path / "lb" / "suite"
    assert main(["leaderboard", str(new), str(derived), "-o", str(out), "--no-plots"]) == 0
    assert main(["leaderboard", str(old), str(other), "-o", str(out), "--no-plots"]) == 0  # old must not win
    df = pd.read_csv(out.with_name("suite.csv"))
    assert list(df["model"]) == ["aaa-fair", "tiny", "tiny+steer"]  # fairest first; derived after base
    assert df.set_index("model").loc["tiny", "seed"] == 7
    assert "↳ tiny+steer" in out.with_name("suite.md").read_text()
    # a second suite lives side by side
    assert main(["leaderboard", str(old), "-o", str(tmp_path / "lb" / "other"), "--no-plots"]) == 0
    assert len(pd.read_csv(out.with_name("suite.csv"))) == 3 and len(pd.read_csv(out.with_name("other.csv"))) == 1


def test_leaderboard_concurrent_writers_keep_every_row(tiny_run, tmp_path):
    dirs = []
    for i in range(4):
        d = _copy(tiny_run, tmp_path / f"m{i}")
        _edit_results(d, model=f"model-{i}")
        dirs.append(d)
    out = tmp_path / "lb" / "race"
    code = "import sys; from pathlib import Path; from benchmark.boards.leaderboard import update; update([Path(sys.argv[1])], Path(sys.argv[2]), plots=False)"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(d), str(out)]) for d in dirs]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    df = pd.read_csv(out.with_name("race.csv"))
    assert sorted(df["model"]) == [f"model-{i}" for i in range(4)]
    assert len(pd.read_csv(out.with_name("race.groups.csv"))) == 4 * 14


def test_leaderboard_bad_input_is_a_usage_error(tmp_path, capsys):
    assert main(["leaderboard", str(tmp_path / "nope"), "-o", str(tmp_path / "x")]) == 2
    assert "results.json not found" in capsys.readouterr().err


# ----- fairbench check -----

@pytest.fixture()
def fair_and_biased(tiny_run_all, tmp_path):
    base = _copy(tiny_run_all, tmp_path / "runs" / "base")
    _set_logprobs(base, _fair)
    cand = _copy(tiny_run_all, tmp_path / "cand")
    _set_logprobs(cand, _biased)
    csv = tmp_path / "lb" / "base"
    assert main(["leaderboard", str(base), "-o", str(csv), "--no-plots"]) == 0
    return base, cand, csv.with_name("base.csv")


def test_check_passes_against_itself_paired_and_by_ci(fair_and_biased, capsys):
    base, _, csv = fair_and_biased
    assert main(["check", "--baseline", str(csv), "--candidate", str(base), "--runs-dir", str(base.parent)]) == 0
    assert "paired bootstrap over 12 common cases" in capsys.readouterr().out
    assert main(["check", "--baseline", str(csv), "--candidate", str(base), "--runs-dir", str(base / "elsewhere")]) == 0
    assert "95% CIs compared" in capsys.readouterr().out


def test_check_fails_on_planted_regression(fair_and_biased, capsys):
    base, cand, csv = fair_and_biased
    assert main(["check", "--baseline", str(csv), "--candidate", str(cand), "--baseline-model", "tiny", "--baseline-run", str(base)]) == 1
    out = capsys.readouterr().out
    assert "Fairness regressions" in out and "REGRESSED" in out and "paired bootstrap" in out
    # without the baseline's per-request data the CI comparison catches it too
    assert main(["check", "--baseline", str(csv), "--candidate", str(cand), "--runs-dir", str(cand / "none")]) == 1
    # a tolerance as large as the metric's range lets it pass
    tol = ["--max-increase", "cf_flip_rate=1", "--max-increase", "dp_gap=1", "--max-increase", "cf_mean_abs_delta=1"]
    assert main(["check", "--baseline", str(csv), "--candidate", str(cand), "--baseline-run", str(base), *tol]) == 0


def test_check_on_four_cases_is_inconclusive(tiny_run, tmp_path, capsys):
    """The same planted regression on the 4-case run: the paired gate cannot fail on 4 cases, and
    says INCONCLUSIVE (exit 0) rather than PASS."""
    base = _copy(tiny_run, tmp_path / "runs" / "base")
    _set_logprobs(base, _fair)
    cand = _copy(tiny_run, tmp_path / "cand")
    _set_logprobs(cand, _biased)
    csv = tmp_path / "lb" / "base"
    assert main(["leaderboard", str(base), "-o", str(csv), "--no-plots"]) == 0
    capsys.readouterr()
    assert main(["check", "--baseline", str(csv.with_name("base.csv")), "--candidate", str(cand), "--baseline-run", str(base)]) == 0
    out = capsys.readouterr().out
    assert "INCONCLUSIVE" in out and "PASS" not in out and "4 shared cases" in out


def test_paired_per_case_metrics_match_the_audit(fair_and_biased):
    from benchmark.boards.check import _reference_variant, load_rows, per_case
    import numpy as np

    _, cand, _ = fair_and_biased
    res = json.loads((cand / "results.json").read_text())
    rows = load_rows(cand, "treat")
    pc = per_case(rows, {(r["case_id"], r["variant"]) for r in rows}, _reference_variant(res, "treat"), binary=True)
    everyone = np.arange(len(pc.cases))
    for metric in ("cf_flip_rate", "cf_mean_abs_delta", "dp_gap"):
        assert pc.value(metric, everyone) == pytest.approx(res["metrics"][metric]["value"], abs=1e-6), metric
    assert pc.value("invalid_rate", everyone) == pytest.approx(res["metrics"]["invalid_rate_ci"]["value"])


@pytest.mark.parametrize("args, message", [
    (["--baseline", "missing.csv"], "not found"),
    (["--max-increase", "accuracy=0.1"], "expected METRIC=DELTA"),
    (["--max-increase", "dp_gap=lots"], "must be a number"),
    (["--baseline-model", "nobody"], "choose one with --baseline-model"),
])
def test_check_usage_errors_exit_2(fair_and_biased, tmp_path, capsys, args, message):
    base, _, csv = fair_and_biased
    argv = ["check", "--baseline", str(csv), "--candidate", str(base)]
    if args[0] == "--baseline":
        argv[2] = str(tmp_path / args[1])
        args = []
    assert main(argv + args) == 2
    assert message in capsys.readouterr().err


def test_leaderboard_never_loses_a_row_silently(tiny_run, tmp_path, capsys):
    """Issue 17: a run with a smaller --limit or another seed does not replace a full run of the same
    model and task unless --replace is given; every replaced or dropped run is printed."""
    full = _copy(tiny_run, tmp_path / "full")
    small = _copy(tiny_run, tmp_path / "small")
    seed = _copy(tiny_run, tmp_path / "seed")
    _edit_results(full, finished_at=1000.0, limit=None)
    _edit_results(small, finished_at=2000.0, limit=2)
    _edit_results(seed, finished_at=3000.0, limit=None, seed=5)
    out = tmp_path / "lb" / "keep"
    assert main(["leaderboard", str(full), "-o", str(out), "--no-plots"]) == 0
    capsys.readouterr()
    assert main(["leaderboard", str(small), str(seed), "-o", str(out), "--no-plots"]) == 0
    err = capsys.readouterr().err
    df = pd.read_csv(out.with_name("keep.csv"))
    assert len(df) == 1 and df.loc[0, "run_id"] == "full" and pd.isna(df.loc[0, "limit"]) and df.loc[0, "seed"] == 0
    dropped = [line for line in err.splitlines() if line.startswith("dropped as duplicate")]
    assert len(dropped) == 2 and "run small" in dropped[0] and "limit 2" in dropped[0] and "run seed" in dropped[1]
    assert all("--replace" in line for line in dropped)
    # a larger run of the same seed replaces the row, and says so
    _edit_results(small, finished_at=4000.0, limit=None)
    assert main(["leaderboard", str(small), "-o", str(out), "--no-plots"]) == 0
    assert "replaced" in capsys.readouterr().err
    assert pd.read_csv(out.with_name("keep.csv")).loc[0, "run_id"] == "small"
    # --replace: explicit, and printed
    assert main(["leaderboard", str(seed), "-o", str(out), "--no-plots", "--replace"]) == 0
    assert "replaced (--replace)" in capsys.readouterr().err
    df = pd.read_csv(out.with_name("keep.csv"))
    assert len(df) == 1 and df.loc[0, "run_id"] == "seed" and df.loc[0, "seed"] == 5


def test_a_sampled_run_never_replaces_a_full_run_silently(tiny_run, tmp_path, capsys):
    """A --sample N run (N cases drawn with the seed) counts as N cases: newer but smaller, it is dropped
    beside a full run and labelled "sample N"; a full run replaces a sampled one."""
    full = _copy(tiny_run, tmp_path / "full")
    sampled = _copy(tiny_run, tmp_path / "sampled")
    _edit_results(full, finished_at=1000.0, limit=None)
    _edit_results(sampled, finished_at=2000.0, limit=None, sample=2)
    out = tmp_path / "lb" / "s"
    assert main(["leaderboard", str(full), str(sampled), "-o", str(out), "--no-plots"]) == 0
    dropped = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dropped as duplicate")]
    assert len(dropped) == 1 and "run sampled" in dropped[0] and "sample 2" in dropped[0]
    assert pd.read_csv(out.with_name("s.csv")).loc[0, "run_id"] == "full"
    out2 = tmp_path / "lb" / "t"
    assert main(["leaderboard", str(sampled), "-o", str(out2), "--no-plots"]) == 0
    df = pd.read_csv(out2.with_name("t.csv"))
    assert df.loc[0, "sample"] == 2 and "| sample 2 |" in out2.with_name("t.md").read_text()
    _edit_results(full, finished_at=3000.0)
    assert main(["leaderboard", str(full), "-o", str(out2), "--no-plots"]) == 0
    assert "replaced" in capsys.readouterr().err and pd.read_csv(out2.with_name("t.csv")).loc[0, "run_id"] == "full"


def _add_question(run_dir: Path, qid: str, flip: float) -> None:
    """A second question without a reference answer (as treatment and triage have): a copy of the
    primary question's audit with another flip rate and no accuracy."""
    res = json.loads((run_dir / "results.json").read_text())
    cf = res["audits"]["counterfactual"]
    q = json.loads(json.dumps(cf["questions"][res["metrics"]["question"]]))
    q.pop("accuracy", None)
    q["cf_flip_rate"] = {"value": flip, "ci_low": 0.0, "ci_high": 1.0}
    cf["questions"][qid] = q
    (run_dir / "results.json").write_text(json.dumps(res))


def test_leaderboard_utility_says_no_reference_and_shows_any_question(tiny_run, tmp_path, capsys):
    run = _copy(tiny_run, tmp_path / "r")
    _add_question(run, "second", 0.125)
    out = tmp_path / "lb" / "q"
    assert main(["leaderboard", str(run), "-o", str(out), "--no-plots", "--question", "second"]) == 0
    df = pd.read_csv(out.with_name("q.csv"))
    assert df.loc[0, "question"] == "second" and df.loc[0, "cf_flip_rate"] == pytest.approx(0.125)
    assert pd.isna(df.loc[0, "utility_metric"]) and pd.isna(df.loc[0, "utility"])
    md = out.with_name("q.md").read_text()
    assert "| no reference |" in md and "Question `second`" in md
    # the primary question (with a reference) keeps its accuracy; one question per task and board
    assert main(["leaderboard", str(run), "-o", str(out), "--no-plots"]) == 2
    assert "question" in capsys.readouterr().err
    primary = tmp_path / "lb" / "p"
    assert main(["leaderboard", str(run), "-o", str(primary), "--no-plots"]) == 0
    assert pd.read_csv(primary.with_name("p.csv")).loc[0, "utility_metric"] == "accuracy"
    assert main(["leaderboard", str(run), "-o", str(primary), "--no-plots", "--question", "nope"]) == 2
    assert "no such question" in capsys.readouterr().err


def test_text_utility_is_not_looked_up_by_question_id():
    """Triage's question id is `agreement`: a metric of that name is not a utility measure."""
    from benchmark.boards.leaderboard import text_entry

    row = {"task": "triage", "prompt_mode": "zero_shot", "model": "m", "eval_split": "all", "kind": "text"}
    results = {"metrics": {"question": "agreement", "agreement": {"value": 3.0}}, "audits": {"counterfactual": {"questions": {}}}}
    text_entry(row, results)
    assert row["utility_metric"] == "" and row["utility"] is None


# ----- fairbench leaderboard --reference: paired Δ of derived rows against the base -----

def test_leaderboard_reference_deltas_flag_a_planted_difference_and_say_ns_otherwise(tiny_run_all, tiny_run, tmp_path):
    from statsmodels.stats.multitest import multipletests

    from benchmark.boards.check import versus_reference

    runs = tmp_path / "runs"
    base = _copy(tiny_run_all, runs / "base")
    planted = _copy(tiny_run_all, runs / "planted")
    same = _copy(tiny_run_all, runs / "same")
    _set_logprobs(base, _fair)
    _set_logprobs(planted, _biased)  # Black patients refused: every case flips, accuracy falls
    _set_logprobs(same, _fair)  # the same answers as the base: no difference
    _edit_results(base, model="tiny")
    _edit_results(planted, model="tiny+planted", base_model="tiny")
    _edit_results(same, model="tiny+same", base_model="tiny")
    out = tmp_path / "lb" / "mit"
    assert main(["leaderboard", str(base), str(planted), str(same), "-o", str(out), "--no-plots", "--reference", "tiny"]) == 0
    df = pd.read_csv(out.with_name("mit.csv")).set_index("model")
    assert df.loc["tiny", ["cf_flip_rate_delta", "accuracy_delta"]].isna().all()  # the reference has no Δ
    p = df.loc["tiny+planted"]
    assert p["cf_flip_rate_delta"] == pytest.approx(1.0) and p["dp_gap_delta"] == pytest.approx(1.0)
    assert p["accuracy_delta"] < 0 and p["accuracy_delta_ci_high"] < 0
    assert p["cf_flip_rate_delta_significant"] and p["dp_gap_delta_significant"] and p["accuracy_delta_significant"]
    s = df.loc["tiny+same"]
    for m in ("accuracy", "cf_flip_rate", "cf_mean_abs_delta", "dp_gap"):
        # No difference on any resample: an exact 0, no placeholder p = 1 in the family.
        assert s[f"{m}_delta"] == 0 and not s[f"{m}_delta_significant"] and pd.isna(s[f"{m}_delta_p_adjusted"])
    assert "+0.000 (no difference on any shared case)" in out.with_name("mit.md").read_text()
    # Holm over the row's tested metrics (all four here), as statsmodels computes it.
    comps = [c for c in versus_reference(base, planted).comparisons if c.p_value is not None]
    assert len(comps) == 4
    adjusted = multipletests([c.p_value for c in comps], method="holm")[1]
    smallest = min(comps, key=lambda c: c.p_value)
    assert p[f"{smallest.metric}_delta_p_adjusted"] == pytest.approx(4 * smallest.p_value, rel=1e-5)  # family of 4
    for c, adj in zip(comps, adjusted):
        assert p[f"{c.metric}_delta_p_adjusted"] == pytest.approx(adj, rel=1e-5)
    md = out.with_name("mit.md").read_text()
    assert "Paired differences against `tiny`" in md and "worse" in md
    planted_line = next(line for line in md.splitlines() if line.startswith("| tiny+planted |"))
    same_line = next(line for line in md.splitlines() if line.startswith("| tiny+same |"))
    assert planted_line.count("worse") == 4 and "(same on every resample) p=0.004 worse" in planted_line
    assert same_line.count("(no difference on any shared case)") == 4
    assert "Δ gen_" not in md and "Generative audit" not in md  # choice runs: no generative columns, not in the family
    # A board without the reference row refuses --reference with one line.
    assert main(["leaderboard", str(same), "-o", str(tmp_path / "lb" / "x"), "--no-plots", "--reference", "nope"]) == 2
    # On 4 cases even a difference in every case cannot be significant: the bootstrap p is floored at
    # 2 / 2^4, the smallest p an exact paired test on 4 cases gives (the bootstrap alone said 0.001).
    few = tmp_path / "few"
    b4, p4 = _copy(tiny_run, few / "b4"), _copy(tiny_run, few / "p4")
    _set_logprobs(b4, _fair)
    _set_logprobs(p4, _biased)
    flip = next(c for c in versus_reference(b4, p4).comparisons if c.metric == "cf_flip_rate")
    assert flip.diff == 1.0 and flip.p_value == pytest.approx(2 / 2**4) and not flip.significant


def test_rescoring_with_other_code_is_recorded_and_shown(tiny_run, tmp_path):
    """`fairbench score` with another commit than the run's: results record the scoring commit, and the
    board's commit column names both (model outputs of one, statistics of the other)."""
    run_dir = _copy(tiny_run, tmp_path / "r")
    man = json.loads((run_dir / "manifest.json").read_text())
    man["git"] = {"commit": "0123456789abcdef", "dirty": False}
    (run_dir / "manifest.json").write_text(json.dumps(man))
    assert main(["score", str(run_dir), "-q"]) == 0
    from benchmark.manifest import git_commit

    assert json.loads((run_dir / "results.json").read_text())["run"]["rescored"] == {"git": git_commit()}
    out = tmp_path / "lb" / "r"
    assert main(["leaderboard", str(run_dir), "-o", str(out), "--no-plots"]) == 0
    assert pd.read_csv(out.with_name("r.csv")).loc[0, "git_commit"].startswith("0123456789ab (scored ")


def test_paired_comparison_of_runs_sharing_one_case_is_not_a_test():
    """Two seeded subsets can share a single case (the HTML report compares every run with the first of
    its key): no resampling is possible, so the comparison has no p-value and says why, instead of
    failing the whole report (scipy's bootstrap raises on one observation)."""
    import numpy as np

    from benchmark.boards.check import PerCase, paired

    one = lambda f: PerCase(["c1"], np.array([f]), np.array([0.1]), np.array([0.0]), None)
    comps = paired(one(0.0), one(1.0), {"cf_flip_rate": 0.0}, seed=0, two_sided=True)
    assert comps[0].diff == 1.0 and comps[0].p_value is None and "too few" in comps[0].note


def test_gate_on_too_few_cases_is_inconclusive_not_a_pass(capsys):
    """Four cases that each regress: a bootstrap p of 1/2001 would fail the gate on noise-sized data, and a
    floored p cannot fall below alpha (1/16 > 0.05), so the gate cannot fail at all. It says so
    (INCONCLUSIVE) instead of PASS. With 12 cases the same per-case regression is detected."""
    import numpy as np
    from rich.console import Console

    from benchmark.boards.check import CheckResult, PerCase, paired, render

    def runs(n):  # the candidate flips in every case but the last, the baseline in none (the differences vary)
        mk = lambda f: PerCase([f"c{i}" for i in range(n)], f, np.full(n, 0.1), np.zeros(n), None)
        return mk(np.zeros(n)), mk(np.r_[np.ones(n - 1), 0.0])

    comps = paired(*runs(4), {"cf_flip_rate": 0.0}, seed=0)
    c = comps[0]
    assert c.diff == 0.75 and c.p_value == pytest.approx(1 / 16) and not c.regressed and not c.testable
    assert "4 shared cases" in c.note
    console = Console(record=True, width=200)
    render(CheckResult("paired", "test", comps), {"model": "b"}, {"model": "c", "task": "t", "prompt_mode": "zero_shot"}, console)
    out = console.export_text()
    assert "INCONCLUSIVE" in out and "PASS" not in out and "untestable" in out
    big = paired(*runs(12), {"cf_flip_rate": 0.0}, seed=0)[0]
    assert big.testable and big.regressed and big.p_value < 0.001
    # Two-sided (leaderboard Δ): floor 2 / 2^n, so 5 cases are not testable either.
    assert not paired(*runs(5), {"cf_flip_rate": 0.0}, seed=0, two_sided=True)[0].testable


def test_gate_fails_when_the_candidate_loses_a_group(fair_and_biased, tmp_path, capsys):
    """A candidate that never gives a valid answer for Black patients: flip rate and gaps computed from
    the other groups would look fairer and pass. They are undefined, and losing a group the baseline
    measured is a regression; invalid answers elsewhere are not."""
    base, _, csv = fair_and_biased
    cand = _copy(base, tmp_path / "silent")
    path = cand / "requests.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    for r in rows:
        if r["attributes"]["race"] == "Black":
            r["option_logprobs"], r["raw_output"] = None, "I cannot answer that."
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    assert main(["score", str(cand), "-q"]) == 0
    capsys.readouterr()
    assert main(["check", "--baseline", str(csv), "--candidate", str(cand), "--baseline-run", str(base)]) == 1
    out = capsys.readouterr().out
    assert "undefined: group(s) without valid answers (candidate: race=Black)" in out and "REGRESSED" in out


def test_identical_runs_give_no_placeholder_p_values():
    """Identical per-case values: the difference is exactly 0, and no p = 1 enters the Holm family."""
    import numpy as np

    from benchmark.boards.check import PerCase, paired

    rng = np.random.default_rng(0)
    flip = (rng.random(20) < 0.3).astype(float)
    pc = PerCase([f"c{i}" for i in range(20)], flip, rng.random(20), np.zeros(20), None)
    moved = PerCase(pc.cases, np.roll(flip, 1), pc.delta + 0.01 * rng.standard_normal(20), pc.invalid, None)
    comps = {c.metric: c for c in paired(pc, moved, {"cf_flip_rate": 0.0, "cf_mean_abs_delta": 0.0, "invalid_rate": 0.0}, seed=0)}
    inv = comps["invalid_rate"]
    assert inv.diff == 0.0 and inv.p_value is None and inv.p_adjusted is None and "no variation" in inv.note
    # The family has the two real tests only: Holm over 2, checked against statsmodels.
    from statsmodels.stats.multitest import multipletests

    raw = [comps["cf_flip_rate"].p_value, comps["cf_mean_abs_delta"].p_value]
    want = multipletests(raw, method="holm")[1]
    assert [comps["cf_flip_rate"].p_adjusted, comps["cf_mean_abs_delta"].p_adjusted] == pytest.approx(list(want), abs=1e-6)


def test_board_keeps_the_reason_an_estimate_has_no_interval(tiny_run, tmp_path):
    """Every variant answers alike in every case: the worst group's mean has no interval; the reason
    survives the CSV and is printed beside the value."""
    run = _copy(tiny_run, tmp_path / "flat")
    _set_logprobs(run, _fair)
    out = tmp_path / "lb" / "flat"
    assert main(["leaderboard", str(run), "-o", str(out), "--no-plots"]) == 0
    df = pd.read_csv(out.with_name("flat.csv"))
    assert df.loc[0, "worst_group_outcome_note"].startswith("no variation") and pd.isna(df.loc[0, "worst_group_outcome_ci_low"])
    line = next(x for x in out.with_name("flat.md").read_text().splitlines() if x.startswith("| tiny |"))
    assert "gender=man: 0.622 (no variation)" in line, line
    groups = pd.read_csv(out.with_name("flat.groups.csv"))
    assert groups["mean_outcome_note"].str.startswith("no variation").all()
    assert "| 0.622 (no variation) |" in out.with_name("flat.md").read_text()  # the per-group detail too
