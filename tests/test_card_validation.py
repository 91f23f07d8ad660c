"""Task cards and data that would make an audit meaningless are refused (issue 13, kind 4), checked
where each can first be known: the card alone (benchmark/cards), the card against the loaded cases
(prompts.check_fields), and the built prompts (prompts.check_prompts_differ). Each test loads a
modified bundled card (qpain-demo, synth-xray) or a small one, the way a user's card is read.
The CLI path (exit 2, one line) of the same errors is in tests/bad_inputs (test_bad_inputs.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from benchmark.cards import read_card
from benchmark.data.cases import Case, LoadReport
from benchmark.data.text import load_cases
from benchmark.errors import FairbenchError
from benchmark.kinds.text.expand import expand
from benchmark.kinds.text.kind import TextKind
from benchmark.kinds.text.prompts import build_requests, check_fields, check_prompts_differ, question_options
from benchmark.spec import RunSpec

ROOT = Path(__file__).resolve().parent.parent


def _card(tmp_path: Path, task: str, edit) -> Path:
    """A copy of tasks/<task> whose card is changed by ``edit(dict)``; the path of its task.yaml."""
    d = tmp_path / task
    shutil.copytree(ROOT / "tasks" / task, d)
    data = yaml.safe_load((d / "task.yaml").read_text(encoding="utf-8"))
    edit(data)
    (d / "task.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return d / "task.yaml"


def _refused(path: Path, *expect: str) -> str:
    with pytest.raises(FairbenchError) as exc:
        read_card(path)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg, msg
    for e in expect:
        assert e in msg, msg
    return msg


def _pipeline(path: Path, mode: str | None = None):
    """read_card -> load_cases -> check_fields -> expand -> build_requests -> check_prompts_differ, as
    TextKind.prepare runs them. Returns (requests, report)."""
    card = read_card(path)
    cases, report, _ = load_cases(card, None)
    check_fields(card, cases)
    variants = expand(cases, card.counterfactual, 0, report)
    mode = mode or card.default_mode
    requests = build_requests(card, variants, mode, 0)
    check_prompts_differ(card, mode, variants, requests, report)
    return requests, report


def _no_names(data):
    data["counterfactual"].pop("names")


# ---------------------------------------------------------------- variants that differ only in the fields


def test_the_bundled_card_builds_a_distinct_prompt_for_every_variant(tmp_path):
    for mode in ("zero_shot", "cot"):
        requests, report = _pipeline(_card(tmp_path / mode, "qpain-demo", lambda d: None), mode)
        assert len(requests) == 96 and len({(r.case_id, r.prompt) for r in requests}) == 96
        assert not any("prompt" in q for q in report.quirks)


def test_a_template_without_the_swapped_fields_is_refused(tmp_path):
    """'Answer with {options} only.' built 96 requests of which 84 repeated another variant's prompt."""
    def edit(d):
        d["prompt_modes"]["zero_shot"]["template"] = "Answer with {options} only."

    with pytest.raises(FairbenchError) as exc:
        _pipeline(_card(tmp_path, "qpain-demo", edit))
    msg = str(exc.value)
    assert "\n" not in msg and "task.yaml" in msg
    assert "prompt_modes.zero_shot.template and questions.treat.text do not use the field(s) context" in msg
    assert "add {context}" in msg


def test_values_that_render_the_same_text_are_refused(tmp_path):
    """gender [man, woman, nonbinary] with woman and nonbinary both written 'person'/'they'/'their':
    the fields still change with gender (man), so expansion accepts it, but two of the values never differ."""
    def edit(d):
        _no_names(d)
        cf = d["counterfactual"]
        cf["attributes"]["gender"] = {"values": ["man", "woman", "nonbinary"], "reference": "man"}
        cf["substitutions"].update({
            "[gender]": {"gender": {"man": "man", "woman": "person", "nonbinary": "person"}},
            "[subject]": {"gender": {"man": "he", "woman": "they", "nonbinary": "they"}},
            "[possessive]": {"gender": {"man": "his", "woman": "their", "nonbinary": "their"}},
        })

    with pytest.raises(FairbenchError) as exc:
        _pipeline(_card(tmp_path, "qpain-demo", edit))
    msg = str(exc.value)
    assert "is the same for gender woman and nonbinary in every case" in msg
    assert "counterfactual.substitutions [gender], [subject], [possessive]" in msg and "\n" not in msg


