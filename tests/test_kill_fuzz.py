"""Kill-and-resume fuzz: `fairbench run` is SIGKILLed at seeded random points (during start-up,
between cache commits, while results are written), then resumed. The final requests.jsonl and
results.json must equal those of an uninterrupted run: no lost, duplicated or corrupted row.
(``latency_s``, the only timing field of a row, is excluded from the comparison.)"""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import benchmark.engine as engine
from benchmark.cli import main

RUN = "tiny__qpain-demo__zero_shot__seed0__limit12"
N = 96  # 12 cases x 8 variants
TRIALS = 10


def _rows(run_dir):
    rows = [json.loads(x) for x in (run_dir / "requests.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("latency_s")
    return rows


def _count(db) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05)
        try:
            return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return -1


@pytest.mark.integration
def test_sigkill_fuzz_then_resume(tmp_path, tiny_llama_dir, monkeypatch):
    models = tmp_path / "m.yaml"
    models.write_text(f"models:\n  tiny:\n    backend: hf\n    model: {tiny_llama_dir}\n    chat_template: true\n    batch_size: 1\n")
    # --no-cache: every trial computes (a shared request cache would serve the rows of the reference run).
    args = ["run", "--model", "tiny", "--limit", "12", "--models-file", str(models), "-q", "--no-cache"]
    monkeypatch.setattr(engine, "CHUNK", 1)
    assert main([*args, "--output-dir", str(tmp_path / "reference")]) == 0
    ref = tmp_path / "reference" / RUN
    want_rows, want_results = _rows(ref), (ref / "results.json").read_bytes()

    env = {**os.environ, "FAIRBENCH_TEST_CHUNK": "1"}
    landed = []
    for trial in range(TRIALS):
        rng = random.Random(1000 + trial)
        # Mostly an immediate kill once `target` rows are committed (mid-run even on a fast idle
        # machine); some trials wait up to 0.3 s, to also land in result writing or after the end.
        target = rng.randint(0, N)
        delay = rng.uniform(0.0, 0.3) if rng.random() < 0.3 else rng.uniform(0.0, 0.005)
        out = tmp_path / f"trial{trial}"
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from benchmark.cli import main; sys.exit(main(sys.argv[1:]))",
             *args, "--output-dir", str(out)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        db = out / RUN / "cache.sqlite"
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            if (target == 0 and db.exists()) or (db.exists() and _count(db) >= target):
                break
            time.sleep(0.003)
        time.sleep(delay)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = _count(db) if db.exists() else 0
        landed.append((target, round(delay, 3), done, alive))
        # Resume (twice: the second must be a no-op) and compare with the uninterrupted run.
        assert main([*args, "--output-dir", str(out)]) == 0
        assert main([*args, "--output-dir", str(out)]) == 0
        got = out / RUN
        rows = _rows(got)
        assert len(rows) == N and len({r["key"] for r in rows}) == N, f"trial {trial}: {landed[-1]}"
        assert rows == want_rows, f"trial {trial}: rows differ after kill at {landed[-1]}"
        assert (got / "results.json").read_bytes() == want_results, f"trial {trial}: results differ"
    print("kills (target, delay, committed rows, alive):", landed)
    mid_run = [x for x in landed if x[3] and 0 < x[2] < N]
    assert len(mid_run) >= 3, f"too few kills landed between commits: {landed}"
