"""End to end on the tiny model: files written, rows complete, results reproducible."""

import json

from benchmark.cli import main


def test_run_writes_three_files(tmp_path, tiny_models_file, capsys):
    code = main(["run", "--model", "tiny", "--limit", "2", "--output-dir", str(tmp_path), "--models-file", str(tiny_models_file), "--quiet"])
    assert code == 0
    run_dir = tmp_path / "tiny__qpain-demo__zero_shot__seed0__limit2"
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("verdict: ") and out[-1] == str(run_dir)  # --quiet: the verdict, then the run directory
    rows = [json.loads(x) for x in (run_dir / "requests.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 8
    assert {r["variant"] for r in rows} == {f"race={r}|gender={g}" for r in ["Asian", "Black", "Hispanic", "White"] for g in ["man", "woman"]}
    for r in rows:
        assert "[" not in r["prompt"] and "Patient D" not in r["prompt"]
        assert r["rendered_prompt"].startswith("<|im_start|>user")
        assert len(r["option_logprobs"]) == 2
        assert abs(sum(r["scored"]["probs"]) - 1) < 1e-6
    results = json.loads((run_dir / "results.json").read_text())
    q = results["audits"]["counterfactual"]["questions"]["treat"]
    assert set(q["attributes"]) == {"race", "gender", "intersection"}
    assert q["n_rows"] == 16 and results["metrics"]["cf_flip_rate"]["n"] == 2
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["model"]["fingerprint"] and manifest["data"]["files"]["vignettes.csv"]
    assert manifest["packages"]["torch"] and "commit" in manifest["git"]


def test_same_seed_same_results(tmp_path, tiny_models_file):
    outs = []
    for d in ("a", "b"):
        assert main(["run", "--model", "tiny", "--limit", "2", "--seed", "3", "--output-dir", str(tmp_path / d), "--models-file", str(tiny_models_file), "-q"]) == 0
        outs.append((tmp_path / d / "tiny__qpain-demo__zero_shot__seed3__limit2" / "results.json").read_bytes())
    assert outs[0] == outs[1]