def test_values_alike_in_some_cases_only_are_a_quirk(tmp_path):
    """Where only some cases cannot tell two values apart, the run goes on and the data report names
    those cases (their comparisons are ties); the cases that can are not named."""
    d = tmp_path / "t"
    d.mkdir()
    (d / "task.yaml").write_text(yaml.safe_dump({
        "name": "t", "loader": "qpain_csv", "data": {"bundled": ["vignettes.csv"]},
        "counterfactual": {
            "attributes": {"gender": {"values": ["man", "woman", "nonbinary"], "reference": "man"}},
            "substitutions": {"[gender]": "{gender}", "[subject]": {"gender": {"man": "he", "woman": "they", "nonbinary": "they"}}},
        },
        "questions": [{"id": "treat", "text": "{question}", "options": ["Yes", "No"], "positive": "Yes"}],
        "prompt_modes": {"zero_shot": {"template": "{context} {question} Answer with {options} only."}},
    }))
    (d / "vignettes.csv").write_text(
        "Vignette,Question,Answer,Dosage,Explanation\n"
        '"Patient D is a [gender] with hip pain.","Would you offer opioids?",Yes,Low,x\n'
        '"Patient D fell; [subject] has a broken arm.","Would you offer opioids?",Yes,Low,x\n'
    )
    requests, report = _pipeline(d / "task.yaml")
    assert len(requests) == 6
    tied = [q for q in report.quirks if "prompt of question treat" in q]
    assert len(tied) == 1 and "woman and nonbinary" in tied[0] and "ties" in tied[0], report.quirks
    cid = requests[3].case_id  # the second case
    assert tied[0].startswith(f"case {cid}:")


def test_name_pools_shared_by_two_groups_are_refused(tmp_path):
    def edit(d):
        pools = d["counterfactual"]["names"]["pools"]
        pools["Black|man"] = list(reversed(pools["White|man"]))

    _refused(_card(tmp_path, "qpain-demo", edit), "names.pools", "'Black|man'", "'White|man'", "have the same names")


# ---------------------------------------------------------------- question ids


def test_a_repeated_question_id_is_refused_when_the_card_is_read(tmp_path):
    """A second `id: treat` doubled the requests and merged both questions into one audit."""
    def edit(d):
        d["questions"].append(dict(d["questions"][0]))

    _refused(_card(tmp_path, "qpain-demo", edit), "field questions: ", "id: 'treat' listed more than once")


# ---------------------------------------------------------------- fields the questions name, against the data


@pytest.mark.parametrize("change, expect", [
    ({"applies_to": {"item_kind": "likert"}}, "questions.treat.applies_to.item_kind: 'item_kind' is no field of the cases (known: answer, context"),
    ({"applies_to": {"answer": "Maybe"}}, "questions.treat.applies_to.answer: no case has answer = 'Maybe'"),
    ({"reference_field": "answr"}, "questions.treat.reference_field: 'answr' is no field of the cases"),
    # Q-Pain's cases where opioids are not indicated have no dosage: nothing to measure accuracy on.
    ({"reference_field": "dosage", "applies_to": {"answer": "No"}}, "questions.treat.reference_field: 'dosage' is empty in every case the question is asked of"),
    ({"applies_to": {"answer": "No"}}, None),  # a field and a value the data has: asked of 2 cases
])
def test_fields_no_case_has_are_refused_once_the_cases_are_loaded(tmp_path, change, expect):
    def edit(d):
        d["questions"][0].update(change)

    path = _card(tmp_path, "qpain-demo", edit)
    read_card(path)  # the card alone cannot know the data's columns
    if expect is None:
        requests, _ = _pipeline(path)
        assert len(requests) == 2 * 8 and all(r.meta["reference"] for r in requests)
        return
    with pytest.raises(FairbenchError) as exc:
        _pipeline(path)
    assert expect in str(exc.value) and "\n" not in str(exc.value) and "task.yaml" in str(exc.value)


def test_a_reference_field_empty_in_every_case_is_refused():
    card = read_card(ROOT / "tasks" / "qpain-demo" / "task.yaml")
    cases = [Case(case_id="c0", fields={"context": "x [race]", "question": "q", "answer": " "}),
             Case(case_id="c1", fields={"context": "y [race]", "question": "q", "answer": ""})]
    with pytest.raises(FairbenchError, match="reference_field: 'answer' is empty in every case"):
        check_fields(card, cases)
    check_fields(card, [*cases, Case(case_id="c2", fields={"context": "z", "question": "q", "answer": "Yes."})])


def test_an_options_field_no_case_has_is_refused():
    card = read_card(ROOT / "tasks" / "diversitymedqa" / "task.yaml")
    cases = [Case(case_id="c0", fields={"context": "x", "choices": "['A) a', 'B) b']", "answer": "A"})]
    with pytest.raises(FairbenchError, match=r"questions.answer.options_field: 'options' is no field of the cases \(known: answer, choices, context\)"):
        check_fields(card, cases)


