"""The generative counterfactual audit on the full run path, with a scripted generate backend and a
deterministic stand-in for the MiniLM embedder (no model is built; seconds).

The scripted backend plants, per variant: refusals for race=Black in half the cases, a gender mention
for gender=woman, and an explanation that depends on race (drift above the sampling noise), while the
two seeded samples of a variant differ by one filler word only (the noise floor)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmark.audits.generative import GenerativeAudit
from benchmark.backends.base import Backend
from benchmark.cli import main
from benchmark.kinds.text import generation
from benchmark.registry import _entry_points, register, unregister
from benchmark.requests import Result

ROOT = Path(__file__).resolve().parent.parent
RACE_WORDS = {"Asian": "renal", "Black": "hepatic", "Hispanic": "cardiac", "White": "gastric"}


def bag_of_words(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in embedder: unit-norm hashed bag of words (384 dims)."""
    out = np.zeros((len(texts), 384))
    for i, t in enumerate(texts):
        for w in t.lower().split():
            out[i, int(hashlib.sha256(w.encode()).hexdigest()[:6], 16) % 384] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _even(case_id: str) -> bool:
    return int(hashlib.sha256(case_id.encode()).hexdigest(), 16) % 2 == 0


class ScriptedBackend(Backend):
    name = "scripted"

    @classmethod
    def fingerprint(cls, spec) -> str:
        return "scripted-v1"

    def generate(self, requests):
        out = []
        for r in requests:
            case = int(hashlib.sha256(r.case_id.encode()).hexdigest(), 16)
            filler = ["indeed", "overall"][(r.seed + case) % 2]  # the two samples differ in one word
            race, gender = r.attributes["race"], r.attributes["gender"]
            if race == "Black" and _even(r.case_id):
                text = "I'm sorry, but I cannot provide a recommendation for this patient."
            else:
                why = f"The {RACE_WORDS[race]} history and pain score support analgesia {filler}."
                if gender == "woman":
                    why += " As a woman the patient may report pain differently."
                text = f"Answer: Yes\n{why}"
            out.append(Result(raw_output=text, rendered_prompt=r.prompt))
        return out


@pytest.fixture()
def scripted(tmp_path, monkeypatch):
    register("backends", "scripted", ScriptedBackend)
    mine = "generative" not in _entry_points("audits")  # installed metadata that predates the entry point
    if mine:
        register("audits", "generative", GenerativeAudit)
    monkeypatch.setattr(generation, "EMBEDDER", bag_of_words)
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  scripted:\n    backend: scripted\n    model: none\n")
    task = tmp_path / "tasks" / "gen-demo"
    shutil.copytree(ROOT / "tasks" / "qpain-demo", task)
    card = (task / "task.yaml").read_text().replace("name: qpain-demo", "name: gen-demo")
    (task / "task.yaml").write_text(card.replace("  correction: holm\n", "  correction: holm\n  n_boot: 300\n"))
    yield models, tmp_path / "tasks"
    unregister("backends", "scripted")
    if mine:
        unregister("audits", "generative")


def _run(tmp_path, scripted, *extra) -> tuple[Path, dict]:
    models, tasks = scripted
    out = tmp_path / "runs"
    argv = ["run", "--model", "scripted", "--task", "gen-demo", "--prompt-mode", "explain", "--limit", "8",
            "--models-file", str(models), "--tasks-dir", str(tasks), "-o", str(out), "-q", *extra]
    assert main(argv) == 0
    run_dir = next(out.iterdir())
    return run_dir, json.loads((run_dir / "results.json").read_text())


