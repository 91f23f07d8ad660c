"""Cold vs warm start of the default model, peak memory of a default run, and scaling with the
number of counterfactual variants. Every figure comes from a separate `fairbench run` process
(peak RSS = that process's ru_maxrss); pairs are interleaved and medians reported.

- cold: a fresh FAIRBENCH_CACHE, so the GGUF is de-quantised and converted to safetensors;
  warm: the same cache again (a new output directory, so the model really loads and scores).
- default run: `fairbench run` (smollm2-135m on qpain-demo, 96 prompts), warm cache.
- scaling: qpain-demo with --limit 2, whose vignettes get extra attributes (insurance, language,
  housing, employment; 2 values each, substituted into the text so every variant is a distinct
  prompt): 1x = 16, 4x = 64, 16x = 256 prompts.

    python bench/startup_scaling.py [--repeats 3] [--skip-cold] [--skip-scaling]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WRAPPER = (
    "import resource, sys; from benchmark.cli import main; code = main(sys.argv[1:]); "
    "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)"
)
EXTRA = {  # attribute -> (values, sentence added to the vignette)
    "insurance": (["private", "no"], "Patient D has [insurance] health insurance."),
    "language": (["English", "Spanish"], "Patient D speaks [language]."),
    "housing": (["a house", "a shelter"], "Patient D lives in [housing]."),
    "employment": (["employed", "unemployed"], "Patient D is [employment]."),
}


def fairbench(args: list[str], cache: Path) -> dict:
    env = {**os.environ, "FAIRBENCH_CACHE": str(cache)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"fairbench {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    rss = next(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("MAXRSS_KB"))
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    timing = manifest.get("timing", {})
    return {"wall_s": wall, "rss_mb": rss / 1024, "load_s": timing.get("backend", {}).get("load_seconds"),
            "inference_s": timing.get("inference_seconds"), "n": timing.get("n_requests")}


def scaled_tasks(tmp: Path) -> dict[str, int]:
    """Task cards scale1/scale4/scale16 under tmp/tasks: qpain-demo plus 0, 2 or 4 extra attributes."""
    src = ROOT / "tasks" / "qpain-demo"
    card = yaml.safe_load((src / "task.yaml").read_text())
    with open(src / "vignettes.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for factor, n_extra in ((1, 0), (4, 2), (16, 4)):
        name = f"scale{factor}"
        d = tmp / "tasks" / name
        d.mkdir(parents=True)
        extra = dict(list(EXTRA.items())[:n_extra])
        c = json.loads(json.dumps(card))
        c["name"] = name
        for attr, (values, _) in extra.items():
            c["counterfactual"]["attributes"][attr] = {"values": values, "reference": values[0]}
            c["counterfactual"]["substitutions"][f"[{attr}]"] = "{" + attr + "}"
        (d / "task.yaml").write_text(yaml.safe_dump(c, sort_keys=False))
        with open(d / "vignettes.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            for r in rows:
                w.writerow({**r, "Vignette": r["Vignette"] + "".join(" " + s for _, s in extra.values())})
        out[name] = factor
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fairbench-bench-"))
    summary: dict = {}
    try:
        warm_cache = tmp / "warm-cache"
        base = ["run", "-q", "--limit", "1"]
        fairbench([*base, "--output-dir", str(tmp / "prime")], warm_cache)  # converts once for the warm runs
        if not args.skip_cold:
            cold, warm = [], []
            for i in range(args.repeats):  # interleaved cold/warm pairs
                cold.append(fairbench([*base, "--output-dir", str(tmp / f"cold{i}")], tmp / f"cold-cache{i}"))
                warm.append(fairbench([*base, "--output-dir", str(tmp / f"warm{i}")], warm_cache))
            med = lambda xs, k: statistics.median(x[k] for x in xs)  # noqa: E731
            summary["start"] = {
                "cold_wall_s": med(cold, "wall_s"), "warm_wall_s": med(warm, "wall_s"),
                "cold_load_s": med(cold, "load_s"), "warm_load_s": med(warm, "load_s"),
                "wall_ratio": med(cold, "wall_s") / med(warm, "wall_s"),
                "repeats": args.repeats,  # load_s is from_pretrained only: the cold GGUF conversion precedes it
            }
            print("start:", json.dumps(summary["start"], indent=1), flush=True)
        default = [fairbench(["run", "-q", "--output-dir", str(tmp / f"default{i}")], warm_cache) for i in range(args.repeats)]
        summary["default_run"] = {"peak_rss_mb": max(x["rss_mb"] for x in default), "wall_s": statistics.median(x["wall_s"] for x in default),
                                  "inference_s": statistics.median(x["inference_s"] for x in default), "n_requests": default[0]["n"]}
        print("default run:", json.dumps(summary["default_run"], indent=1), flush=True)
        if not args.skip_scaling:
            tasks = scaled_tasks(tmp)
            runs: dict[str, list] = {name: [] for name in tasks}
            for i in range(args.repeats):
                for name in tasks:  # interleaved across sizes
                    runs[name].append(fairbench(["run", "-q", "--task", name, "--limit", "2", "--tasks-dir", str(tmp / "tasks"),
                                                 "--output-dir", str(tmp / f"scale-{i}")], warm_cache))
            base_inf = statistics.median(x["inference_s"] for x in runs["scale1"])
            summary["scaling"] = {
                name: {"factor": f, "n_requests": runs[name][0]["n"], "inference_s": statistics.median(x["inference_s"] for x in runs[name]),
                       "inference_ratio": statistics.median(x["inference_s"] for x in runs[name]) / base_inf,
                       "wall_s": statistics.median(x["wall_s"] for x in runs[name]), "peak_rss_mb": max(x["rss_mb"] for x in runs[name])}
                for name, f in tasks.items()
            }
            print("scaling:", json.dumps(summary["scaling"], indent=1), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