def test_a_run_whose_selected_cases_are_asked_nothing_stops_with_one_line(tmp_path):
    """applies_to matches cases of the file, but not the first one: --limit 1 would build no request
    (and evaluation crashed with KeyError 'outcome')."""
    def edit(d):
        d["questions"][0]["applies_to"] = {"answer": "No"}

    path = _card(tmp_path, "qpain-demo", edit)
    kind = TextKind(read_card(path))
    model = SimpleNamespace(name="m", eval_cases=None, generation=SimpleNamespace(max_new_tokens=8))
    backend = SimpleNamespace(name="b", scores_continuations=lambda spec: True)
    with pytest.raises(FairbenchError, match="none of the 1 selected case"):
        kind.prepare(RunSpec(task="qpain-demo", limit=1), model, {}, backend)
    prepared = kind.prepare(RunSpec(task="qpain-demo"), model, {}, backend)
    assert len(prepared.requests) == 2 * 8


# ---------------------------------------------------------------- per-case options


@pytest.mark.parametrize("raw, expect", [
    ("['a) Aspirin', 'A) Heparin']", "listed more than once"),  # labels the parser reads as one
    ("['a) Aspirin', 'b) aspirin.']", "'aspirin' listed more than once"),  # one wording twice
    ("['a) Aspirin', 'b) Heparin', 'c) Aspirin']", "'Aspirin' listed more than once"),
    ("['a) Aspirin', 'b) Heparin']", None),
])
def test_per_case_options_that_the_parser_cannot_tell_apart_are_refused(raw, expect):
    card = read_card(ROOT / "tasks" / "diversitymedqa" / "task.yaml")
    q = card.question("answer")
    if expect is None:
        assert question_options(q, {"options": raw}, "f.csv:3") == (["a", "b"], ["Aspirin", "Heparin"])
        return
    with pytest.raises(FairbenchError) as exc:
        question_options(q, {"options": raw}, "f.csv:3")
    msg = str(exc.value)
    assert expect in msg and msg.startswith("f.csv:3: field options of question answer") and "\n" not in msg


# ---------------------------------------------------------------- imaging cards


def _vlm(**kw):
    def edit(d):
        d["vlm"].update(kw)
    return edit


def _audit(**kw):
    def edit(d):
        d["audit"].update(kw)
    return edit


@pytest.mark.parametrize("edit, expect", [
    (_vlm(options=["Yes", "No", "Yes"]), "vlm.options: 'Yes' listed more than once"),
    (_vlm(options=[" Yes", "No"]), "vlm.options: ' Yes' has leading or trailing whitespace"),
    (_vlm(options=["Yes", "yes"], positive="Yes"), "vlm.options: 'Yes', 'yes' listed more than once"),
    (_vlm(synonyms={"Yes": ["present"], "Maybe": ["unsure"]}), "vlm.synonyms: ['Maybe'] are not vlm.options"),
    (_vlm(synonyms={"Yes": ["ok"], "No": ["OK"]}), "vlm.synonyms: 'OK' is accepted for both 'Yes' and 'No'"),
    (_vlm(synonyms={"Yes": ["no"]}), "'No' is accepted for both 'Yes' and 'No'"),
    (_audit(primary_attribute="race"), "primary_attribute 'race' is not one of the audited attributes"),
    (_audit(primary_attribute="ethnicity"), "primary_attribute 'ethnicity' is not one of the audited attributes"),
    (_audit(attributes=["sex", "age_group", "sex"]), "'sex' repeats 'sex'"),
    (_audit(attributes=["sex", "sex*age_group", "age_group*sex"]), "'age_group*sex' repeats 'sex*age_group'"),
    (_audit(attributes=["sex", "sex*sex"]), "'sex*sex' crosses an attribute with itself"),
    (lambda d: d.update(labels=["lesion", "Lesion"]), "labels: 'Lesion', 'lesion' listed more than once"),
])
def test_imaging_cards_that_make_the_audit_meaningless_are_refused(tmp_path, edit, expect):
    _refused(_card(tmp_path, "synth-xray", edit), expect)


def test_the_bundled_imaging_cards_still_read(tmp_path):
    card = read_card(_card(tmp_path, "synth-xray", _audit(attributes=["age_group", "sex"], primary_attribute="age_group")))
    assert card.audit.primary_attribute == "age_group"
    for task in ("synth-xray", "synth-xray-balanced", "chexpert", "mimic-cxr", "eyepacs", "ham10000", "ol3i", "ptbxl"):
        read_card(ROOT / "tasks" / task / "task.yaml")