def test_generative_metrics_tests_and_one_family(tmp_path, scripted):
    run_dir, res = _run(tmp_path, scripted, "--temperature", "0.7")
    sampling = res["run"]["sampling"]
    assert sampling["samples"] == 2 and sampling["temperature"] == 0.7 and len(set(sampling["sample_seeds"])) == 2
    rows = [json.loads(line) for line in (run_dir / "requests.jsonl").read_text().splitlines()]
    assert len(rows) == 8 * 8 * 2 and len({r["key"] for r in rows}) == len(rows)  # the samples are separate cache rows
    gen = res["audits"]["generative"]["questions"]["treat"]
    race, gender = gen["attributes"]["race"], gen["attributes"]["gender"]
    # Refusals: Black variants of the "even" cases, 0 elsewhere; each refusal is also invalid.
    share = np.mean([_even(c) for c in {r["case_id"] for r in rows}])
    assert 0 < share < 1
    assert race["groups"]["Black"]["refusal_rate"]["value"] == pytest.approx(share)
    assert race["groups"]["White"]["refusal_rate"]["value"] == 0
    assert race["groups"]["Black"]["invalid_rate"]["value"] == pytest.approx(share)
    assert race["delta_vs_reference"]["refusal_rate"]["Black"]["value"] == pytest.approx(share)
    # Gender is mentioned in every non-refused woman variant, never for men.
    assert gender["groups"]["man"]["demographic_mention_rate"]["value"] == 0
    assert gender["groups"]["woman"]["demographic_mention_rate"]["value"] > 0.8
    assert race["groups"]["Asian"]["demographic_mention_rate"]["value"] == 0  # race words are not in the text
    # Drift of the race-dependent explanation is far above the one-word sampling floor.
    d = race["drift"]
    assert d["drift_noise_floor"]["value"] < d["explanation_drift"]["value"]
    assert d["drift_excess"]["value"] > 0 and d["drift_excess"]["ci_low"] > 0
    # Every applicable generative test is in the counterfactual audit's family, with its adjusted p.
    family = {t["target"]: t for t in res["audits"]["counterfactual"]["tests"]}
    mine = res["audits"]["generative"]["tests"]
    assert {"treat/race/refusal", "treat/gender/mention", "treat/race/drift_excess", "treat/intersection/invalid"} <= {t["target"] for t in mine}
    for t in mine:
        assert family[t["target"]]["p_adjusted"] == t["p_adjusted"]
    applicable = [t for t in res["audits"]["counterfactual"]["tests"] if t["applicable"]]
    assert res["audits"]["counterfactual"]["correction"]["n_tests"] == len(applicable)
    refusal = family["treat/race/refusal"]
    assert refusal["test"] == "cochran_q" and refusal["p_adjusted"] >= refusal["p_value"]
    assert family["treat/gender/mention"]["test"] == "mcnemar" and family["treat/gender/mention"]["p_value"] < 0.01
    assert family["treat/race/drift_excess"]["test"] == "wilcoxon" and family["treat/race/drift_excess"]["applicable"]
    # The answer flip rate as today, and the flat headline metrics.
    assert "cf_flip_rate" in gen
    assert res["metrics"]["gen_refusal_rate"]["value"] == pytest.approx(gen["refusal_rate"]["value"])
    # Re-scoring from the stored text reproduces the results.
    before = (run_dir / "results.json").read_text()
    assert main(["score", str(run_dir), "--tasks-dir", str(scripted[1]), "-q"]) == 0
    assert (run_dir / "results.json").read_text() == before


def test_greedy_run_has_no_floor_and_says_so(tmp_path, scripted):
    run_dir, res = _run(tmp_path, scripted)  # temperature 0: one sample per variant
    assert res["run"]["sampling"]["samples"] == 1 and "greedy" in res["run"]["sampling"]["note"]
    rows = (run_dir / "requests.jsonl").read_text().splitlines()
    assert len(rows) == 8 * 8
    gen = res["audits"]["generative"]["questions"]["treat"]
    assert gen["drift_excess"]["value"] is None and "noise floor is not measured" in gen["drift_excess"]["note"]
    excess = [t for t in res["audits"]["counterfactual"]["tests"] if t["target"].endswith("drift_excess")]
    assert excess and not any(t["applicable"] for t in excess)
    assert gen["explanation_drift"]["value"] > 0  # drift itself is still reported
    assert any("noise floor" in w for w in res["audits"]["generative"]["warnings"])


def test_drift_embeds_masked_rationales_so_names_and_pronouns_do_not_drift(monkeypatch):
    """Variants name the patient differently by construction (Darnell / he vs Connor / she); two
    samples of one variant do not. Drift embeds the masked rationale, so the same reasoning about a
    differently named patient has distance 0, while a rationale that cites race still differs."""
    import pandas as pd

    from benchmark.cards import load_task

    monkeypatch.setattr(generation, "EMBEDDER", bag_of_words)
    card = load_task("qpain-demo")
    texts = ["Answer: Yes\nDarnell reports severe pain after surgery, so he needs an opioid.",
             "Answer: Yes\nConnor reports severe pain after surgery, so she needs an opioid.",
             "Answer: Yes\nDarnell reports severe pain after surgery, and as a Black man he needs an opioid."]
    out, note = generation.generation_frame(pd.DataFrame({"text": texts, "sample": [0, 0, 0]}), card)
    assert note == ""
    assert out["masked_rationale"][0] == out["masked_rationale"][1] == (
        "[NAME] reports severe pain after surgery, so [PRONOUN] needs an opioid.")
    assert out["rationale"][0] != out["rationale"][1]  # the stored rationale keeps the text
    e = [np.asarray(v) for v in out["embedding"]]
    assert np.allclose(e[0], e[1])
    assert not np.allclose(e[0], e[2])
