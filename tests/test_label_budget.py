"""Label budget (``--label-fraction``): the stratified, seeded, nested train subsample; its place in the
run identity; bad input; and the label-budget board with a fraction axis."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from benchmark.cards import load_task
from benchmark.cards.image import ImagingTaskCard
from benchmark.data.cases import LoadReport
from benchmark.data.image.budget import strata, subsample
from benchmark.data.image.synth import load_synth_xray
from benchmark.errors import FairbenchError
from benchmark.spec import RunSpec


def _card(n=400):
    return ImagingTaskCard(
        name="synth-tiny", kind="imaging", loader="synth_xray", label_type="binary", labels=["lesion"], image_size=16,
        split_fractions={"train": 0.5, "val": 0.25, "test": 0.25},
        loader_options={"n": n, "size": 16}, audit={"min_group_size": 5, "n_boot": 100},
    )


@pytest.fixture(scope="module")
def train():
    card = _card()
    return card, load_synth_xray(card, None, LoadReport()).split("train")


def test_subsample_is_stratified_by_label_and_primary_attribute(train):
    card, ds = train
    names = strata(ds, card)
    assert set(names) == {"label=0|sex=female", "label=1|sex=female", "label=0|sex=male", "label=1|sex=male"}
    sub, rep = subsample(ds, card, 0.3, seed=0)
    sub_names = strata(sub, card)
    for s in set(names):
        n = int((names == s).sum())
        assert int((sub_names == s).sum()) == rep["strata"][s]["n"] == int(np.floor(0.3 * n + 0.5))
        assert rep["strata"][s]["n_full"] == n
    assert rep["n_train"] == len(sub) == sum(v["n"] for v in rep["strata"].values()) and rep["n_train_full"] == len(ds)
    # a plain random 30% would not hit every stratum's count exactly; the composition is the split's
    full_share = np.mean(ds.frame["lesion"].to_numpy() == 1)
    assert abs(np.mean(sub.frame["lesion"].to_numpy() == 1) - full_share) < 0.01


def test_subsample_is_seeded_and_nested(train):
    card, ds = train
    ids = lambda f, seed: set(subsample(ds, card, f, seed)[0].frame["id"])  # noqa: E731
    assert ids(0.25, 3) == ids(0.25, 3)  # same seed, same images
    assert ids(0.25, 3) != ids(0.25, 4)  # another seed, another draw
    assert ids(0.1, 3) <= ids(0.25, 3) <= ids(0.5, 3) <= ids(1.0, 3) == set(ds.frame["id"])  # nested within a seed
    # independent of the file's row order (rows are drawn in id order)
    shuffled = type(ds)(ds.frame.sample(frac=1.0, random_state=1).reset_index(drop=True), ds.label_type, ds.labels, ds.reader)
    assert set(subsample(shuffled, card, 0.25, 3)[0].frame["id"]) == ids(0.25, 3)


def test_an_empty_stratum_is_refused(train):
    card, ds = train
    with pytest.raises(FairbenchError, match="leaves training stratum .* empty"):
        subsample(ds, card, 0.001, seed=0)


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), "abc", True])
def test_bad_fractions_are_refused(bad):
    with pytest.raises(FairbenchError, match="--label-fraction"):
        RunSpec(label_fraction=bad)


def test_fraction_is_part_of_the_run_id_and_one_is_no_flag():
    assert RunSpec(label_fraction=1.0) == RunSpec(label_fraction=None)
    assert RunSpec(label_fraction=1).run_id("image") == RunSpec().run_id("image")
    assert RunSpec(label_fraction=0.25).run_id("image").endswith("__frac0.25")


def test_prepare_subsamples_train_only(tmp_path, env):
    from benchmark.backends.image.classifier import ClassifierBackend
    from benchmark.config import ModelSpec
    from benchmark.kinds.image.kind import ImageKind

    card = load_task("synth-mini", tmp_path / "tasks")
    spec_m = ModelSpec(name="vit-t", backend="classifier", model="scratch", extra={"image_size": 16})
    kind = ImageKind(card)
    full = kind.prepare(RunSpec(task=card.name), spec_m, None, ClassifierBackend)
    part = kind.prepare(RunSpec(task=card.name, label_fraction=0.5), spec_m, None, ClassifierBackend)
    # validation and test: the same images, the same requests
    assert [r.case_id for r in part.requests] == [r.case_id for r in full.requests]
    assert part.fit_data[1].frame["id"].tolist() == full.fit_data[1].frame["id"].tolist()
    assert set(part.fit_data[0].frame["id"]) < set(full.fit_data[0].frame["id"])
    assert part.fit_identity != full.fit_identity  # so the request keys and the model differ
    assert part.run_info["label_budget"]["fraction"] == 0.5 and "label_budget" not in full.run_info
    assert part.manifest_data["label_budget"]["strata"] == part.run_info["label_budget"]["strata"]

    class Frozen(ClassifierBackend):
        trains = False

    with pytest.raises(FairbenchError, match="not trained by the run"):
        kind.prepare(RunSpec(task=card.name, label_fraction=0.5), spec_m, None, Frozen)


@pytest.fixture()
def env(tmp_path):
    models = tmp_path / "models.yaml"
    extra = {"image_size": 16, "patch_size": 8, "hidden_size": 16, "num_layers": 1, "num_heads": 2, "channels": 1, "epochs": 1, "batch_size": 32}
    models.write_text(yaml.safe_dump({"models": {
        "vit-test": {"backend": "classifier", "model": "scratch", "extra": extra},
        "vit-test+reweighting": {"backend": "mitigated-classifier", "model": "scratch", "base": "vit-test",
                                 "extra": {**extra, "recipe": {"method": "reweighting", "sample_weight": "group_label"}}}}}))
    tasks = tmp_path / "tasks"
    (tasks / "synth-mini").mkdir(parents=True)
    card = yaml.safe_load(open(load_task("synth-xray").directory / "task.yaml"))
    card.update({"name": "synth-mini", "image_size": 16})
    card["loader_options"].update({"n": 200, "size": 16})
    card["audit"].update({"n_boot": 100, "attributes": ["sex"], "min_group_size": 5})
    (tasks / "synth-mini" / "task.yaml").write_text(yaml.safe_dump(card))
    return ["--models-file", str(models), "--tasks-dir", str(tasks)]


def test_run_records_the_budget_and_recomputes_at_another_fraction(tmp_path, env, cli):
    out = tmp_path / "runs"
    common = ["run", "-m", "vit-test", "-t", "synth-mini", *env, "-o", str(out), "-q", "--cache-dir", str(tmp_path / "cache")]
    assert cli(*common, "--label-fraction", "0.5,1") == 0
    half, full = out / "vit-test__synth-mini__image__seed0__frac0.5", out / "vit-test__synth-mini__image__seed0"
    m_half, m_full = (json.loads((d / "manifest.json").read_text()) for d in (half, full))
    # the full-data run (fraction 1) shares nothing with the 0.5 run: its requests are computed, not reused
    assert m_half["timing"]["n_computed"] > 0 and m_full["timing"]["n_computed"] == m_full["timing"]["n_requests"]
    assert m_full["timing"]["n_reused"] == 0 and m_full["label_fraction"] is None and m_half["label_fraction"] == 0.5
    r_half = json.loads((half / "results.json").read_text())
    budget = r_half["run"]["label_budget"]
    assert r_half["run"]["label_fraction"] == 0.5 and budget["n_train"] == sum(v["n"] for v in budget["strata"].values())
    assert budget["n_train"] < budget["n_train_full"] == m_full["data"]["n_images"]["train"]
    # the test split is the same whatever the fraction
    assert r_half["n_test"] == json.loads((full / "results.json").read_text())["n_test"]


def test_fraction_one_gives_the_same_result_as_no_flag(tmp_path, env, cli):
    base = ["run", "-m", "vit-test", "-t", "synth-mini", *env, "-q", "--no-cache"]
    assert cli(*base, "-o", str(tmp_path / "a")) == 0
    assert cli(*base, "-o", str(tmp_path / "b"), "--label-fraction", "1.0") == 0
    (a,), (b,) = list((tmp_path / "a").iterdir()), list((tmp_path / "b").iterdir())
    assert a.name == b.name  # the same run identity
    assert (a / "results.json").read_bytes() == (b / "results.json").read_bytes()


def test_mitigated_classifier_trains_on_the_budget(tmp_path, env, cli):
    out = tmp_path / "runs"
    assert cli("run", "-m", "vit-test+reweighting", "-t", "synth-mini", *env, "-o", str(out), "-q", "--no-cache",
               "--label-fraction", "0.5") == 0
    (d,) = list(out.iterdir())
    assert d.name.endswith("__frac0.5")
    training = json.loads((d / "model" / "training.json").read_text())
    assert training["recipe"]["sample_weight"] == "group_label"
    assert json.loads((d / "results.json").read_text())["run"]["label_budget"]["fraction"] == 0.5


@pytest.mark.parametrize("args, match", [
    (["--label-fraction", "0"], "--label-fraction"),
    (["--label-fraction", "1.5"], "--label-fraction"),
    (["--label-fraction", "0.5,x"], "--label-fraction"),
    (["--label-fraction", "0.0001"], "empty"),
])
def test_bad_input_exits_2(tmp_path, env, cli, capsys, args, match):
    assert cli("run", "-m", "vit-test", "-t", "synth-mini", *env, "-o", str(tmp_path), "-q", *args) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


def test_text_task_exits_2(tmp_path, cli, capsys):
    assert cli("run", "-m", "smollm2-135m", "-t", "qpain-demo", "-o", str(tmp_path), "-q", "--label-fraction", "0.5") == 2
    assert "text tasks have no training split" in capsys.readouterr().err


# ----- the board -----

def _fake(root, model, fraction, per_seed):
    """A `run --seeds N --label-fraction F` directory: per-seed results with chosen metrics, and its summary."""
    from benchmark.seeds import summarize
    from benchmark.store import dumps

    dirs, results = [], []
    for seed, metrics in enumerate(per_seed):
        d = root / f"{model}__f{fraction}__seed{seed}"
        d.mkdir(parents=True)
        run = {"model": model, "task": "synth-xray", "seed": seed, "base_model": None if "+" not in model else model.split("+")[0]}
        if fraction != 1.0:
            run.update(label_fraction=fraction, label_budget={"n_train": int(1000 * fraction), "strata": {"label=1|sex=female": {"n": 7}}})
        r = {"schema_version": 2, "kind": "imaging", "run": run, "n_test": 100, "metrics": {k: {"value": v} for k, v in metrics.items()}}
        (d / "results.json").write_text(dumps(r))
        dirs.append(d)
        results.append(r)
    out = root / f"{model}__f{fraction}__seeds"
    out.mkdir()
    (out / "summary.json").write_text(dumps(summarize(results, dirs)))
    return out


def _metrics(auc, eod):
    return {"auc": auc, "accuracy": auc - 0.1, "eod": eod, "auc_gap": eod / 2, "underdiag_gap": eod}


def test_budget_board_pairs_by_fraction_and_draws_a_fraction_axis(tmp_path, cli):
    from benchmark.boards import budget

    noise = [0.0, 0.01, -0.01, 0.02, -0.005]
    dirs = []
    for f in (0.25, 1.0):
        erm = [_metrics(0.9 - 0.2 * (1 - f) + e, 0.1 + 0.1 * (1 - f) + e) for e in noise]
        rw = [_metrics(m["auc"] - 0.001 * (i % 2), m["eod"] - 0.05 + 0.002 * i) for i, m in enumerate(erm)]
        dirs += [_fake(tmp_path, "vit-tiny", f, erm), _fake(tmp_path, "vit-tiny+reweighting", f, rw)]
    assert budget.is_budget(dirs)
    rows = {(r["model"], r["label_fraction"]): r for r in budget.build(dirs, "vit-tiny")}
    assert rows[("vit-tiny", 1.0)]["vs"] is None
    assert rows[("vit-tiny", 0.25)]["vs"] == "vit-tiny @ 1"
    assert rows[("vit-tiny+reweighting", 0.25)]["vs"] == "vit-tiny @ 0.25"
    rw = rows[("vit-tiny+reweighting", 0.25)]
    assert rw["eod_diff"] == pytest.approx(-0.05 + 0.002 * 2, abs=1e-9) and rw["eod_p_holm"] < 0.05
    # the MDE: TTestPower's d_z for 5 seeds (1.68) x the SD of the per-seed differences
    d = np.array([-0.05 + 0.002 * i for i in range(5)])
    assert rw["eod_mde80"] == pytest.approx(1.682 * d.std(ddof=1), rel=1e-3)
    erm_small = rows[("vit-tiny", 0.25)]
    assert erm_small["auc_diff"] == pytest.approx(-0.15) and erm_small["n_train"] == 250
    # identical per-seed differences: no test, no MDE (never a placeholder p)
    assert erm_small["auc_p"] is None and "no variation" in erm_small["auc_test_note"] and erm_small["auc_mde80"] is None

    out = tmp_path / "boards" / "label-budget"
    assert cli("leaderboard", *map(str, dirs), "-o", str(out), "--reference", "vit-tiny") == 0
    for ext in ("md", "csv", "png", "svg"):
        assert (out.parent / f"label-budget.{ext}").is_file()
    md = (out.parent / "label-budget.md").read_text()
    assert "| `vit-tiny+reweighting` | 0.25 | 250 | `vit-tiny @ 0.25` |" in md and "MDE" in md
    svg = (out.parent / "label-budget.svg").read_text()
    assert "label fraction" in svg and "underdiag_gap" in svg
    back = budget.read(out.parent / "label-budget.csv")
    assert sorted(r["label_fraction"] for r in back) == [0.25, 0.25, 1.0, 1.0]


def test_budget_board_needs_the_reference_at_each_fraction(tmp_path):
    from benchmark.boards import budget

    m = [_metrics(0.9, 0.1), _metrics(0.91, 0.12)]
    dirs = [_fake(tmp_path, "vit-tiny", 1.0, m), _fake(tmp_path, "vit-tiny+reweighting", 0.5, m)]
    with pytest.raises(FairbenchError, match="no 'vit-tiny' row at the same fraction"):
        budget.build(dirs, "vit-tiny")
