"""Held-out split, config validation, neutral prompts and device-based training precision (no model)."""

import json

import pytest
import torch

from benchmark.data.cases import Case
from benchmark.errors import FairbenchError
from benchmark.data.split import restrict, split_cases
from benchmark.cards import load_task


def _cases(n_yes=20, n_no=4):
    return [Case(f"c{i:02d}", {"context": "x", "question": "q", "answer": "Yes." if i < n_yes else "No."}) for i in range(n_yes + n_no)]


def test_split_is_seeded_disjoint_and_stratified():
    card = load_task("qpain-demo")
    cases = _cases()
    a = split_cases(cases, card, 0.5, seed=0)
    assert a == split_cases(list(reversed(cases)), card, 0.5, seed=0)  # order-independent
    assert a != split_cases(cases, card, 0.5, seed=1)
    mit, ev = set(a["mitigation_case_ids"]), set(a["evaluation_case_ids"])
    assert not mit & ev and mit | ev == {c.case_id for c in cases}
    no_ids = {c.case_id for c in cases if c.fields["answer"] == "No."}
    assert no_ids & mit and no_ids & ev  # the rare "No" stratum is on both sides
    with pytest.raises(FairbenchError):
        split_cases(cases, card, 1.0, seed=0)


def test_restrict_uses_only_heldout_cases(tmp_path):
    from benchmark.config import ModelSpec

    cases = _cases()
    split = split_cases(cases, load_task("qpain-demo"), 0.25, seed=3)
    path = tmp_path / "split.json"
    path.write_text(json.dumps(split))
    spec = ModelSpec(name="m+x", backend="hf", model="m", eval_cases=str(path))
    kept, info = restrict(cases, spec, "qpain-demo")
    assert [c.case_id for c in kept] == split["evaluation_case_ids"]
    assert info["eval_split"] == "held-out" and info["split_from"] == "m+x"
    assert restrict(cases, spec, "other-task")[1]["eval_split"] == "all"
    with pytest.raises(FairbenchError, match="not in task"):
        restrict(cases[:3], spec, "qpain-demo")
    plain = ModelSpec(name="m", backend="hf", model="m")
    assert restrict(cases, plain, "qpain-demo")[1] == {"eval_split": "all"}
    with pytest.raises(FairbenchError, match="no held-out split"):
        restrict(cases, plain, "qpain-demo", required=True)


def test_training_precision_is_chosen_by_device(monkeypatch):
    """TRL's CPOConfig defaults (bf16=True, gradient_checkpointing=True) made a CPU step ~30x slower."""
    from benchmark.mitigations.simpo_distill import SimPOConfig
    from benchmark.mitigations.training import simpo_args, training_precision

    cpu = torch.device("cpu")
    assert training_precision(cpu) == {"bf16": False, "gradient_checkpointing": False}
    args = simpo_args(SimPOConfig(), cpu, "unused-out", seed=0)
    assert args.bf16 is False and args.gradient_checkpointing is False
    assert args.loss_type == "simpo" and args.cpo_alpha == 0.0 and args.beta == 2.0 and args.simpo_gamma == 1.0
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert training_precision(torch.device("cuda"))["bf16"] is True
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert training_precision(torch.device("cuda"))["bf16"] is False
    assert training_precision(cpu, bf16=True, gradient_checkpointing=True) == {"bf16": True, "gradient_checkpointing": True}


def test_neutral_form_removes_demographics():
    from benchmark.mitigations.simpo_distill import NEUTRAL, neutral_case

    card = load_task("qpain-demo")
    case = Case("c", {"context": "Patient D is a 40-year-old [race] [gender]; [subject] says [possessive] leg hurts.", "question": "q"})
    assert neutral_case(case, card, NEUTRAL).fields["context"] == "Patient D is a 40-year-old patient; they says their leg hurts."
    with pytest.raises(FairbenchError, match="neutral"):
        neutral_case(Case("c", {"context": "[insurance] patient"}, source="f.csv"), card, NEUTRAL)


def test_bad_config_is_a_one_line_error(tmp_path, cli, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("sampels: 3\n")
    assert cli("mitigate", "--method", "simpo-distill", "--config", str(bad)) == 2
    err = capsys.readouterr().err
    assert "sampels" in err and str(bad) in err and "Traceback" not in err
    assert cli("mitigate", "--method", "nope") == 2
