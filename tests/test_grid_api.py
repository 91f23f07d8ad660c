"""Grids in one command (each model loaded once), ad-hoc models from --model-args, and the Python API
(benchmark.api, re-exported at benchmark) including the README's notebook-style example."""

from __future__ import annotations

import json
import re
from pathlib import Path

import planted
import pytest

from benchmark.cli import main
from benchmark.registry import register, unregister

ROOT = Path(__file__).resolve().parent.parent


class CountingPlanted(planted.PlantedBackend):
    name = "counting-planted"
    loads: list[str] = []

    def __init__(self, spec, card=None, seed=0, quiet=True):
        super().__init__(spec, card, seed, quiet)
        CountingPlanted.loads.append(spec.name)

    @classmethod
    def fingerprint(cls, spec) -> str:  # two models with the same planted bias are still two models
        return super().fingerprint(spec) + ":" + spec.model


@pytest.fixture()
def grid_models(tmp_path, monkeypatch):
    register("backends", "counting-planted", CountingPlanted)
    monkeypatch.setattr(planted, "SHIFTS", {"race": {"Black": -0.15}})
    CountingPlanted.loads = []
    f = tmp_path / "models.yaml"
    f.write_text("models:\n  pa:\n    backend: counting-planted\n    model: a\n  pb:\n    backend: counting-planted\n    model: b\n")
    yield f
    unregister("backends", "counting-planted")


def test_grid_runs_every_cell_loading_each_model_once(grid_models, tmp_path, capsys):
    out = tmp_path / "runs"
    code = main(["run", "--model", "pa,pb", "--task", "qpain-demo", "--prompt-mode", "zero_shot,cot", "--limit", "2",
                 "--models-file", str(grid_models), "-o", str(out)])
    assert code == 0
    dirs = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert dirs == [f"{m}__qpain-demo__{mode}__seed0__limit2" for m in ("pa", "pb") for mode in ("cot", "zero_shot")]
    assert CountingPlanted.loads == ["pa", "pb"]  # once per model, not once per cell
    text = capsys.readouterr().out
    assert text.count("grid summary") == 1 and text.count("verdict: ") == 4


def test_grid_fails_fast_on_a_typo_before_running(grid_models, tmp_path, capsys):
    code = main(["run", "--model", "pa,pz", "--limit", "1", "--models-file", str(grid_models), "-o", str(tmp_path / "runs")])
    assert code == 2 and 'unknown model "pz"' in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and CountingPlanted.loads == []


def test_adhoc_model_from_model_args(tmp_path, tiny_llama_dir, capsys):
    out = tmp_path / "runs"
    code = main(["run", "--model", "hf", "--model-args", f"pretrained={tiny_llama_dir},chat_template=true", "--limit", "1",
                 "-o", str(out), "-q"])
    assert code == 0
    (run_dir,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert re.fullmatch(rf"hf-{re.escape(tiny_llama_dir.name)}-[0-9a-f]{{8}}__qpain-demo__zero_shot__seed0__limit1", run_dir.name)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["model"]["spec"]["model"] == str(tiny_llama_dir) and manifest["model"]["spec"]["chat_template"] is True
    # stable name: the same arguments give the same directory (resume); other arguments another one
    assert main(["run", "--model", "hf", "--model-args", f"pretrained={tiny_llama_dir},chat_template=true", "--limit", "1", "-o", str(out), "-q"]) == 0
    assert main(["run", "--model", "hf", "--model-args", f"pretrained={tiny_llama_dir},chat_template=false", "--limit", "1", "-o", str(out), "-q"]) == 0
    names = [p.name for p in out.iterdir() if not p.name.startswith(".")]
    assert len(names) == 2
    second = json.loads((out / sorted(set(names) - {run_dir.name})[0] / "manifest.json").read_text())
    assert second["model"]["fingerprint"] != manifest["model"]["fingerprint"]


@pytest.mark.parametrize("args, expect", [
    ("dtype=bfloat16", "needs pretrained="),
    ("pretrained=x,colour=blue", "unknown argument 'colour'"),
    ("pretrained", "KEY=VALUE"),
    ("pretrained=x,dtype=float8", "dtype"),
])
def test_adhoc_model_errors(args, expect, capsys):
    assert main(["run", "--model", "hf", "--model-args", args]) == 2
    err = capsys.readouterr().err
    assert expect in err and err.count("\n") == 1


def test_adhoc_llamacpp_and_openai_entries():
    from benchmark.config import adhoc_model

    g = adhoc_model("llamacpp", "model_path=/models/x/SmolLM2.Q4_1.gguf,n_ctx=2048")
    assert (g.model, g.gguf_file, g.extra) == ("/models/x", "SmolLM2.Q4_1.gguf", {"n_ctx": 2048})
    o = adhoc_model("openai", "base_url=http://h:8000/v1,model=meta/llama,top_logprobs=5")
    assert (o.base_url, o.model, o.extra["top_logprobs"]) == ("http://h:8000/v1", "meta/llama", 5)
    assert o.name.startswith("openai-llama-") and adhoc_model("openai", "model=meta/llama,base_url=http://h:8000/v1,top_logprobs=5").name == o.name


def test_api_results_frames(grid_models, tmp_path):
    import benchmark as fb

    res = fb.evaluate(model="pa", task="qpain-demo", limit=3, models_file=grid_models, output_dir=tmp_path / "runs")
    assert set(res.metrics.columns) >= {"question", "metric", "value", "ci_low", "ci_high", "n"}
    assert "cf_flip_rate" in set(res.metrics["metric"])
    g = res.groups
    assert {"question", "attribute", "group", "n_cases", "mean_outcome", "mean_outcome_ci_low"} <= set(g.columns)
    assert set(g[g.attribute == "race"]["group"]) == {"Asian", "Black", "Hispanic", "White"}
    r = res.requests
    assert len(r) == 3 * 8 and {"case_id", "variant", "option_logprobs"} <= set(r.columns)
    assert res.verdict.lines()[0].startswith("verdict: ")
    assert fb.load(res.run_dir).raw == res.raw
    from benchmark.errors import FairbenchError

    with pytest.raises(FairbenchError, match="limt"):
        fb.evaluate(model="pa", task="qpain-demo", limt=3, models_file=grid_models)
    board = fb.leaderboard([res], tmp_path / "boards" / "b", plots=False)
    assert list(board["model"]) == ["pa"]
    result, row, run = fb.check(tmp_path / "boards" / "b.csv", res, baseline_run=res.run_dir)
    assert not result.regressions


def test_readme_python_api_example_runs(grid_models, tmp_path, monkeypatch):
    """The documented "Python API" example (docs/api.md, moved there from the README), run as
    written (with the test models file and the planted backend in place of the embedded default model)."""
    text = (ROOT / "docs" / "api.md").read_text()
    block = re.search(r"# Python API.*?```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAIRBENCH_MODELS_FILE", str(grid_models))
    code = block.replace('model="smollm2-135m"', 'model="pa"').replace('"smollm2-135m"', '"pa"')
    namespace: dict = {}
    exec(compile(code, "docs/api.md", "exec"), namespace)  # noqa: S102 - the documented example
    assert namespace["res"].run_dir.is_dir()
