"""Boards read one results schema for every kind: a leaderboard holding a text run and an imaging run,
`fairbench check` gating imaging runs (paired over patients, and by CIs), the terminal report of both
kinds, and no import circle among the board modules. Real runs through the CLI: a tiny random Llama on
4 demo vignettes and a tiny scratch ViT on synth-xray; the imaging candidate's regression is planted by
editing its stored probabilities for one sex and re-scoring (no model)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from benchmark.cli import main

ROOT = Path(__file__).resolve().parent.parent
VIT = {"backend": "classifier", "model": "scratch", "extra": {
    "image_size": 32, "patch_size": 8, "hidden_size": 16, "num_layers": 1, "num_heads": 2, "channels": 1,
    "epochs": 1, "batch_size": 32}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama_dir) -> dict[str, Path]:
    """One text run (tiny Llama, qpain-demo, 4 cases) and one imaging run (scratch ViT, synth-xray,
    100 test images: both sexes above the card's min_group_size, so the gaps are defined)."""
    root = tmp_path_factory.mktemp("kinds")
    models = root / "models.yaml"
    models.write_text(yaml.safe_dump({"models": {
        "tiny": {"backend": "hf", "model": str(tiny_llama_dir), "chat_template": True},
        "vit-test": VIT,
    }}))
    out = root / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAIRBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "fairbench-cache"))
        assert main(["run", "--model", "tiny", "--limit", "4", "-o", str(out), "--models-file", str(models), "-q"]) == 0
        assert main(["run", "--model", "vit-test", "--task", "synth-xray", "--limit", "100", "--models-file", str(models),
                     "-o", str(out), "-q"]) == 0
    found = {json.loads((d / "results.json").read_text())["kind"]: d for d in out.iterdir()}
    assert set(found) == {"text", "imaging"}
    res = json.loads((found["imaging"] / "results.json").read_text())
    assert res["metrics"]["dp_gap"]["value"] is not None, "both sexes need >= min_group_size test images"
    return found


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _plant_gap(src: Path, dst: Path) -> Path:
    """A copy of an imaging run whose female test images all get the decision the males mostly do not
    get (P = 0 or 1), re-scored from the edited requests.jsonl: a much larger dp_gap and eod."""
    shutil.copytree(src, dst)
    groups = _results(dst)["audits"]["group"]["endpoints"]["lesion"]["attributes"]["sex"]["groups"]
    p = 0.0 if groups["male"]["pos_rate"] >= 0.5 else 1.0
    path = dst / "requests.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    for r in rows:
        if r["split"] == "test" and r["sex"] == "female":
            r["probs"] = [p] * len(r["probs"])
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    assert main(["score", str(dst), "-q"]) == 0
    return dst


# ----- one leaderboard, two kinds -----

TEXT_ONLY = ["cf_flip_rate", "cf_mean_abs_delta", "worst_group_outcome"]
IMAGING_ONLY = ["auc", "eod", "auc_gap", "worst_group_auc", "es_auc", "ece_gap", "underdiag_gap"]


