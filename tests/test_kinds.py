"""One run path, two kinds: audits are plugins chosen by the card, images travel as content parts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import planted
from benchmark.cli import main
from benchmark.registry import register, unregister
from benchmark.requests import ImagePart, Request

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def planted_models(tmp_path, monkeypatch):
    register("backends", "planted", planted.PlantedBackend)
    monkeypatch.setattr(planted, "SHIFTS", {"race": {"Black": -0.3}})
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  planted:\n    backend: planted\n    model: none\n")
    yield models
    unregister("backends", "planted")


def _task(tmp_path, src: str, name: str, **update) -> Path:
    tasks = tmp_path / "tasks"
    shutil.copytree(ROOT / "tasks" / src, tasks / name)
    raw = yaml.safe_load((tasks / name / "task.yaml").read_text())
    raw.update({"name": name, **update})
    raw.setdefault("audit", {})["n_boot"] = 200
    (tasks / name / "task.yaml").write_text(yaml.safe_dump(raw))
    return tasks


def test_text_task_runs_the_group_audit_the_card_names(tmp_path, planted_models):
    tasks = _task(tmp_path, "qpain-demo", "both-audits", audits=["counterfactual", "group"])
    out = tmp_path / "runs"
    assert main(["run", "-m", "planted", "-t", "both-audits", "--models-file", str(planted_models),
                 "--tasks-dir", str(tasks), "-o", str(out), "-q"]) == 0
    results = json.loads((next(out.iterdir()) / "results.json").read_text())
    assert results["schema_version"] == 2 and results["kind"] == "text"
    assert set(results["audits"]) == {"counterfactual", "group"}
    treat = results["audits"]["group"]["endpoints"]["treat"]
    attrs = list(yaml.safe_load((tasks / "both-audits" / "task.yaml").read_text())["counterfactual"]["attributes"])
    assert set(treat["attributes"]) == {*attrs, "*".join(attrs)}  # each attribute and their intersection
    race = treat["attributes"]["race"]["groups"]
    # Q-Pain demo references are all "Yes": the group audit's TPR is accuracy; the planted shift
    # lowers P(yes) of Black variants, so their positive-decision rate is the lowest.
    assert min(race, key=lambda g: race[g]["pos_rate"]) == "Black"
    assert treat["n_patients"] == results["run"]["n_cases"]  # cases are the resampling unit
    # the counterfactual audit and the headline are unchanged by the extra audit
    assert "cf_flip_rate" in results["metrics"]


def test_an_audit_the_kind_cannot_feed_is_a_one_line_error(tmp_path, capsys):
    tasks = _task(tmp_path, "synth-xray", "synth-cf", audits=["counterfactual"])
    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump({"models": {"vit": {"backend": "classifier", "model": "scratch", "device": "cpu",
                                                          "extra": {"epochs": 1, "hidden_size": 16, "num_layers": 1, "num_heads": 2}}}}))
    code = main(["run", "-m", "vit", "-t", "synth-cf", "--models-file", str(models), "--tasks-dir", str(tasks),
                 "-o", str(tmp_path / "runs"), "--limit", "20", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "audit counterfactual needs rows" in err


def test_unknown_audit_in_a_card_is_a_one_line_error(tmp_path, planted_models, capsys):
    tasks = _task(tmp_path, "qpain-demo", "odd-audit", audits=["counterfactual", "nosuch"])
    code = main(["run", "-m", "planted", "-t", "odd-audit", "--models-file", str(planted_models),
                 "--tasks-dir", str(tasks), "-o", str(tmp_path / "runs"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "nosuch" in err


def test_image_content_parts_enter_the_request_key():
    grey = ImagePart("synth|test|1", lambda: np.zeros((4, 4)))
    other = ImagePart("synth|test|2", lambda: np.ones((4, 4)))
    base = dict(case_id="1", question_id="lesion", attributes={}, prompt="Lesion?", options=["Yes", "No"], method="choice")
    a, b, text = Request(**base, images=(grey,)), Request(**base, images=(other,)), Request(**base)
    assert a.key("m") != b.key("m") != text.key("m")
    assert a.as_dict()["images"] == ["synth|test|1"]  # the key of the pixels is stored, not the pixels
    assert grey.png_data_url().startswith("data:image/png;base64,")


def test_results_of_another_schema_are_a_one_line_error_that_score_repairs(tmp_path, planted_models, capsys):
    tasks = _task(tmp_path, "qpain-demo", "old-schema")
    out = tmp_path / "runs"
    assert main(["run", "-m", "planted", "-t", "old-schema", "--models-file", str(planted_models),
                 "--tasks-dir", str(tasks), "-o", str(out), "-q"]) == 0
    run_dir = next(out.iterdir())
    results = json.loads((run_dir / "results.json").read_text())
    old = {**{k: v for k, v in results.items() if k != "audits"}, "schema_version": 1, **results["audits"]}
    (run_dir / "results.json").write_text(json.dumps(old))  # the version-1 layout
    capsys.readouterr()
    board = tmp_path / "board"
    assert main(["leaderboard", str(run_dir), "-o", str(board), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "schema 1" in err and "fairbench score" in err
    assert main(["score", str(run_dir), "--tasks-dir", str(tasks), "-q"]) == 0  # no model needed
    assert main(["leaderboard", str(run_dir), "-o", str(board), "--no-plots"]) == 0


def test_a_gap_without_variation_is_never_printed_as_a_bare_zero():
    """A constant-decision model has dp_gap 0 with no interval: the board says why, not a confident 0."""
    from benchmark.boards.leaderboard import _est, _put

    row: dict = {}
    _put(row, "dp_gap", {"value": 0.0, "ci_low": None, "ci_high": None, "note": "no variation: every value is the same"})
    assert _est("dp_gap")(row) == "0.000 (no variation)"
    row = {}
    _put(row, "dp_gap", {"value": 0.2, "ci_low": 0.04, "ci_high": 0.36})
    assert _est("dp_gap")(row) == "0.200 [0.040, 0.360]" and "dp_gap_note" not in row
