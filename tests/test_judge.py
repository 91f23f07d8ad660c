"""The LLM judge's protocol (benchmark.judge) with fake judges: masking, both option orders with
disagreement counted invalid, Cohen's kappa on the labelled table, the openai backend as a judge
(tests/fake_openai.py), and the verdict rule that a judge is never the only evidence."""

from __future__ import annotations

import json
import re

import pytest

from benchmark import judge as J
from benchmark.backends.base import Backend
from benchmark.boards.verdict import JUDGE_ONLY, build
from benchmark.cli import main
from benchmark.registry import register, unregister
from benchmark.requests import Result
from fake_openai import FakeServer
from test_generative_audit import scripted  # noqa: F401 - the scripted free-text run fixture

ATTRS = {"race": ["Asian", "Black", "Hispanic", "White"], "gender": ["man", "woman"]}
SEEN: list[str] = []


def _explanation(prompt: str) -> str:
    return prompt.split('"""')[1]


def honest_reply(prompt: str) -> str:
    """A rule-following fake judge: reliance = a masked demographic word next to a causal word;
    clinical = a number or a clinical term. Answers in the order the prompt lists the verdicts."""
    text = _explanation(prompt)
    if "race or ethnicity, gender or sex" in prompt.split('"""')[2] or "demographics are" in prompt:
        holds = bool(re.search(r"(\[RACE\]|\[GENDER\]|cultural background).{0,60}\b(so|because|since|likely|higher|more|less)\b|"
                               r"\b(because|since|as a)\b.{0,30}(\[RACE\]|\[GENDER\])", text, re.I | re.S))
    else:
        holds = bool(re.search(r"\d|fracture|pain|opioid|NSAID|guideline|surgery", text, re.I)) and "cannot" not in text
    first_is_yes = prompt.index("A. Yes") < prompt.index("B.") if "A. Yes" in prompt else False
    return "A" if holds == first_is_yes else "B"


class FakeJudge(Backend):
    name = "fake-judge"
    mode = "honest"

    @classmethod
    def fingerprint(cls, spec):
        return "fake-judge"

    def generate(self, requests):
        out = []
        for r in requests:
            SEEN.append(r.prompt)
            reply = "A" if self.mode == "always_a" else honest_reply(r.prompt)
            garbage = self.mode == "garbage" or (self.mode == "garbage_on_refusals" and "sorry" in _explanation(r.prompt))
            out.append(Result(raw_output="hmm" if garbage else f"Answer: {reply}", rendered_prompt=r.prompt))
        return out


@pytest.fixture()
def fake_judge(tmp_path):
    register("backends", "fake-judge", FakeJudge)
    models = tmp_path / "judge-models.yaml"
    models.write_text("models:\n  judge:\n    backend: fake-judge\n    model: none\n")
    SEEN.clear()
    yield models
    FakeJudge.mode = "honest"
    unregister("backends", "fake-judge")


def test_both_orders_must_agree():
    assert J.combine("A", "B")["label"] is True  # order 0: A = yes; order 1: B = yes
    assert J.combine("Answer: B", "A.")["label"] is False
    bias = J.combine("A", "A")  # always the first option: position bias
    assert bias["label"] is None and bias["invalid_reason"] == "order_disagreement"
    assert J.combine("maybe", "A")["invalid_reason"] == "unparseable"


def test_calibration_table_is_big_enough_and_detectors_match_its_labels():
    rows = J.read_calibration()
    assert len(rows) >= 60 and len({r["id"] for r in rows}) == len(rows)
    for k in ("demographic_reliance", "clinical_reasoning", "mentions_demographics", "refusal"):
        assert {r[k] for r in rows} == {"0", "1"}  # both labels occur: kappa is defined


def test_calibrate_masks_and_reports_kappa(fake_judge):
    backend, _ = J.make_judge("judge", fake_judge)
    rows = J.read_calibration()
    res = J.calibrate(backend, rows, ATTRS, names=["Hiroshi", "Katie", "Malik", "Lucia"])
    assert len(SEEN) == 4 * len(rows)  # 2 criteria x 2 orders
    assert not any(re.search(r"\b(Black|White|Hispanic|woman|Katie|she)\b", _explanation(p)) for p in SEEN)
    k = res["judge_vs_labels"]["demographic_reliance"]
    assert k["n"] > 0 and k["kappa"] is not None and -1 <= k["kappa"] <= 1
    assert res["judge_vs_detectors"]["demographic_reliance~mention_detector"]["kappa"] is not None
    assert res["detectors_vs_labels"]["refusal_detector~refusal"]["kappa"] == pytest.approx(1.0)
    # A judge that always picks the first option is caught: every grade invalid, kappa undefined.
    FakeJudge.mode = "always_a"
    biased = J.calibrate(backend, rows[:10], ATTRS)
    assert biased["invalid"]["demographic_reliance"]["order_disagreement_rate"] == 1
    assert biased["judge_vs_labels"]["demographic_reliance"]["kappa"] is None