def test_one_leaderboard_holds_a_text_and_an_imaging_run(runs, tmp_path):
    out = tmp_path / "lb" / "mixed"
    assert main(["leaderboard", str(runs["text"]), str(runs["imaging"]), "-o", str(out)]) == 0
    raw = out.with_name("mixed.csv").read_text()
    df = pd.read_csv(out.with_name("mixed.csv")).set_index("kind")
    assert sorted(df.index) == ["imaging", "text"]
    text, img = df.loc["text"], df.loc["imaging"]
    # columns that do not apply to a row's kind are present and empty
    for col in TEXT_ONLY + [f"{m}_ci_low" for m in TEXT_ONLY]:
        assert col in df.columns and pd.isna(img[col]), col
    for col in IMAGING_ONLY + [f"{m}_ci_high" for m in IMAGING_ONLY]:
        assert col in df.columns and pd.isna(text[col]), col
        assert not pd.isna(img[col]), col
    assert ",," in raw  # empty cells, not missing columns: every line has the same number of fields
    assert len({line.count(",") for line in raw.splitlines()}) == 1
    # imaging values and CIs come from results["metrics"]
    m = _results(runs["imaging"])["metrics"]
    for name in IMAGING_ONLY + ["dp_gap", "accuracy"]:
        assert img[name] == pytest.approx(m[name]["value"], abs=1e-6), name
        assert img[f"{name}_ci_low"] == pytest.approx(m[name]["ci_low"], abs=1e-6), name
    assert img["utility_metric"] == "auc" and img["utility"] == pytest.approx(m["auc"]["value"], abs=1e-6)
    assert img["prompt_mode"] == "image" and img["attribute"] == "sex" and img["invalid_rate"] == 0
    assert text["utility_metric"] == "accuracy" and not pd.isna(text["cf_mean_abs_delta"])
    # per-group rows of the imaging run: the primary endpoint by the primary attribute
    groups = pd.read_csv(out.with_name("mixed.groups.csv"))
    ig = groups[groups["kind"] == "imaging"].set_index("group")
    audit = _results(runs["imaging"])["audits"]["group"]["endpoints"]["lesion"]["attributes"]["sex"]["groups"]
    assert sorted(ig.index) == ["female", "male"] and set(ig["attribute"]) == {"sex"}
    for g, v in audit.items():
        assert ig.loc[g, "n_rows"] == v["n"] and ig.loc[g, "auc"] == pytest.approx(v["auc"], abs=1e-6)
        assert ig.loc[g, "tpr"] == pytest.approx(v["tpr"], abs=1e-6) and pd.isna(ig.loc[g, "mean_outcome"])
    tg = groups[groups["kind"] == "text"]
    assert len(tg) == 4 + 2 + 8 and tg["auc"].isna().all() and tg["mean_outcome"].notna().all()
    md = out.with_name("mixed.md").read_text()
    assert "| model | utility | cf_flip_rate | cf_mean_abs_delta | dp_gap | worst group | n | invalid rate |" in md
    assert "| model | utility | dp_gap | eod | auc_gap | ece_gap | underdiag_gap | worst group | n | invalid rate |" in md
    for png in ("mixed.synth-xray.image.groups.png", "mixed.qpain-demo.zero_shot.groups.png", "mixed.tradeoff.png"):
        assert f"]({png})" in md and out.with_name(png).read_bytes()[:4] == b"\x89PNG"
    # merging again (read back from the CSV) keeps both rows and their kinds; sorting by an imaging metric works
    assert main(["leaderboard", str(runs["imaging"]), "-o", str(out), "--sort-by", "eod", "--no-plots"]) == 0
    again = pd.read_csv(out.with_name("mixed.csv"))
    assert sorted(again["kind"]) == ["imaging", "text"] and len(pd.read_csv(out.with_name("mixed.groups.csv"))) == len(groups)


