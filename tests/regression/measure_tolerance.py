"""Measure how far the model outputs of the recorded runs move across kernel paths, and write
golden/tolerances.json (read by test_regression.py::test_run_matches_golden).

    python tests/regression/measure_tolerance.py            # every model run, the integration demo included

Each kernel path is one pytest process running test_run_matches_golden with FAIRBENCH_REGRESSION_MEASURE
set, so it records the largest |fresh - stored| of every model float (option log-probabilities in nats,
image probabilities) instead of asserting. Kernel paths: torch's dispatch levels
(ATEN_CPU_CAPABILITY=default|avx2|avx512) and the instruction-set caps of oneDNN and MKL
(ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2: what an AVX2-only AMD machine runs). llama.cpp
needs no entry: the Makefile builds one portable instruction set for every machine.

The tolerance of a run is 10 times the largest difference measured on any path (a margin for paths not
measured here: other thread counts, other CPUs), and at least the float32 unit roundoff 2**-24 ≈ 6e-8
where a run moved at all; 0 where no path moved it (the planted backend computes in Python).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import record as R  # noqa: E402

PATHS = {
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "aten-avx512": {"ATEN_CPU_CAPABILITY": "avx512"},
    "avx2-machine": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
MODEL_RUNS = [r.name for r in R.RUNS if not r.planted]
FLOAT32_EPS = 2.0**-24
MARGIN = 10.0
NOTE = ("written by tests/regression/measure_tolerance.py: per run, the largest |fresh - stored| model output "
        "(nats or probability) on each kernel path; tolerance = max(2**-24, margin * largest), 0 where nothing moved")


def measure(path_env: dict) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "measure.jsonl"
        env = {**os.environ, **path_env, "FAIRBENCH_REGRESSION_MEASURE": str(out)}
        ids = " or ".join(MODEL_RUNS)
        cmd = [sys.executable, "-m", "pytest", str(HERE / "test_regression.py"), "-q", "-p", "no:cacheprovider",
               "-k", f"test_run_matches_golden and ({ids})", "--rootdir", str(R.ROOT)]
        subprocess.run(cmd, env=env, check=False)
        rows = [json.loads(x) for x in out.read_text().splitlines()] if out.is_file() else []
    return {r["run"]: r["max_abs_diff"] for r in rows}


def main() -> int:
    measured = {label: measure(env) for label, env in PATHS.items()}
    runs = {}
    for name in MODEL_RUNS:
        seen = {label: m[name] for label, m in measured.items() if name in m}
        worst = max(seen.values(), default=0.0)
        tol = 0.0 if worst == 0 else max(FLOAT32_EPS, MARGIN * worst)
        runs[name] = {"tolerance": float(f"{tol:.2g}") if tol else 0.0, "max_abs_diff_by_path": seen}
    doc = {"note": NOTE, "margin": MARGIN, "paths": PATHS,
           "measured_on": R.kernel_signature(), "runs": runs}
    R.TOLERANCES.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
