"""A run killed part-way resumes without recomputing finished requests or losing/duplicating rows."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

from benchmark import registry
from benchmark.backends.hf import HFBackend
from benchmark.cli import main

RUN = "tiny__qpain-demo__zero_shot__seed0"


class CountingBackend(HFBackend):
    """Counts requests that reach the model; can crash after N batches."""

    calls = 0
    crash_after = None

    def score_choices(self, requests):
        if CountingBackend.crash_after is not None and CountingBackend.calls >= CountingBackend.crash_after:
            raise KeyboardInterrupt("simulated crash")
        CountingBackend.calls += len(requests)
        return super().score_choices(requests)


def _models(tmp_path, tiny_llama_dir, backend="counting", batch_size="auto"):
    f = tmp_path / "m.yaml"
    f.write_text(
        f"models:\n  tiny:\n    backend: {backend}\n    model: {tiny_llama_dir}\n    chat_template: true\n"
        f"    batch_size: {batch_size}\n"
    )
    return f


def test_interrupted_run_resumes_without_recompute(tmp_path, tiny_llama_dir, monkeypatch):
    import benchmark.engine as engine

    monkeypatch.setattr(engine, "CHUNK", 16)
    registry.register("backends", "counting", CountingBackend)
    try:
        f = _models(tmp_path, tiny_llama_dir)
        args = ["run", "--model", "tiny", "--output-dir", str(tmp_path), "--models-file", str(f), "-q"]
        CountingBackend.calls, CountingBackend.crash_after = 0, 48
        try:
            main(args)
        except KeyboardInterrupt:
            pass
        assert CountingBackend.calls == 48
        assert not (tmp_path / RUN / "results.json").exists()
        CountingBackend.calls, CountingBackend.crash_after = 0, None
        assert main(args) == 0
        assert CountingBackend.calls == 96 - 48  # only the unfinished requests
        manifest = json.loads((tmp_path / RUN / "manifest.json").read_text())
        assert manifest["timing"]["n_cached"] == 48 and manifest["timing"]["n_computed"] == 48
        CountingBackend.calls = 0
        assert main(args) == 0 and CountingBackend.calls == 0  # finished: no model call at all
        rows = [json.loads(x) for x in (tmp_path / RUN / "requests.jsonl").read_text().splitlines()]
        assert len(rows) == 96 and len({r["key"] for r in rows}) == 96
    finally:
        registry.unregister("backends", "counting")


def test_sigkill_then_resume(tmp_path, tiny_llama_dir):
    """A real `kill -9` of the CLI process between cache commits."""
    f = _models(tmp_path, tiny_llama_dir, backend="hf", batch_size=1)
    args = [sys.executable, "-c", "import sys; from benchmark.cli import main; sys.exit(main(sys.argv[1:]))",
            "run", "--model", "tiny", "--output-dir", str(tmp_path), "--models-file", str(f), "-q"]
    env = {**os.environ, "FAIRBENCH_TEST_CHUNK": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = tmp_path / RUN / "cache.sqlite"
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                done = sqlite3.connect(db).execute("SELECT COUNT(*) FROM results").fetchone()[0]
            except sqlite3.Error:
                done = 0
            if done >= 1:
                break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = sqlite3.connect(db).execute("SELECT COUNT(*) FROM results").fetchone()[0]
    assert 0 < before < 96, "the kill must land mid-run"
    assert main(args[3:]) == 0
    manifest = json.loads((tmp_path / RUN / "manifest.json").read_text())
    assert manifest["timing"].get("n_cached", 96) == before
    rows = [json.loads(x) for x in (tmp_path / RUN / "requests.jsonl").read_text().splitlines()]
    assert len(rows) == 96 and len({r["key"] for r in rows}) == 96


def test_second_process_on_the_same_run_stops_with_one_line(tmp_path, tiny_llama_dir, capsys):
    """Two processes on one run directory would interleave manifest and cache writes: the second stops
    with exit 2 before touching anything, and the first finishes normally. Rescoring is held the same way."""
    from benchmark.store import RunStore

    f = _models(tmp_path, tiny_llama_dir, backend="hf")
    args = ["run", "--model", "tiny", "--output-dir", str(tmp_path), "--models-file", str(f), "-q"]
    holder = RunStore(tmp_path / RUN)  # stands for a run in progress (an OS lock: another process sees the same)
    try:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "another fairbench process" in err and RUN in err
        assert not (tmp_path / RUN / "manifest.json").exists()  # nothing written by the refused process
    finally:
        holder.close()
    assert main(args) == 0
    holder = RunStore(tmp_path / RUN)
    try:
        assert main(["score", str(tmp_path / RUN)]) == 2
    finally:
        holder.close()
    assert main(["score", str(tmp_path / RUN)]) == 0
    # A shard holds its own lock, so shards of one run still work side by side.
    RunStore(tmp_path / "sharded", (0, 2)).close()
    a, b = RunStore(tmp_path / "sharded", (0, 2)), RunStore(tmp_path / "sharded", (1, 2))
    a.close(), b.close()
