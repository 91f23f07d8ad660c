"""Real-server tests: llama.cpp's OpenAI-compatible server (``python -m llama_cpp.server``) on
127.0.0.1 with the embedded SmolLM2 GGUF, driven by `fairbench run` through the openai backend:
the completions and chat paths agree with the in-process llamacpp backend, and a run survives the
server being killed and restarted (no lost or duplicated row)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from llamacpp_support import LlamaServer, require_llama_cpp, smollm2_gguf

from benchmark.cli import main

pytestmark = pytest.mark.integration
LIMIT = 1  # 8 prompts: llama-cpp-python's server computes echo logprobs in Python (seconds per request)
# Same GGUF, same llama.cpp, same token sequences: measured |dP(yes)| ~1e-7; allow float noise.
TOL = 1e-3


@pytest.fixture(scope="module")
def server():
    require_llama_cpp()
    srv = LlamaServer(smollm2_gguf()).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The in-process llamacpp run of the same prompts."""
    require_llama_cpp()
    out = tmp_path_factory.mktemp("ref")
    assert main(["run", "--model", "smollm2-135m-llamacpp", "--limit", str(LIMIT), "-o", str(out), "-q"]) == 0
    return _rows(out / f"smollm2-135m-llamacpp__qpain-demo__zero_shot__seed0__limit{LIMIT}")


def _rows(run_dir):
    return {r["prompt"]: r for r in (json.loads(x) for x in (run_dir / "requests.jsonl").read_text().splitlines())}


def _models_file(path, base_url, endpoint, **extra):
    gguf = smollm2_gguf()
    lines = [
        "models:", "  srv:", "    backend: openai", f"    base_url: {base_url}", "    model: smollm2",
        "    chat_template: true", f"    scoring_endpoint: {endpoint}", "    max_concurrency: 2",
    ]
    if endpoint == "completions":
        lines.append(f"    tokenizer: {gguf}")
    if extra:
        lines.append(f"    extra: {json.dumps(extra)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_server_agrees_with_in_process(server, reference, tmp_path, endpoint):
    models = _models_file(tmp_path / "models.yaml", server.base_url, endpoint)
    assert main(["run", "--model", "srv", "--limit", str(LIMIT), "-o", str(tmp_path), "--models-file", str(models), "-q"]) == 0
    rows = _rows(tmp_path / f"srv__qpain-demo__zero_shot__seed0__limit{LIMIT}")
    assert rows.keys() == reference.keys() and len(rows) == 8 * LIMIT
    deltas = []
    for prompt, row in rows.items():
        assert row["scored"]["valid"] and row["extra"]["endpoint"] == endpoint
        assert not row["extra"].get("choice_fallback"), row["extra"]
        if endpoint == "completions":
            assert row["rendered_prompt"] == reference[prompt]["rendered_prompt"]
        deltas.append(abs(row["scored"]["probs"][0] - reference[prompt]["scored"]["probs"][0]))
    print(f"{endpoint}: max |dP(yes)| server vs in-process {max(deltas):.2e}")
    assert max(deltas) < TOL, max(deltas)


def _cached(run_dir) -> int:
    db = run_dir / "cache.sqlite"
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


def test_server_killed_mid_run_then_resumed(tmp_path, reference):
    require_llama_cpp()
    srv = LlamaServer(smollm2_gguf()).start()
    try:
        limit = 2  # chat path: one cheap request per row
        models = _models_file(tmp_path / "models.yaml", srv.base_url, "chat", max_retries=1, backoff_s=0.1)
        args = ["run", "--model", "srv", "--limit", str(limit), "-o", str(tmp_path), "--models-file", str(models), "-q"]
        run_dir = tmp_path / f"srv__qpain-demo__zero_shot__seed0__limit{limit}"
        env = {**os.environ, "FAIRBENCH_TEST_CHUNK": "2"}
        proc = subprocess.Popen([sys.executable, "-c", "from benchmark.cli import entry; entry()", *args],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while _cached(run_dir) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        srv.kill()  # mid-run: some chunks stored, the rest not
        _, err = proc.communicate(timeout=120)
        n_before = _cached(run_dir)
        assert proc.returncode == 2, err
        assert "gave up after 2 attempts" in err and "Traceback" not in err
        assert 2 <= n_before < 8 * limit
        srv.start()
        assert main(args) == 0
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["timing"]["n_cached"] == n_before and manifest["timing"]["n_computed"] == 8 * limit - n_before
        rows = [json.loads(x) for x in (run_dir / "requests.jsonl").read_text().splitlines()]
        assert len(rows) == 8 * limit and len({r["key"] for r in rows}) == 8 * limit
        assert all(r["scored"]["valid"] for r in rows)
        by_prompt = {r["prompt"]: r for r in rows}
        for prompt, ref in reference.items():  # the first cases' rows equal an uninterrupted run's
            assert by_prompt[prompt]["scored"]["probs"][0] == pytest.approx(ref["scored"]["probs"][0], abs=TOL)
    finally:
        srv.stop()
