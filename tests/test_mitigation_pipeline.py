"""End to end with the tiny Llama: mitigate -> derived model registered -> audited on held-out cases
only, next to its base on the same cases."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmark.derived import derived_models_file


def _rows(run_dir: Path) -> dict:
    return {(r["case_id"], r["variant"]): r for r in map(json.loads, (run_dir / "requests.jsonl").read_text().splitlines())}


def _run(cli, capsys, *args) -> Path:
    assert cli("run", "-q", *args) == 0
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def _group_means(z: np.ndarray, g: np.ndarray) -> dict:
    return {a: z[g == a].mean(0) for a in sorted(set(g.tolist()))}


@pytest.mark.integration
def test_steering_pipeline(tmp_path, tiny_models_file, cli, capsys, monkeypatch):
    """mitigate -> derived models -> held-out audits; the installed LEACE hook moves the fit prompts'
    representations onto its target (equal group means); thin race x gender cells fall back to one
    attribute, and the fallback is recorded; the affirmative group is the one the data favours."""
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "steer.yaml"
    cfg.write_text("pca_dims: 4\nvariants: [optimal, leace, affirmative]\nmin_cell_size: 4\n")
    m = ["--models-file", str(tiny_models_file)]
    out = tmp_path / "artifact"
    assert cli("mitigate", "--method", "steering", "--model", "tiny", "--config", str(cfg), "-o", str(out), "-q", *m) == 0
    assert capsys.readouterr().out.split() == ["tiny+steering", "tiny+steering-leace", "tiny+steering-affirmative"]
    art = json.loads((out / "manifest.json").read_text())["artifact"]
    # 6 mitigation cases, one of them "No": its race x gender cells hold 1 prompt, its gender cells 4.
    assert art["grouping"]["used"] == ["gender"] and art["grouping"]["smallest_cell"] == 4 and art["grouping"]["fallback"]
    aff = art["variants"]["affirmative"]
    assert aff["advantaged"] == max(aff["positive_rates"], key=aff["positive_rates"].get)
    assert "ideal family" in yaml.safe_load(derived_models_file().read_text())["models"]["tiny+steering"]["description"]

    from safetensors.torch import load_file

    from benchmark.backends.hf import HFBackend
    from benchmark.cards import load_task
    from benchmark.config import load_models
    from benchmark.data.text import load_cases
    from benchmark.kinds.text.expand import expand
    from benchmark.kinds.text.prompts import build_requests
    from benchmark.mitigations.steering import _labels, representations

    card = load_task("qpain-demo")
    split = json.loads((out / "split.json").read_text())
    cases = [c for c in load_cases(card, None)[0] if c.case_id in set(split["mitigation_case_ids"])]
    q = card.questions[0]
    reqs = [r for r in build_requests(card, expand(cases, card.counterfactual, 0), "zero_shot", 0) if r.question_id == q.id]
    g = _labels(reqs, ["gender"])
    models = load_models(tiny_models_file)
    layer = json.loads((out / "steering" / "transform.json").read_text())["layer"]

    def z(name, variant):
        t = load_file(str(out / variant / "transform.safetensors"))
        be = HFBackend(models.get(name))
        x = representations(be, reqs, layer, 16)  # captured after the steering hook, if installed
        be.close()
        return (x - t["center"].double().numpy()) @ t["basis"].double().numpy()

    before, leace = z("tiny", "steering-leace"), z("tiny+steering-leace", "steering-leace")
    def spread(means):
        return max(np.abs(a - b).max() for a in means.values() for b in means.values())

    assert spread(_group_means(leace, g)) < 1e-3 * spread(_group_means(before, g)) + 1e-5
    # The optimal maps are gated by the Gaussian probe; on this random model the group is not encoded
    # (probe near chance), so their target is checked on data that encodes it
    # (test_mitigation_steering_math: test_probe_recovers_group_when_encoded and the known-answer tests).
    steered = _run(cli, capsys, "--model", "tiny+steering", *m)
    base = _run(cli, capsys, "--model", "tiny", "--cases-from", "tiny+steering", *m)
    rs, rb = (json.loads((d / "results.json").read_text())["run"] for d in (steered, base))
    assert rs["eval_split"] == rb["eval_split"] == "held-out"
    assert rs["eval_case_ids_sha256"] == rb["eval_case_ids_sha256"]
    rows_s, rows_b = _rows(steered), _rows(base)
    assert {c for c, _ in rows_s} == set(split["evaluation_case_ids"]) == {c for c, _ in rows_b}
    assert not {c for c, _ in rows_s} & set(split["mitigation_case_ids"])


def test_identity_steering_leaves_logprobs_unchanged(tmp_path, tiny_llama_dir):
    """The hook machinery alone (identity map) must not perturb the model."""
    import torch

    from benchmark.backends.hf import HFBackend
    from benchmark.backends.steering import install_steering, save_transform
    from benchmark.config import ModelSpec
    from benchmark.mitigations import gaussian as G
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
def test_simpo_distill_trains_on_the_audited_format(tmp_path, tiny_models_file, cli, capsys, monkeypatch):
    """The preference pairs are zero-shot choice answers: the prompt is the chat prompt the audit
    renders for that variant, the responses are the option continuations the audit scores (fails if
    simpo-distill trains on chain-of-thought generations again)."""
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "simpo.yaml"
    cfg.write_text("samples: 6\nvariants_per_case: 2\nmax_steps: 1\nbatch_size: 2\n")
    out = tmp_path / "artifact"
    m = ["--models-file", str(tiny_models_file)]
    assert cli("mitigate", "--method", "simpo-distill", "--model", "tiny", "--config", str(cfg), "-o", str(out), "-q", *m) == 0
    assert capsys.readouterr().out.split() == ["tiny+simpo-distill"]
    manifest = json.loads((out / "manifest.json").read_text())
    art, train = manifest["artifact"], manifest["artifact"]["training"]
    assert art["self_distillation"] is True and art["teacher"] == "tiny" and art["prompt_mode"] == "zero_shot"
    assert train["global_steps"] == 1 and train["bf16"] is False and train["gradient_checkpointing"] is False
    assert train["world_size"] == 1 and [p["rank"] for p in train["per_process"]] == [0]
    assert math.isfinite(train["train_loss"]) and all(h.get("grad_norm") is not None for h in train["log_history"][:-1])
    assert manifest["split"]["n_mitigation"] + manifest["split"]["n_evaluation"] == 12
    assert "self-distillation" in yaml.safe_load(derived_models_file().read_text())["models"]["tiny+simpo-distill"]["description"]
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["sim_chosen"] >= p["sim_rejected"] and p["chosen"] != p["rejected"] for p in pairs)
    split = json.loads((out / "split.json").read_text())
    assert {p["case_id"] for p in pairs} <= set(split["mitigation_case_ids"])
    # The audit of the base model on all cases: its stored rendered prompts and option tokens.
    audit = _run(cli, capsys, "--model", "tiny", *m)
    rows = {(r["case_id"], r["question_id"], json.dumps(r["attributes"], sort_keys=True)): r
            for r in map(json.loads, (audit / "requests.jsonl").read_text().splitlines())}
    from benchmark.backends.hf import HFBackend
    from benchmark.config import load_models

    be = HFBackend(load_models(tiny_models_file).get("tiny"))
    for p in pairs:
        row = rows[(p["case_id"], p["question_id"], json.dumps(p["attributes"], sort_keys=True))]
        assert p["prompt"] == row["rendered_prompt"]  # the audit's rendered chat prompt, character for character
        scored = {be.continuation(o): be._encode_option(o) for o in row["options"]}
        assert p["chosen"] in scored and p["rejected"] in scored
        prompt_ids = be.tokenizer(p["prompt"], add_special_tokens=False).input_ids
        for side in ("chosen", "rejected"):  # no token merges across the prompt/answer boundary
            full = be.tokenizer(p["prompt"] + p[side], add_special_tokens=False).input_ids
            assert full[: len(prompt_ids)] == prompt_ids and full[len(prompt_ids):] == scored[p[side]]
    from safetensors.torch import load_file

    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in weights.items())  # the step moved LoRA B off zero
    run = _run(cli, capsys, "--model", "tiny+simpo-distill", *m)
    assert json.loads((run / "results.json").read_text())["run"]["eval_split"] == "held-out"


def test_simpo_step_raises_chosen_over_rejected(tmp_path, tiny_models_file, monkeypatch):
    """SimPO training on (prompt, chosen, rejected) moves log P(chosen) - log P(rejected) up."""
    import torch
    from peft import PeftModel

    from benchmark.backends.hf import HFBackend
    from benchmark.config import load_models
    from benchmark.mitigations.base import Context
    from benchmark.mitigations.simpo_distill import SimPOConfig, train_simpo

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    spec = load_models(tiny_models_file).get("tiny")
    be = HFBackend(spec)
    prompts = [be.render(f"Patient D, case {i}, has severe pain. Would you offer morphine? Answer with Yes or No only.") for i in range(4)]
    pairs = [{"prompt": p, "chosen": be.continuation("No"), "rejected": be.continuation("Yes")} for p in prompts]

    def margin(model) -> float:
        no, yes = be._encode_option("No")[0], be._encode_option("Yes")[0]
        with torch.no_grad():
            out = [torch.log_softmax(model(torch.tensor([be._encode_prompt(p)])).logits[0, -1], -1) for p in prompts]
        return float(np.mean([float(lp[no] - lp[yes]) for lp in out]))

    before = margin(be.model)
    cfg = SimPOConfig(max_steps=4, batch_size=4, learning_rate=5e-3)
    log = train_simpo(be, pairs, cfg, Context(tmp_path, 0, None))
    assert log["global_steps"] == 4
    fresh = HFBackend(spec).model
    after = margin(PeftModel.from_pretrained(fresh, str(tmp_path / "adapter")).eval())
    assert after > before + 0.05, (before, after)


@pytest.mark.integration
def test_simpo_max_length_shorter_than_prompts_is_refused(tmp_path, tiny_models_file, cli, capsys, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    cfg = tmp_path / "simpo.yaml"
    cfg.write_text("samples: 6\nvariants_per_case: 2\nmax_steps: 1\nmax_length: 16\n")
    code = cli("mitigate", "--method", "simpo-distill", "--model", "tiny", "--config", str(cfg),
               "-o", str(tmp_path / "a"), "-q", "--models-file", str(tiny_models_file))
    err = capsys.readouterr().err
    assert code == 2 and "max_length 16" in err and "longest prompt" in err
