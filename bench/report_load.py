"""Size and load time of the HTML report of a 10,000-request run (README: Report).

Builds a synthetic counterfactual run without a model: the bundled qpain-demo vignettes repeated to
1,250 cases x 8 variants = 10,000 requests, answered by the planted test backend (tests/planted.py),
then writes its report and opens it in headless Chromium (Debian's /usr/bin/chromium via playwright),
timing navigation to the load event, opening a case and paging the case list.

    python bench/report_load.py [--cases 1250] [--out /tmp/report-load]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def synthetic_run(out: Path, n_cases: int) -> Path:
    import planted
    from benchmark.cli import main
    from benchmark.registry import register

    tasks = out / "tasks"
    shutil.copytree(ROOT / "tasks" / "qpain-demo", tasks / "big", dirs_exist_ok=True)
    card = yaml.safe_load((tasks / "big" / "task.yaml").read_text())
    card.update({"name": "big"})
    card.setdefault("audit", {})["n_boot"] = 200
    (tasks / "big" / "task.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    src = tasks / "big" / "vignettes.csv"
    with open(src, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(src, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for i in range(n_cases):
            r = dict(rows[i % len(rows)])
            r["Vignette"] = r["Vignette"].replace("-year-old", f"-year-old (case {i})", 1)
            w.writerow(r)
    models = out / "models.yaml"
    models.write_text("models:\n  planted:\n    backend: planted\n    model: none\n")
    register("backends", "planted", planted.PlantedBackend)
    planted.SHIFTS = {"race": {"Black": -0.1}}
    assert main(["run", "-m", "planted", "-t", "big", "--models-file", str(models), "--tasks-dir", str(tasks),
                 "-o", str(out / "runs"), "-q"]) == 0
    return next(d for d in (out / "runs").iterdir() if d.name.startswith("planted__big"))


def measure(html: Path) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(profile, executable_path="/usr/bin/chromium", headless=True, args=ARGS,
                                                   viewport={"width": 1400, "height": 1000})
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        out = {}
        for attempt in range(3):
            t = time.perf_counter()
            page.goto(html.resolve().as_uri(), wait_until="load")
            out.setdefault("load_s", []).append(time.perf_counter() - t)
            nav = page.evaluate("() => performance.getEntriesByType('navigation')[0].toJSON()")
            out.setdefault("load_event_ms", []).append(nav["loadEventEnd"])
        t = time.perf_counter()
        page.locator("tr.case").first.click()
        page.locator(".variant").first.wait_for()
        out["open_case_s"] = time.perf_counter() - t
        t = time.perf_counter()
        page.locator("#p-next").click()
        page.locator("#f-sort").select_option("s")
        out["page_and_sort_s"] = time.perf_counter() - t
        out["errors"] = errors
        ctx.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=1250)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "report-load")
    a = ap.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    a.out.mkdir(parents=True)
    t = time.perf_counter()
    run_dir = synthetic_run(a.out, a.cases)
    print(f"synthetic run: {sum(1 for _ in open(run_dir / 'requests.jsonl'))} requests in {time.perf_counter() - t:.1f} s")
    from benchmark.boards.report import write_report

    t = time.perf_counter()
    html = write_report([run_dir], a.out / "report.html")
    print(f"report written in {time.perf_counter() - t:.1f} s: {html.stat().st_size / 1e6:.2f} MB "
          f"(requests.jsonl {(run_dir / 'requests.jsonl').stat().st_size / 1e6:.1f} MB)")
    m = measure(html)
    print("navigation to load event (3 loads): " + ", ".join(f"{x:.0f} ms" for x in m["load_event_ms"])
          + "; wall " + ", ".join(f"{x:.2f} s" for x in m["load_s"]))
    print(f"open a case: {m['open_case_s'] * 1000:.0f} ms; next page + re-sort: {m['page_and_sort_s'] * 1000:.0f} ms; page errors: {m['errors']}")


if __name__ == "__main__":
    main()
