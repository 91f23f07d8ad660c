"""`fairbench report` and the paper figures: the data the template receives (verdict, forest, drill-down,
imaging curves, paired comparisons), the files the CLI writes, and the page in a real headless browser
(Debian's chromium driven by playwright; skipped with the reason where either is missing).

Runs come from the CLI in-process: the planted backend on qpain-demo (Black variants' P(yes) lowered
by 0.3, so the verdict must find race and not gender), a second planted "model" without the shift,
chain-of-thought (generate) on the same task, and a tiny scratch ViT on synth-xray."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import planted
from benchmark.boards import plots, report
from benchmark.cli import main
from benchmark.registry import register, unregister

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
VIT = {"backend": "classifier", "model": "scratch", "extra": {
    "image_size": 32, "patch_size": 8, "hidden_size": 16, "num_layers": 1, "num_heads": 2, "channels": 1,
    "epochs": 1, "batch_size": 32}}
DEMOGRAPHIC = {"Asian", "Black", "Hispanic", "White", "man", "woman", "he", "she", "his", "her", "him", "He", "She", "His", "Her"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    tasks = root / "tasks"
    shutil.copytree(ROOT / "tasks" / "qpain-demo", tasks / "qpain-demo")
    raw = yaml.safe_load((tasks / "qpain-demo" / "task.yaml").read_text())
    raw.setdefault("audit", {})["n_boot"] = 200
    (tasks / "qpain-demo" / "task.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    models = root / "models.yaml"
    models.write_text(yaml.safe_dump({"models": {"planted": {"backend": "planted", "model": "a"},
                                                 "fair": {"backend": "planted", "model": "b"}, "vit-test": VIT}}))
    out = root / "runs"
    common = ["--models-file", str(models), "--tasks-dir", str(tasks), "-o", str(out), "-q"]
    register("backends", "planted", planted.PlantedBackend)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FAIRBENCH_CACHE", str(root / "cache"))
            mp.setattr(planted, "SHIFTS", {"race": {"Black": -0.3}})
            assert main(["run", "-m", "planted", "-t", "qpain-demo", *common]) == 0
            assert main(["run", "-m", "planted", "-t", "qpain-demo", "--prompt-mode", "cot", *common]) == 0
            mp.setattr(planted, "SHIFTS", {})
            assert main(["run", "-m", "fair", "-t", "qpain-demo", *common]) == 0
            assert main(["run", "-m", "vit-test", "-t", "synth-xray", "--limit", "100", *common]) == 0
    finally:
        unregister("backends", "planted")
    found = {d.name.split("__")[0] + ("-cot" if "__cot__" in d.name else ""): d for d in out.iterdir() if "__" in d.name}
    assert set(found) == {"planted", "planted-cot", "fair", "vit-test"}
    found["tasks"] = tasks
    return found


def test_verdict_finds_the_planted_race_effect_and_not_gender(runs):
    run = report.Run(runs["planted"], 0)
    verdict = {v["attribute"]: v for v in report.text_verdict(run)}
    assert verdict["race"]["effect"] and verdict["race"]["test"]["paired"] and verdict["race"]["test"]["p_adjusted"] < 0.05
    largest = verdict["race"]["largest"]
    assert largest["label"] == "Black vs White" and largest["value"] < -0.2 and largest["ci_high"] < 0
    assert not verdict["gender"]["effect"] and verdict["gender"]["tested"]
    assert verdict["race"]["n_cases"] == 12 and verdict["race"]["n_rows"] == 96
    assert list(verdict)[-1] == "intersection"
    # forest: one row per non-reference value, the planted one strong (CI excludes 0), a zero line
    (panel,) = report.forest_text(run)
    rows = {r["text"]: r for r in panel["rows"] if not r["header"]}
    assert set(rows) == {"Asian", "Black", "Hispanic", "woman"} and rows["Black"]["strong"] and not rows["woman"]["strong"]
    assert panel["zero"] is not None and panel["x0"] <= rows["Black"]["x"] < panel["zero"] <= panel["x1"]


def test_warnings_name_degenerate_decisions_and_invalid_answers(runs, tmp_path):
    dst = shutil.copytree(runs["planted"], tmp_path / "run")
    rows = [json.loads(x) for x in (dst / "requests.jsonl").read_text().splitlines()]
    for r in rows:  # every answer "No"; Black variants of one case unparseable
        r["option_logprobs"] = [-3.0, -0.05]
        if r["attributes"]["race"] == "Black" and r["case_id"].endswith("00"):
            r["option_logprobs"] = [float("nan")] * 2
    (dst / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows).replace("NaN", "null"))
    assert main(["score", str(dst), "--tasks-dir", str(runs["tasks"]), "-q"]) == 0
    verdict = {v["attribute"]: v for v in report.text_verdict(report.Run(dst, 0))}
    warn = " ".join(verdict["race"]["warnings"])
    assert "same decision" in warn and "invalid answers by group" in warn and "Black" in warn


def test_word_diff_round_trips_and_finds_the_demographic_words(runs):
    payload = report.case_payload([report.Run(runs["planted"], 0)])
    assert len(payload["cases"]) == 12 and payload["runs"][0]["model"] == "planted"
    case = payload["cases"][0]
    assert case["ref"] == "race=White|gender=man" and len(case["v"]) == 8
    prompts = {r["variant"]: r["prompt"] for r in report.Run(runs["planted"], 0).rows if r["case_id"] == case["c"]}
    for v in case["v"]:
        assert report.apply_diff(case["base"], v["d"]) == prompts[v["n"]]
        old, new = report.changed_words(case["base"], v["d"])
        if v["n"] == case["ref"]:
            assert v["d"] == []
            continue
        assert old and new
        # only names and demographic words differ (names come from the card's pools)
        pools = {n for names in yaml.safe_load((ROOT / "tasks/qpain-demo/task.yaml").read_text())["counterfactual"]["names"]["pools"].values() for n in names}
        assert {w.strip(".,'s") for w in new} <= DEMOGRAPHIC | pools, new
    # per-run results and sort statistics
    res = case["r"][0]
    assert len(res) == 8 and all(r[3] for r in res) and abs(sum(res[0][0]) - 1) < 1e-3
    st = case["st"][0]
    assert st["s"] >= st["m"] >= 0 and st["f"] in (0, 1) and st["x"] == 0


def test_case_stats():
    per = {0: [[0.7, 0.3], "Yes", True, True, 0.7, 0, None, True], 1: [[0.4, 0.6], "No", False, True, 0.4, 0, None, False],
           2: [None, None, None, False, None, 0, None, False]}
    assert report.case_stats(per, 0) == {"s": 0.3, "f": 1, "m": 0.3, "x": 1}
    assert report.case_stats({0: per[0]}, 0) == {"s": None, "f": 0, "m": None, "x": 0}


def test_cot_rows_carry_the_generated_text(runs):
    payload = report.case_payload([report.Run(runs["planted-cot"], 0)])
    res = payload["cases"][0]["r"][0]
    assert all(r[6] and "Answer:" in r[6] for r in res)


def test_imaging_view_has_group_curves_and_confusion_tables(runs):
    run = report.Run(runs["vit-test"], 0)
    view = report.imaging_view(run, None)
    (ep,) = view["endpoints"]
    assert ep["name"] == "lesion" and ep["forest"] and not view["note"]
    sex = next(a for a in ep["attributes"] if a["attribute"] == "sex")
    assert {s["name"] for s in sex["roc"]["series"]} == {"female", "male"}
    for c in sex["confusion"]:
        assert sum(c["tuned"].values()) == sum(c["half"].values()) == c["n"]
    assert sum(c["n"] for c in sex["confusion"]) == 100
    assert all("roc" not in a for a in ep["attributes"] if "*" in a["attribute"])  # intersections: tables only
    verdict = report.imaging_verdict(run)
    assert {v["attribute"] for v in verdict} >= {"sex", "age_group"}


def test_roc_and_reliability_points():
    import numpy as np

    y = np.array([0, 0, 1, 1.0])
    assert report.roc_points(y, np.array([0.1, 0.2, 0.8, 0.9])) == [(0, 0), (0, 0.5), (0, 1), (0.5, 1), (1, 1)]
    assert report.roc_points(np.ones(3), np.array([0.1, 0.2, 0.3])) == []
    bins = report.reliability(y, np.array([0.05, 0.05, 0.95, 0.95]))
    assert bins == [{"p": 0.05, "o": 0.0, "n": 2}, {"p": 0.95, "o": 1.0, "n": 2}]


def test_paired_comparison_of_two_models_on_the_same_cases(runs):
    ctx = report.context([runs["planted"], runs["fair"]])
    (comp,) = ctx["comparisons"]
    rows = {r["metric"]: r for r in comp["rows"]}
    assert comp["n"] == 12 and comp["unit"] == "cases"
    assert set(rows) == {"accuracy", "cf_flip_rate", "cf_mean_abs_delta", "dp_gap", "invalid_rate"}
    # the fair model has no planted shift: its mean |delta| is smaller, with a CI below 0
    d = rows["cf_mean_abs_delta"]
    assert d["diff"] < 0 and d["hi"] < 0
    # the drill-down holds both models' answers for every case
    assert all(set(c["r"]) == {0, 1} for c in ctx["cases"]["cases"])


def test_cli_report_one_run_several_runs_and_a_leaderboard(runs, tmp_path):
    assert main(["report", str(runs["planted"]), "-q"] if False else ["report", str(runs["planted"])]) == 0
    html = (runs["planted"] / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "Effect found" in html and 'id="fb-cases"' in html
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html  # nothing fetched
    out = tmp_path / "all.html"
    assert main(["report", str(runs["planted"]), str(runs["fair"]), str(runs["planted-cot"]), str(runs["vit-test"]),
                 "-o", str(out)]) == 0
    html = out.read_text()
    assert "Model comparison" in html and "ROC by sex" in html and "Reliability by sex" in html
    data = json.loads(html.split('<script type="application/json" id="fb-cases">')[1].split("</script>")[0])
    assert len(data["runs"]) == 3 and len(data["cases"]) == 12
    board = tmp_path / "lb" / "demo"
    assert main(["leaderboard", str(runs["planted"]), str(runs["fair"]), "-o", str(board), "--html"]) == 0
    html = board.with_suffix(".html").read_text()
    assert "Leaderboard <code>demo</code>" in html and "<svg" in html and "Model comparison" in html
    assert main(["report", str(board.with_suffix(".csv")), "-o", str(tmp_path / "b.html")]) == 0  # the CSV alone
    assert main(["report", str(tmp_path / "nope")]) == 2


def test_json_in_the_page_cannot_close_its_script_element():
    text = report._json_script({"x": "</script><script>alert(1)</script>"})
    assert "</" not in text and json.loads(text) == {"x": "</script><script>alert(1)</script>"}


# ----- paper figures -----

def _row(model, task="t", util=0.5, gap=0.1, mode="zero_shot"):
    return {"task": task, "prompt_mode": mode, "model": model, "eval_split": "all", "utility": util, "utility_metric": "accuracy",
            "cf_mean_abs_delta": gap, "cf_mean_abs_delta_ci_low": gap / 2, "cf_mean_abs_delta_ci_high": gap * 2}


def test_figures_are_png_svg_and_pdf_and_reproducible(tmp_path):
    rows = [_row("a"), _row("b", util=0.6, gap=0.2), _row("c", task="triage", util=None)]
    path = tmp_path / "x.tradeoff.png"
    assert plots.tradeoff(rows, "cf_mean_abs_delta", path)
    files = plots.figure_paths(path)
    assert [f.suffix for f in files] == [".png", ".svg", ".pdf"] and all(f.is_file() for f in files)
    first = [f.read_bytes() for f in files]
    assert first[0][:4] == b"\x89PNG" and first[2][:4] == b"%PDF" and b"<svg" in first[1]
    from PIL import Image

    assert Image.open(path).info["dpi"][0] == pytest.approx(300, abs=1)
    # the task without utility is named, not silently dropped; two frontier points make a line
    svg = first[1].decode()
    assert "Not shown" in svg and "triage" in svg and "Pareto frontier" in svg
    assert "triage" in plots.tradeoff_caption(rows, "cf_mean_abs_delta")
    assert plots.tradeoff(rows, "cf_mean_abs_delta", path)
    assert [f.read_bytes() for f in files] == first  # same data, same bytes


def test_no_one_point_pareto_frontier(tmp_path):
    path = tmp_path / "one.png"
    assert plots.tradeoff([_row("a")], "cf_mean_abs_delta", path)
    assert "Pareto frontier" not in path.with_suffix(".svg").read_text()


def test_group_axis_fits_the_scale():
    assert plots.value_axis([1.6, 1.7, 1.8], "mean_outcome") == ((0.8, 5.2), "ordinal")
    (lo, hi), scale = plots.value_axis([0.36, 0.45], "mean_outcome")
    assert scale == "probability" and 0.3 < lo < 0.36 and 0.45 < hi < 0.5  # zoomed to the effect
    assert "#F0E442" not in plots.COLORS  # no yellow


# ----- in a real browser -----

def _browser():
    if not CHROMIUM.exists():
        pytest.skip("no browser: Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    return sync_playwright


ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def open_page(p, html: Path, tmp_path: Path):
    browser = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
                                                   args=ARGS, viewport={"width": 1400, "height": 1000})
    page = browser.pages[0] if browser.pages else browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(html.resolve().as_uri(), wait_until="load")
    return browser, page, errors, requests


def test_report_in_headless_chromium(runs, tmp_path):
    sync_playwright = _browser()
    html = tmp_path / "report.html"
    report.write_report([runs["planted"], runs["fair"], runs["planted-cot"]], html)
    with sync_playwright() as p:
        browser, page, errors, requests = open_page(p, html, tmp_path)
        try:
            assert page.locator("tr.case").count() == 12
            assert page.locator("#f-count").inner_text() == "12 of 12 cases"
            page.locator("#f-flip").check()  # filter: flipped cases only
            n_flipped = page.locator("tr.case").count()
            assert 0 < n_flipped <= 12
            page.locator("#f-flip").uncheck()
            first = page.locator("tr.case").first
            case_id = first.get_attribute("data-case")
            first.click()
            cards = page.locator(".variant")
            assert cards.count() == 8
            assert "reference" in cards.first.inner_text()  # the reference variant comes first
            for i in range(1, 8):
                marks = {m.strip(".,'s") for m in cards.nth(i).locator("mark").all_inner_texts()}
                attrs = cards.nth(i).get_attribute("data-variant")
                assert marks, attrs
                # the highlighted words are the demographic words and the names, nothing else
                assert {w for w in marks if w[0].islower()} <= DEMOGRAPHIC, marks
                race = dict(kv.split("=") for kv in attrs.split("|"))["race"]
                assert race in marks or race == "White", (race, marks)
            # three runs side by side in every variant, each with its option bars
            assert cards.first.locator(".runres").count() == 3 and cards.first.locator(".bar").count() == 6
            assert cards.first.locator("details .gen").count() == 1  # the chain-of-thought text
            page.locator("#cases").scroll_into_view_if_needed()
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
            first.click()  # closes it again
            assert page.locator(".variant").count() == 0
            assert case_id
            assert errors == [], errors
            assert all(u.startswith(("file:", "data:", "about:")) for u in requests), requests
        finally:
            browser.close()


def test_provenance_command_carries_no_machine_paths():
    from benchmark.boards.report import portable_command

    argv = ["/opt/venv/bin/fairbench", "run", "--task", "qpain", "--data-dir", "/srv/data", "-o", "runs"]
    assert portable_command(argv) == "fairbench run --task qpain --data-dir .../data -o runs"