def test_concurrent_writers_of_both_kinds_keep_every_row(runs, tmp_path):
    out = tmp_path / "lb" / "race"
    code = ("import sys; from pathlib import Path; from benchmark.boards.leaderboard import update; "
            "update([Path(sys.argv[1])], Path(sys.argv[2]), plots=False)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(d), str(out)]) for d in (runs["text"], runs["imaging"])]
    assert all(p.wait(timeout=180) == 0 for p in procs)
    assert sorted(pd.read_csv(out.with_name("race.csv"))["kind"]) == ["imaging", "text"]


# ----- fairbench check on imaging runs -----

@pytest.fixture(scope="module")
def imaging_board(runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("imgcheck")
    base = runs["imaging"]
    cand = _plant_gap(base, root / "cand")
    csv = root / "lb" / "base"
    assert main(["leaderboard", str(base), "-o", str(csv), "--no-plots"]) == 0
    return base, cand, csv.with_name("base.csv")


def test_imaging_check_passes_for_the_same_run(imaging_board, capsys):
    base, _, csv = imaging_board
    assert main(["check", "--baseline", str(csv), "--candidate", str(base), "--baseline-run", str(base)]) == 0
    out = capsys.readouterr().out
    assert "paired bootstrap over 100 common test patients" in out and "PASS" in out
    for name in ("dp_gap", "eod", "auc_gap", "ece_gap", "underdiag_gap"):
        assert name in out
    assert "cf_flip_rate" not in out  # the imaging gate, not the text one
    assert main(["check", "--baseline", str(csv), "--candidate", str(base), "--runs-dir", str(base / "nowhere")]) == 0
    assert "95% CIs compared" in capsys.readouterr().out


def test_imaging_check_fails_on_planted_gap(imaging_board, capsys):
    base, cand, csv = imaging_board
    m = _results(cand)["metrics"]
    assert m["dp_gap"]["value"] > _results(base)["metrics"]["dp_gap"]["value"] + 0.15
    assert main(["check", "--baseline", str(csv), "--candidate", str(cand), "--baseline-run", str(base)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSED" in out and "paired bootstrap" in out and "FAIL" in out
    # without the baseline's per-request data, the CI comparison
    assert main(["check", "--baseline", str(csv), "--candidate", str(cand), "--runs-dir", str(cand / "none")]) == 1
    assert "95% CIs compared" in capsys.readouterr().out
    # imaging metric names are accepted as tolerances; as large as their range lets it pass
    tol = [x for name in ("dp_gap", "eod", "auc_gap", "ece_gap", "underdiag_gap", "invalid_rate")
           for x in ("--max-increase", f"{name}=1")]
    assert main(["check", "--baseline", str(csv), "--candidate", str(cand), "--baseline-run", str(base), *tol]) == 0
    # ... and text metric names are not, for an imaging candidate
    assert main(["check", "--baseline", str(csv), "--candidate", str(cand), "--max-increase", "cf_flip_rate=0.1"]) == 2
    assert "expected METRIC=DELTA" in capsys.readouterr().err


def test_imaging_check_fails_when_a_group_loses_its_valid_answers(imaging_board, tmp_path, capsys):
    """Every female test image without a valid prediction: gaps from the male group alone would be 0
    and pass. They are undefined, and losing a group the baseline measured fails the gate."""
    base, _, csv = imaging_board
    cand = tmp_path / "silent"
    shutil.copytree(base, cand)
    path = cand / "requests.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    for r in rows:
        if r["split"] == "test" and r["sex"] == "female":
            r["probs"] = None
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    assert main(["score", str(cand), "-q"]) == 0
    capsys.readouterr()
    assert main(["check", "--baseline", str(csv), "--candidate", str(cand), "--baseline-run", str(base)]) == 1
    out = capsys.readouterr().out
    assert "undefined: group(s) without valid answers (candidate: sex=female)" in out and "FAIL" in out


def test_paired_per_patient_metrics_match_the_audit(imaging_board):
    from benchmark.boards.check import imaging_frame, per_patient
    from benchmark.cards import load_task

    _, cand, _ = imaging_board
    card = load_task("synth-xray")
    frame = imaging_frame(cand, card)
    _, pp, n_images = per_patient(frame, frame, card, "lesion", "sex")
    m = _results(cand)["metrics"]
    everyone = np.arange(len(pp.cases))
    assert n_images == 100
    for name in ("dp_gap", "eod", "auc_gap", "ece_gap", "underdiag_gap"):
        assert pp.value(name, everyone) == pytest.approx(m[name]["value"], abs=1e-5), name
    assert pp.value("invalid_rate", everyone) == pytest.approx(m["invalid_rate"])


# ----- terminal report and imports -----

def test_terminal_report_of_both_kinds(runs):
    from rich.console import Console

    from benchmark.boards.terminal import print_results

    for kind, needle in (("text", "counterfactual metrics"), ("imaging", "fairness metrics, 95% CI")):
        console = Console(record=True, width=200)
        print_results(_results(runs[kind]), runs[kind], console)
        text = console.export_text()
        assert needle in text and "run directory:" in text, kind
    assert not (ROOT / "benchmark" / "boards" / "terminal_image.py").exists()


def test_no_import_circle_in_boards():
    tool = ROOT.parent / "shared" / "tools" / "imports.py"  # the project's shared checker, where present
    if tool.is_file():
        out = subprocess.run([sys.executable, str(tool), str(ROOT / "benchmark")], capture_output=True, text=True, check=True)
        cycles = json.loads(out.stdout)["cycles"]
        assert not [c for c in cycles if any("boards" in str(m) for m in c)], cycles
    # and independently of the tool: no board module imports a sibling that imports it back
    import ast

    boards = ROOT / "benchmark" / "boards"
    edges = {}
    for f in boards.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module} if node.module else {a.name for a in node.names}
        edges[f.stem] = {d.split(".")[0] for d in deps}

    def reaches(a, b, seen=()):
        return any(d == b or (d not in seen and reaches(d, b, (*seen, d))) for d in edges.get(a, ()))

    assert not [m for m in edges if reaches(m, m)], edges


# ----- multi-seed summaries and boards read the same schema -----

def _seeds_dir(root: Path, run_dir: Path, model: str, seeds=(0, 1)) -> Path:
    from benchmark.seeds import summarize
    from benchmark.store import dumps

    dirs, results = [], []
    for seed in seeds:
        d = root / f"{model}__seed{seed}"
        shutil.copytree(run_dir, d)
        res = _results(d)
        res["run"].update(model=model, seed=seed)
        (d / "results.json").write_text(dumps(res))
        dirs.append(d)
        results.append(res)
    out = root / f"{model}__seeds"
    out.mkdir()
    (out / "summary.json").write_text(dumps(summarize(results, dirs)))
    return out


@pytest.mark.parametrize("kind, mode, metric", [("imaging", "image", "auc"), ("text", "zero_shot", "cf_mean_abs_delta")])
def test_seeds_summary_and_board_take_kind_and_mode_from_the_runs(runs, tmp_path, kind, mode, metric):
    ref = _seeds_dir(tmp_path, runs[kind], "ref")
    other = _seeds_dir(tmp_path, runs[kind], "other")
    summary = json.loads((ref / "summary.json").read_text())
    assert summary["prompt_mode"] == mode and summary["run_kind"] == kind
    if kind == "imaging":  # per-seed group tests read results["audits"]["group"]
        assert "lesion/sex/auc: female vs male" in {t["target"] for t in summary["tests"]}
    out = tmp_path / "lb" / "seeds"
    assert main(["leaderboard", str(ref), str(other), "-o", str(out), "--reference", "ref"]) == 0
    df = pd.read_csv(out.with_suffix(".csv")).set_index("model")
    assert set(df["kind"]) == {kind} and set(df["prompt_mode"]) == {mode}
    assert df.loc["ref", metric] == pytest.approx(_results(runs[kind])["metrics"][metric]["value"], abs=1e-6)


def test_score_of_a_seeds_dir_rescores_every_seed_and_the_summary(runs, tmp_path, capsys):
    """`fairbench score SEEDS_DIR` recomputes each seed's run from its stored outputs and rewrites the
    summary, also after the directories were moved together (summary.json records absolute paths)."""
    (tmp_path / "a").mkdir()
    seeds = _seeds_dir(tmp_path / "a", runs["imaging"], "m")
    before = json.loads((seeds / "summary.json").read_text())["metrics"]["dp_gap"]["mean"]
    _plant_gap(tmp_path / "a" / "m__seed1", tmp_path / "planted")  # the planted copy's requests, rescored
    shutil.copy(tmp_path / "planted" / "requests.jsonl", tmp_path / "a" / "m__seed1" / "requests.jsonl")
    for seed in (0, 1):
        man = tmp_path / "a" / f"m__seed{seed}" / "manifest.json"
        man.write_text(json.dumps({**json.loads(man.read_text()), "git": {"commit": "0" * 40, "dirty": False}}))
    moved = tmp_path / "b"
    (tmp_path / "a").rename(moved)
    assert main(["score", str(moved / "m__seeds"), "-q"]) == 0
    summary = json.loads((moved / "m__seeds" / "summary.json").read_text())
    seed1 = _results(moved / "m__seed1")["metrics"]["dp_gap"]["value"]
    assert summary["metrics"]["dp_gap"]["values"][1] == pytest.approx(seed1) and summary["metrics"]["dp_gap"]["mean"] > before
    # Runs made by another commit: the summary (and so the board) names the commit that scored them.
    from benchmark.manifest import git_commit

    assert summary["rescored"] == {"git": git_commit()}
    shutil.rmtree(moved / "m__seed0")
    assert main(["score", str(moved / "m__seeds"), "-q"]) == 2
    assert "m__seed0 not found" in capsys.readouterr().err
