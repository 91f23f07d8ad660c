"""The embedded SmolLM2-135M GGUF (run by llama.cpp: sampled generation with the hf backend took about
80 s per 160-token answer on the shared 2 cores, docs/generative.md) in the free-text "explain" mode on
a slice, with sampling, so that the generative audit has its noise floor (the real MiniLM embedder)."""

import json

import pytest

from benchmark.cli import main
from benchmark.config import load_models

pytestmark = pytest.mark.integration


def test_explain_mode_with_noise_floor(tmp_path):
    pytest.importorskip("llama_cpp")
    spec = load_models().get("smollm2-135m-llamacpp")
    try:
        spec.resolved_model_path()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"embedded model not installed: {exc}")
    from benchmark.registry import _entry_points, register

    if "generative" not in _entry_points("audits"):  # installed metadata older than the entry point
        from benchmark.audits.generative import GenerativeAudit

        register("audits", "generative", GenerativeAudit)
    assert main(["run", "--model", "smollm2-135m-llamacpp", "--prompt-mode", "explain", "--limit", "2", "--temperature", "0.7", "-o", str(tmp_path), "-q"]) == 0
    run_dir = tmp_path / "smollm2-135m-llamacpp__qpain-demo__explain__seed0__limit2__t0.7"
    res = json.loads((run_dir / "results.json").read_text())
    assert res["n_requests"] == 2 * 8 * 2 and res["run"]["sampling"]["samples"] == 2
    gen = res["audits"]["generative"]["questions"]["treat"]
    for name in ("invalid_rate", "refusal_rate", "demographic_mention_rate"):
        assert 0 <= gen[name]["value"] <= 1
    # Real generations differ between seeded samples: the floor is measured and positive.
    assert gen["drift_noise_floor"]["value"] > 0 and gen["drift_noise_floor"]["n"] == 2
    assert gen["drift_excess"]["value"] is not None
    targets = {t["target"] for t in res["audits"]["counterfactual"]["tests"]}
    assert "treat/intersection/drift_excess" in targets and "treat/race/refusal" in targets
