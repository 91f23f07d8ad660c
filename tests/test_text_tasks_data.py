"""The official text tasks on their real files (../shared/data; skipped where absent): loaders,
reported quirks, counterfactual expansion, and the task-card features they rely on."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from benchmark.data.cases import Case, LoadReport
from benchmark.kinds.text.expand import expand
from benchmark.data.text import load_cases
from benchmark.errors import FairbenchError
from benchmark.kinds.text.prompts import build_requests, question_options
from benchmark.cards import load_task, read_card

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str, data_dir: Path):
    card = load_task(name)
    cases, report, files = load_cases(card, data_dir)
    variants = expand(cases, card.counterfactual, 0, report)
    return card, cases, report, variants


def _no_placeholders(texts):
    for t in texts:
        assert not re.search(r"\[[a-z_]+\]|@[A-Z][a-z]+|Patient D", t), t[:200]


def test_qpain_official_files(shared_data):
    card, cases, report, variants = _load("qpain", shared_data / "qpain")
    assert len(cases) == 50 and len(variants) == 400
    # The 5 demographic-free "Patient B" closed prompts are skipped with a reason, not dropped silently.
    assert len(report.skipped) == 5 and all("closed-prompt" in s for s in report.skipped)
    assert any("[subjective]" in q for q in report.quirks)
    _no_placeholders(v.fields["context"] + v.fields["question"] for v in variants)
    by_case = {}
    for v in variants:
        by_case.setdefault(v.case.case_id, []).append(v)
    assert all(len(vs) == 8 for vs in by_case.values())  # paired: same case id, 8 variants
    v = next(x for x in variants if x.attributes == {"race": "Black", "gender": "woman"})
    assert "Black woman" in v.fields["context"] and " he " not in v.fields["context"]
    name = v.fields["context"].split()[0]
    assert name in card.counterfactual.names.pools["Black|woman"]
    requests = build_requests(card, variants, "zero_shot", 0)
    assert [r.question_id for r in requests[:2]] == ["treat", "dose"] and len(requests) == 800
    assert "Suppose your answer is Yes" in requests[1].prompt and requests[1].options == ["Low", "High"]
    assert requests[1].meta["reference"] == "Low"


def test_treatment_official_files(shared_data):
    card, cases, report, variants = _load("treatment", shared_data / "zack2024" / "healer_cases")
    assert len(cases) == 18 and len(variants) == 144
    quirks = " ".join(report.quirks)
    for expected in ("byte-order mark", "empty trailing column", "spans several lines", "gendered word(s) his"):
        assert expected in quirks
    _no_placeholders(v.fields["context"] for v in variants)
    texts = {v.attributes["race"] + "|" + v.attributes["gender"]: v.fields["context"] for v in variants if v.case.case_id == cases[0].case_id}
    assert "Hispanic woman" in texts["Hispanic|woman"] and "  " not in texts["Hispanic|woman"]
    assert "\n" not in cases[0].fields["ddx"] and "Pericarditis" in cases[0].fields["ddx"]
    requests = build_requests(card, variants, "few_shot", 0)
    assert {r.question_id for r in requests} == {"refer", "imaging"} and len(requests) == 288
    assert requests[0].prompt.startswith("Here are worked examples")


def test_triage_pre_expanded_rows_pair_up(shared_data):
    card, cases, report, variants = _load("triage", shared_data)  # subdir zack2024/nursing_bias is found
    assert len(cases) == 192 and len(variants) == 192
    ids = {v.case.case_id for v in variants}
    assert len(ids) == 24
    for cid in ids:
        groups = {(v.attributes["race"], v.attributes["gender"]) for v in variants if v.case.case_id == cid}
        assert len(groups) == 8  # every canonical race x gender, each once
    v = next(x for x in variants if x.attributes == {"race": "Black", "gender": "woman"} and x.case.case_id == "case1:item1")
    assert "african-american woman" in v.fields["context"]
    requests = build_requests(card, variants, "zero_shot", 0)
    kinds = {q: sum(r.question_id == q for r in requests) for q in ("agreement", "choice")}
    assert kinds == {"agreement": 176, "choice": 16}
    mc = {tuple(r.options) for r in requests if r.question_id == "choice"}
    assert mc == {("a", "b", "c", "d"), ("1", "2")}
    likert = next(r for r in requests if r.question_id == "agreement")
    assert "3. Neutral" in likert.prompt and likert.options == ["1", "2", "3", "4", "5"]


def _copy_task(tmp_path: Path, name: str, edit) -> Path:
    dst = tmp_path / "tasks" / f"{name}-x"
    shutil.copytree(ROOT / "tasks" / name, dst)
    text = (dst / "task.yaml").read_text().replace(f"name: {name}\n", f"name: {name}-x\n", 1)
    (dst / "task.yaml").write_text(edit(text))
    return dst / "task.yaml"


def test_user_adds_an_attribute_without_python(tmp_path):
    def edit(t):
        t = t.replace("    gender: {values: [man, woman], reference: man}\n",
                      "    gender: {values: [man, woman], reference: man}\n    insurance: {values: [private, uninsured], reference: private}\n", 1)
        return t.replace('    "[race]": "{race}"\n', '    "[race]": "{race}"\n    "uninsured-or-not": "{insurance}"\n', 1)

    card = read_card(_copy_task(tmp_path, "qpain-demo", edit))
    cases, report, _ = load_cases(card)
    cases = [Case(c.case_id, {**c.fields, "context": c.fields["context"] + " Insurance: uninsured-or-not."}, c.source) for c in cases[:2]]
    variants = expand(cases, card.counterfactual, 0, report)
    assert len(variants) == 2 * 16
    assert {v.attributes["insurance"] for v in variants} == {"private", "uninsured"}
    assert all(f"Insurance: {v.attributes['insurance']}." in v.fields["context"] for v in variants)


def test_pre_expanded_rows_can_be_crossed_with_a_substituted_attribute(tmp_path):
    card = load_task("triage").model_copy(deep=True)
    from benchmark.cards.text import Attribute

    card.counterfactual.attributes["age"] = Attribute(values=["40", "70"], reference="40")
    card.counterfactual.substitutions["{AGE}"] = "{age}"
    rows = [Case("c1", {"context": f"A {{AGE}}-year-old {r} {g}."}, f"f.csv:{i}", attributes={"race": r, "gender": g})
            for i, (r, g) in enumerate([("asian", "M"), ("caucasian", "M"), ("asian", "F"), ("caucasian", "F")])]
    report = LoadReport()
    variants = expand(rows, card.counterfactual, 0, report)
    assert len(variants) == 8 and {v.fields["context"] for v in variants if v.attributes["age"] == "70"} >= {"A 70-year-old asian M."}
    assert any("of 16 demographic variants" in q for q in report.quirks)  # incomplete grid is reported


def test_unmapped_pre_expanded_value_is_a_one_line_error():
    card = load_task("triage")
    row = Case("c1", {"context": "x"}, "nurses.csv:7", attributes={"race": "martian", "gender": "M"})
    with pytest.raises(FairbenchError, match=r"nurses.csv:7: race='martian' is not mapped.*pre_expanded.race.values"):
        expand([row], card.counterfactual, 0)


def test_stray_placeholder_never_reaches_a_prompt():
    card = load_task("treatment")
    row = Case("c1", {"context": "A 50-year-old @Race @Sex with @Ethnicity presents."}, "ED_cases.csv:3")
    with pytest.raises(FairbenchError, match=r"ED_cases.csv:3: field context keeps placeholder\(s\) @Ethnicity"):
        expand([row], card.counterfactual, 0)


def test_quirky_healer_file_loads(tmp_path):
    """BOM, empty trailing columns, a multi-line DDx cell, double spaces: loaded and reported."""
    d = tmp_path / "healer"
    d.mkdir()
    text = 'title,Case one liner,DDx,,\r\nT1,"A 40-year-old  @Race @Sex  presents with pain.  ","A,\nB,\n",,\r\n'
    for f in ("ED_cases.csv", "Outpt_chest_pain.csv", "Outpt_dyspnea.csv"):
        (d / f).write_bytes(b"\xef\xbb\xbf" + text.encode())
    card = load_task("treatment")
    cases, report, _ = load_cases(card, d)
    assert cases[0].fields == {"context": "A 40-year-old @Race @Sex presents with pain.", "title": "T1", "ddx": "A; B"}
    assert any("SHA-256 differs" in q for q in report.quirks)  # not the official file: said so
    variants = expand(cases, card.counterfactual, 0, report)
    assert variants[0].fields["context"] == "A 40-year-old Asian man presents with pain."


def test_missing_data_names_the_download_command(tmp_path):
    card = load_task("triage")
    with pytest.raises(FairbenchError, match="fairbench data download triage"):
        load_cases(card, tmp_path)


def test_per_case_options_parse_and_reject_garbage():
    q = load_task("triage").question("choice")
    labels, words = question_options(q, {"option_items": "['a) Go home.', 'b) Admit.']"})
    assert labels == ["a", "b"] and words == ["Go home.", "Admit."]
    with pytest.raises(FairbenchError, match="field option_items of question choice"):
        question_options(q, {"option_items": "['no label here', 'nor here']"}, "f.csv:2")


def test_limit_counts_case_ids_not_rows():
    from benchmark.data.cases import first_cases

    rows = [Case(f"c{i // 8}", {}, attributes={"race": str(i % 8)}) for i in range(24)]
    kept = first_cases(rows, 2)
    assert len(kept) == 16 and {c.case_id for c in kept} == {"c0", "c1"}
