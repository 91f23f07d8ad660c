"""simpo-distill ``mode: generate`` (paper 000's generative form): the student's k seeded samples,
pairs ranked by similarity to the teacher's generated text, skipped prompts counted, the mode check,
and the whole mitigate path on the tiny random model."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmark.derived import derived_models_file
from benchmark.requests import Result


def _explain_requests(n_variants: int = 2):
    from benchmark.cards import load_task
    from benchmark.data.text import load_cases
    from benchmark.kinds.text.expand import expand
    from benchmark.kinds.text.prompts import build_requests

    card = load_task("qpain-demo")
    cases = load_cases(card, None)[0]
    return [r for r in build_requests(card, expand(cases[:1], card.counterfactual, 0)[:n_variants], "explain", 0, temperature=1.0)
            if r.sample == 0]


def test_sample_texts_seeded_per_request(tiny_models_file):
    """k samples of one request come from one seeded draw: the same alone or beside other requests,
    the same on a rerun, k of them, and greedy requests are refused."""
    import dataclasses

    from benchmark.backends.hf import HFBackend
    from benchmark.config import load_models
    from benchmark.errors import FairbenchError

    be = HFBackend(load_models(tiny_models_file).get("tiny"))
    a, b = [dataclasses.replace(r, max_new_tokens=6) for r in _explain_requests(2)[:2]]
    alone = be.sample_texts([a], 3)
    assert len(alone) == 1 and len(alone[0]) == 3
    assert len(set(alone[0])) > 1  # a random model at temperature 1 does not repeat itself 3 times
    assert be.sample_texts([b, a], 3)[1] == alone[0] == be.sample_texts([a], 3)[0]
    assert be.sample_texts([b], 3)[0] != alone[0]
    with pytest.raises(FairbenchError, match="temperature > 0"):
        be.sample_texts([dataclasses.replace(a, temperature=0.0)], 2)


class _Teacher:
    def __init__(self, texts):
        self.texts, self.seen = texts, []

    def generate(self, requests):
        self.seen += requests
        return [Result(raw_output=self.texts.get((r.case_id, r.question_id), "teacher says yes")) for r in requests]


class _Student:
    """Plants the k samples of each prompt by (variant, question)."""

    def __init__(self, plant):
        self.plant, self.calls = plant, []

    def render(self, prompt):
        return f"<user>{prompt}<assistant>"

    def sample_texts(self, requests, k):
        self.calls.append((len(requests), k, {r.temperature for r in requests}, {r.max_new_tokens for r in requests}))
        return [list(self.plant(r, k)) for r in requests]


def _planted_embedder(monkeypatch, vectors: dict[str, np.ndarray]):
    from benchmark.backends import embedder

    def embed(texts, device="cpu"):
        return np.array([vectors[t] / np.linalg.norm(vectors[t]) for t in texts], dtype=np.float32).reshape(len(texts), -1)

    monkeypatch.setattr(embedder, "embed_texts", embed)


def test_generated_pairs_rank_by_similarity_and_count_skips(monkeypatch):
    """chosen = the sample whose (planted) embedding is nearest the teacher's text, rejected = the
    farthest, whatever their order among the samples; all-identical samples and all-equal
    similarities are counted and not trained on; the k samples use the config's temperature, k and
    max_new_tokens; the teacher sees neutral prompts, greedy."""
    from benchmark.cards import load_task
    from benchmark.data.text import load_cases
    from benchmark.mitigations.simpo_distill import SimPOConfig, build_generated_pairs

    card = load_task("qpain-demo")
    cases = load_cases(card, None)[0][:2]
    vectors = {"teacher says yes": np.array([1.0, 0, 0]), "near": np.array([0.9, 0.1, 0]),
               "mid": np.array([0.5, 0.5, 0]), "far": np.array([0, 0, 1.0]),
               "same": np.array([0.3, 0.3, 0.3]), "tie a": np.array([0, 1.0, 0]), "tie b": np.array([0, 0.6, 0.8])}
    _planted_embedder(monkeypatch, vectors)

    def plant(r, k):
        if r.attributes.get("race") == "Black" and r.question_id == "treat":
            return ["same"] * k  # no preference
        if r.attributes.get("race") == "White" and r.question_id == "treat":
            return ["tie a", "tie b", "tie a"]  # both at cosine 0 to the teacher: no order
        return ["mid", "far", "near"] if r.attributes.get("gender") == "man" else ["far", "near", "mid"]

    student, teacher = _Student(plant), _Teacher({})
    config = SimPOConfig(mode="generate", samples=3, temperature=0.8, max_new_tokens=12)
    pairs, info = build_generated_pairs(student, teacher, card, cases, "explain", config, 0)

    assert student.calls == [(info["n_prompts"], 3, {0.8}, {12})]
    assert all(r.temperature == 0.0 and r.max_new_tokens == 12 and r.attributes == {} for r in teacher.seen)
    assert all("[race]" not in r.prompt and "Black" not in r.prompt for r in teacher.seen)
    n_same = sum(r.attributes.get("race") == "Black" and r.question_id == "treat" for r in _all_prompts(card, cases))
    n_tie = sum(r.attributes.get("race") == "White" and r.question_id == "treat" for r in _all_prompts(card, cases))
    assert n_same > 0 and n_tie > 0
    assert info["n_identical_samples_prompts_skipped"] == n_same
    assert info["n_equal_similarity_prompts_skipped"] == n_tie
    assert len(pairs) == info["n_prompts"] - n_same - n_tie
    for p in pairs:
        assert (p["chosen"], p["rejected"]) == ("near", "far")
        assert p["sim_chosen"] == pytest.approx(max(p["similarities"])) and p["sim_rejected"] == pytest.approx(min(p["similarities"]))
        assert p["prompt"].startswith("<user>") and p["teacher_text"] == "teacher says yes"
        assert p["teacher_answer"] == ("Yes" if p["question_id"] == "treat" else None)  # parsed; None = no option named
        assert set(p["samples"]) == {"near", "far", "mid"}
    # "near" / "far" name no option: kept (the paper ranks by similarity alone) and counted.
    assert info["n_pairs_chosen_without_answer"] == info["n_pairs_rejected_without_answer"] == len(pairs)
    assert info["n_teacher_texts_without_answer"] == sum(1 for r in teacher.seen if r.question_id != "treat")


def _all_prompts(card, cases):
    from benchmark.kinds.text.expand import expand
    from benchmark.kinds.text.prompts import build_requests

    return [r for r in build_requests(card, expand(cases, card.counterfactual, 0), "explain", 0) if r.sample == 0]


def test_empty_teacher_text_is_counted_and_its_prompts_skipped(monkeypatch):
    from benchmark.cards import load_task
    from benchmark.data.text import load_cases
    from benchmark.mitigations.simpo_distill import SimPOConfig, build_generated_pairs

    card = load_task("qpain-demo")
    cases = load_cases(card, None)[0][:2]
    _planted_embedder(monkeypatch, {"teacher says yes": np.array([1.0, 0]), "a": np.array([1.0, 0.1]), "b": np.array([0, 1.0])})
    teacher = _Teacher({(cases[0].case_id, "treat"): "   "})
    student = _Student(lambda r, k: ["b", "a"])
    pairs, info = build_generated_pairs(student, teacher, card, cases, "explain", SimPOConfig(mode="generate", samples=2), 0)
    assert info["n_empty_teacher_texts_skipped"] == 1 and info["n_teacher_prompts"] == 2
    assert pairs and {p["case_id"] for p in pairs} == {cases[1].case_id}  # no student samples for case 0
    assert info["n_prompts"] == len(pairs) == len(_all_prompts(card, cases[1:]))
    assert all((p["chosen"], p["rejected"]) == ("a", "b") for p in pairs)


def test_generate_mode_refuses_a_choice_prompt_mode(tmp_path, tiny_models_file, cli, capsys):
    """One line, exit 2, and the earlier artifact in the output directory is left as it was."""
    cfg = tmp_path / "gen.yaml"
    cfg.write_text("mode: generate\nprompt_mode: zero_shot\nsamples: 2\nmax_steps: 1\n")
    out = tmp_path / "a"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    code = cli("mitigate", "--method", "simpo-distill", "--model", "tiny", "--config", str(cfg),
               "-o", str(out), "-q", "--models-file", str(tiny_models_file))
    err = capsys.readouterr().err
    assert code == 2
    assert "needs a generate prompt mode" in err and "'zero_shot'" in err and "cot, explain" in err
    assert len(err.strip().splitlines()) == 1
    assert (out / "manifest.json").read_text() == "{}"


def test_two_forms_get_two_artifact_directories():
    from benchmark.mitigations.simpo_distill import SimPOConfig, SimPODistill

    m = SimPODistill()
    assert m.artifact_name(SimPOConfig()) == "simpo-distill"
    assert m.artifact_name(SimPOConfig(mode="generate")) == "simpo-distill-generate"


@pytest.mark.integration
def test_simpo_generate_end_to_end(tmp_path, tiny_models_file, cli, capsys, monkeypatch):
    """mitigate mode: generate on the tiny model: pairs are the student's generated texts for the
    audit's explain prompts, training runs its steps, and the derived model is registered under its
    own name with the form in its description (beside the choice form's)."""
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "gen.yaml"
    cfg.write_text("mode: generate\nsamples: 3\nvariants_per_case: 1\nmax_new_tokens: 6\nmax_steps: 2\nbatch_size: 2\n")
    out = tmp_path / "artifact"
    m = ["--models-file", str(tiny_models_file)]
    assert cli("mitigate", "--method", "simpo-distill", "--model", "tiny", "--config", str(cfg), "--prompt-mode", "explain",
               "-o", str(out), "-q", *m) == 0
    assert capsys.readouterr().out.split() == ["tiny+simpo-distill-generate"]
    manifest = json.loads((out / "manifest.json").read_text())
    art = manifest["artifact"]
    assert art["form"] == "generate" and art["prompt_mode"] == "explain" and art["self_distillation"] is True
    assert art["training"]["global_steps"] == 2 and art["sampling"]["samples"] == 3 and art["sampling"]["max_new_tokens"] == 6
    entry = yaml.safe_load(derived_models_file().read_text())["models"]["tiny+simpo-distill-generate"]
    assert "generative form (prompt mode explain" in entry["description"] and "self-distillation" in entry["description"]
    assert Path(entry["adapter"]) == (out / "adapter").resolve()

    from benchmark.backends.hf import HFBackend
    from benchmark.cards import load_task
    from benchmark.config import load_models
    from benchmark.data.text import load_cases
    from benchmark.kinds.text.expand import expand
    from benchmark.kinds.text.prompts import build_requests

    card = load_task("qpain-demo")
    split = json.loads((out / "split.json").read_text())
    cases = [c for c in load_cases(card, None)[0] if c.case_id in set(split["mitigation_case_ids"])]
    be = HFBackend(load_models(tiny_models_file).get("tiny"))
    rendered = {be.render(r.prompt) for r in build_requests(card, expand(cases, card.counterfactual, 0), "explain", 0)}
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert pairs and len(pairs) + art["n_identical_samples_prompts_skipped"] + art["n_equal_similarity_prompts_skipped"] == art["n_prompts"]
    for p in pairs:
        assert p["prompt"] in rendered  # the audit's explain prompt, as the audit renders it
        assert p["chosen"] in p["samples"] and p["rejected"] in p["samples"] and p["chosen"] != p["rejected"]
        assert p["sim_chosen"] > p["sim_rejected"]
