"""The embedded default model end to end on a small slice (GGUF -> converted cache -> audit)."""

import json

import pytest

from benchmark.cli import main
from benchmark.config import load_models
from benchmark.paths import cache_dir

pytestmark = pytest.mark.integration


def test_default_run_on_a_slice(tmp_path, capsys):
    spec = load_models().get("smollm2-135m")
    try:
        spec.resolved_model_path()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"embedded model not installed: {exc}")
    assert main(["run", "--limit", "2", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mean outcome by group" in out and "cf_flip_rate" in out
    run_dir = tmp_path / "smollm2-135m__qpain-demo__zero_shot__seed0__limit2"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["n_requests"] == 16 and results["invalid_rate"] == 0
    groups = results["audits"]["counterfactual"]["questions"]["treat"]["attributes"]["race"]["groups"]
    for g in groups.values():
        assert 0 < g["mean_outcome"]["value"] < 1
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["timing"]["backend"]["device"] == "cpu"
    assert manifest["timing"]["backend"]["dtype"] == "float32"
    # The GGUF was converted once into a safetensors cache without the quantisation flag.
    converted = list((cache_dir() / "converted").glob("*/config.json"))
    assert converted and "quantization_config" not in json.loads(converted[0].read_text())
    rows = [json.loads(x) for x in (run_dir / "requests.jsonl").read_text().splitlines()]
    assert all(r["rendered_prompt"].startswith("<|im_start|>system") for r in rows)
