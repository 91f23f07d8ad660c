"""End to end with the tiny Llama: mitigate -> derived model registered -> audited on held-out cases
only, next to its base on the same cases."""

import json
import math
from pathlib import Path

import numpy as np
import pytest


def _rows(run_dir: Path) -> dict:
    return {(r["case_id"], r["variant"]): r for r in map(json.loads, (run_dir / "requests.jsonl").read_text().splitlines())}


def _run(cli, capsys, *args) -> Path:
    assert cli("run", "-q", *args) == 0
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.integration
def test_steering_pipeline(tmp_path, tiny_models_file, cli, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "steer.yaml"
    cfg.write_text("pca_dims: 4\nvariants: [optimal, leace]\n")
    m = ["--models-file", str(tiny_models_file)]
    assert cli("mitigate", "--method", "steering", "--model", "tiny", "--config", str(cfg), "-q", *m) == 0
    assert capsys.readouterr().out.split() == ["tiny+steering", "tiny+steering-leace"]
    steered = _run(cli, capsys, "--model", "tiny+steering", *m)
    base = _run(cli, capsys, "--model", "tiny", "--cases-from", "tiny+steering", *m)
    rs, rb = (json.loads((d / "results.json").read_text())["run"] for d in (steered, base))
    assert rs["eval_split"] == rb["eval_split"] == "held-out"
    assert rs["eval_case_ids_sha256"] == rb["eval_case_ids_sha256"]
    split_file = json.loads(Path(json.loads((steered / "manifest.json").read_text())["model"]["spec"]["eval_cases"]).read_text())
    rows_s, rows_b = _rows(steered), _rows(base)
    assert {c for c, _ in rows_s} == set(split_file["evaluation_case_ids"]) == {c for c, _ in rows_b}
    assert not {c for c, _ in rows_s} & set(split_file["mitigation_case_ids"])
    diff = [np.abs(np.array(rows_s[k]["option_logprobs"]) - np.array(rows_b[k]["option_logprobs"])).max() for k in rows_b]
    assert max(diff) > 1e-4  # the hook changed the model's answers


def test_identity_steering_leaves_logprobs_unchanged(tmp_path, tiny_llama_dir):
    """The hook machinery alone (identity map) must not perturb the model."""
    import torch

    from benchmark.backends.hf import HFBackend
    from benchmark.config import ModelSpec
    from benchmark.mitigations import gaussian as G
    from benchmark.backends.steering import install_steering, save_transform
    from benchmark.requests import Request

    spec = ModelSpec(name="t", backend="hf", model=str(tiny_llama_dir), chat_template=True)
    be = HFBackend(spec)
    req = [Request("c", "q", {}, "Patient D has pain. Morphine?", ["Yes", "No"], "choice")]
    before = be.score_choices(req)[0].option_logprobs
    d, k = be.model.config.hidden_size, 3
    ident = G.Transform([G.Component("a", np.eye(k), np.zeros(k), np.zeros(k), np.eye(k), 0.0),
                         G.Component("b", np.eye(k), np.zeros(k), np.ones(k), np.eye(k), 0.0)])
    save_transform(tmp_path / "s", np.eye(d)[:, :k], np.zeros(d), ident, {"layer": 1})
    handle = install_steering(be.model, tmp_path / "s")
    assert be.score_choices(req)[0].option_logprobs == pytest.approx(before, abs=1e-5)
    handle.remove()
    shift = G.Transform([G.Component("a", np.eye(k), np.full(k, 5.0), np.zeros(k), np.eye(k), 0.0)])
    save_transform(tmp_path / "s2", np.eye(d)[:, :k], np.zeros(d), shift, {"layer": 1})
    install_steering(be.model, tmp_path / "s2")
    assert be.score_choices(req)[0].option_logprobs != pytest.approx(before, abs=1e-3)
    assert torch.is_tensor(next(be.model.parameters()))


@pytest.mark.integration
def test_simpo_distill_one_step(tmp_path, tiny_models_file, cli, capsys, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "simpo.yaml"
    cfg.write_text("samples: 2\nmax_new_tokens: 6\nvariants_per_case: 1\nmax_steps: 1\nbatch_size: 2\n")
    out = tmp_path / "artifact"
    m = ["--models-file", str(tiny_models_file)]
    assert cli("mitigate", "--method", "simpo-distill", "--model", "tiny", "--config", str(cfg), "-o", str(out), "-q", *m) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    train = manifest["artifact"]["training"]
    assert train["global_steps"] == 1 and train["bf16"] is False and train["gradient_checkpointing"] is False
    # max_length fits the longest prompt + answer, so no answer is truncated away (NaN losses otherwise).
    assert math.isfinite(train["train_loss"]) and all(h.get("grad_norm") is not None for h in train["log_history"][:-1])
    assert manifest["split"]["n_mitigation"] + manifest["split"]["n_evaluation"] == 12
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["sim_chosen"] >= p["sim_rejected"] and p["chosen"] != p["rejected"] for p in pairs)
    split = json.loads((out / "split.json").read_text())
    assert {p["case_id"] for p in pairs} <= set(split["mitigation_case_ids"])
    from safetensors.torch import load_file

    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in weights.items())  # the step moved LoRA B off zero
    run = _run(cli, capsys, "--model", "tiny+simpo-distill", *m)
    assert json.loads((run / "results.json").read_text())["run"]["eval_split"] == "held-out"


@pytest.mark.integration
def test_simpo_max_length_shorter_than_prompts_is_refused(tmp_path, tiny_models_file, cli, capsys, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    cfg = tmp_path / "simpo.yaml"
    cfg.write_text("samples: 2\nmax_new_tokens: 4\nvariants_per_case: 1\nmax_steps: 1\nmax_length: 16\n")
    code = cli("mitigate", "--method", "simpo-distill", "--model", "tiny", "--config", str(cfg),
               "-o", str(tmp_path / "a"), "-q", "--models-file", str(tiny_models_file))
    err = capsys.readouterr().err
    assert code == 2 and "max_length 16" in err and "longest prompt" in err