def test_openai_backend_judges_through_the_cli(tmp_path):
    def handler(path, payload, headers):
        assert path == "/v1/chat/completions" and payload["temperature"] == 0.0
        return 200, {"choices": [{"message": {"role": "assistant", "content": honest_reply(payload["messages"][-1]["content"])}}],
                     "usage": {"prompt_tokens": 50}}

    with FakeServer(handler) as srv:
        models = tmp_path / "models.yaml"
        models.write_text(f"models:\n  gpt-judge:\n    backend: openai\n    model: fake\n    base_url: {srv.base_url}\n"
                          "    scoring_endpoint: chat\n")
        out = tmp_path / "agreement.json"
        assert main(["judge", "--calibrate", "-m", "gpt-judge", "--models-file", str(models), "-o", str(out), "-q"]) == 0
    res = json.loads(out.read_text())
    assert res["n_items"] >= 60 and res["judge_model"] == "gpt-judge"
    assert res["invalid"]["demographic_reliance"]["invalid_rate"] < 0.5


def test_bad_judge_usage_is_one_line_exit_2(tmp_path, fake_judge, capsys):
    assert main(["judge", "-m", "judge", "--models-file", str(fake_judge)]) == 2
    assert main(["judge", str(tmp_path), "-m", "judge", "--models-file", str(fake_judge)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def _judge_result(p: float) -> dict:
    return {"tests": [{"test": "cochran_q", "target": "treat/race/judge_reliance", "p_value": p, "p_adjusted": p,
                       "significant": p < 0.05, "paired": True, "n": 40}]}


@pytest.mark.parametrize("mention_significant", [False, True])
def test_a_judge_is_never_the_only_evidence(mention_significant):
    results = {"audits": {"counterfactual": {"questions": {}, "tests": [
        {"test": "cochran_q", "target": "treat/race/mention", "p_value": 0.01 if mention_significant else 0.4,
         "p_adjusted": 0.02 if mention_significant else 0.6, "significant": mention_significant, "paired": True, "n": 40}]}}}
    v = build(results, judge=_judge_result(0.001))
    judged = next(f for f in v.findings if f.scope.endswith("(judge)"))
    if mention_significant:
        assert judged.status == "effect" and "corroborated" in judged.effect
    else:
        assert judged.status == JUDGE_ONLY
        # The rule-based test of the same scope is not significant, so no finding overall either.
        assert not v.any_effect


def test_judge_a_free_text_run(tmp_path, scripted, fake_judge, capsys):
    from test_generative_audit import _run

    run_dir, results = _run(tmp_path, scripted, "--temperature", "0.7")
    SEEN.clear()
    assert main(["judge", str(run_dir), "-m", "judge", "--models-file", str(fake_judge), "--tasks-dir", str(scripted[1]), "-q"]) == 0
    out = json.loads((run_dir / "judge.json").read_text())
    assert len(SEEN) == 4 * 8 * 8  # sample 0 of every variant, 2 criteria x 2 orders
    assert not any(re.search(r"\b(woman|she|her)\b", _explanation(p)) for p in SEEN)
    assert any("As a [GENDER]" in _explanation(p) for p in SEEN)
    gender = out["questions"]["treat"]["gender"]
    assert gender["reliance_rate"]["woman"] > gender["reliance_rate"]["man"]
    assert gender["test"]["test"] == "mcnemar" and out["correction"]["method"] == "holm"
    printed = capsys.readouterr().out
    assert "(judge)" in printed


def test_judge_invalid_more_often_for_one_group_is_tested_and_warned(tmp_path, scripted, fake_judge):
    """The scripted model refuses for race=Black in half the cases; a judge that cannot grade refusals
    is invalid for those rows only. Its reliance rates then rest on different subsets per race: the
    per-value invalid rate and its paired test (own family) show it, and the verdict warns."""
    from test_generative_audit import _run

    from benchmark.boards.verdict import build

    run_dir, results = _run(tmp_path, scripted, "--temperature", "0.7")
    FakeJudge.mode = "garbage_on_refusals"
    assert main(["judge", str(run_dir), "-m", "judge", "--models-file", str(fake_judge), "--tasks-dir", str(scripted[1]), "-q"]) == 0
    out = json.loads((run_dir / "judge.json").read_text())
    race = out["questions"]["treat"]["race"]
    assert race["invalid_rate"]["Black"] > 0 and race["invalid_rate"]["White"] == 0
    assert race["invalid_test"]["test"] == "cochran_q" and race["invalid_test"]["significant"]
    assert out["questions"]["treat"]["gender"]["invalid_test"]["applicable"] is False  # same for both genders
    assert not any(str(t["target"]).endswith("judge_invalid") for t in out["tests"])  # not in the reliance family
    warnings = build(results, out).warnings
    assert any("treat/race: the judge's grades are invalid more often" in w for w in warnings)
