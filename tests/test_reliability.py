"""Reliability: damaged caches and run files are detected, repaired and reported; a backend that
answers NaN/inf or empty text never crashes the audit; the same seed gives the same results."""

import json
import logging
import math
import sqlite3

import pytest

from benchmark import registry
from benchmark.requests import Result
from benchmark.backends.hf import HFBackend
from benchmark.cli import main

RUN = "tiny__qpain-demo__zero_shot__seed0__limit2"  # 2 cases x 8 variants = 16 requests
N = 16
# Batch size 1 vs auto changes padding and so fp32 rounding (~1e-7 on log-likelihoods). Stated tolerance:
# log-likelihoods 1e-5 absolute; every float of results.json 1e-4 absolute (p-values of the tiny random
# model, whose groups differ by ~1e-3, amplify that noise); every count, decision and name exact.
# Two runs with the same batch size are byte-identical.
LOGLIK_TOL = 1e-5
FLOAT_TOL = 1e-4


class CountingBackend(HFBackend):
    calls = 0

    def score_choices(self, requests):
        CountingBackend.calls += len(requests)
        return super().score_choices(requests)


class FaultyBackend(HFBackend):
    """Real scores, then every 4th answer replaced by NaN, +inf, -inf (all options) or empty text."""

    BAD = ([float("nan"), -0.5], [float("inf"), -1.0], [float("-inf"), float("-inf")])

    def score_choices(self, requests):
        out = super().score_choices(requests)
        for i, r in enumerate(out):
            if int(requests[i].key("x")[:8], 16) % 4 == 0:
                r.option_logprobs = list(self.BAD[int(requests[i].key("y")[:8], 16) % 3])
        return out

    def generate(self, requests):
        return [Result(None, "" if int(r.key("x")[:8], 16) % 2 else "Answer: Yes", r.prompt, 1, 0.0) for r in requests]


@pytest.fixture()
def backends():
    registry.register("backends", "counting", CountingBackend)
    registry.register("backends", "faulty", FaultyBackend)
    yield
    registry.unregister("backends", "counting")
    registry.unregister("backends", "faulty")


def _models(tmp_path, tiny_llama_dir, backend="counting", batch_size="auto"):
    f = tmp_path / f"m-{backend}-{batch_size}.yaml"
    f.write_text(f"models:\n  tiny:\n    backend: {backend}\n    model: {tiny_llama_dir}\n    chat_template: true\n    batch_size: {batch_size}\n")
    return f


def _run(out, models, *extra):
    CountingBackend.calls = 0
    assert main(["run", "--model", "tiny", "--limit", "2", "--output-dir", str(out), "--models-file", str(models), "-q", *extra]) == 0
    return out / RUN


def _stable_rows(run_dir):
    rows = [json.loads(x) for x in (run_dir / "requests.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("latency_s")
    return rows


def test_damaged_cache_row_is_recomputed(tmp_path, tiny_llama_dir, backends, caplog):
    models = _models(tmp_path, tiny_llama_dir)
    run_dir = _run(tmp_path, models)
    want = (run_dir / "results.json").read_bytes()
    db = sqlite3.connect(run_dir / "cache.sqlite")
    with db:
        key = db.execute("SELECT key FROM results ORDER BY key LIMIT 1").fetchone()[0]
        db.execute("UPDATE results SET payload = ? WHERE key = ?", ('{"option_logprobs": [-0.1', key))
    db.close()
    with caplog.at_level(logging.WARNING):
        _run(tmp_path, models, "--no-cache")  # the run's own cache is under test, not the shared one
    assert CountingBackend.calls == 1  # only the damaged row
    assert "1 damaged cached result(s) removed" in caplog.text
    assert (run_dir / "results.json").read_bytes() == want
    assert json.loads((run_dir / "manifest.json").read_text())["repairs"]


def test_unreadable_cache_is_restored_from_requests_jsonl(tmp_path, tiny_llama_dir, backends, caplog):
    models = _models(tmp_path, tiny_llama_dir)
    run_dir = _run(tmp_path, models)
    want = (run_dir / "results.json").read_bytes()
    for extra in ("-wal", "-shm"):
        (run_dir / f"cache.sqlite{extra}").unlink(missing_ok=True)
    (run_dir / "cache.sqlite").write_bytes(b"this is not a database" * 100)
    # ... and the last line of requests.jsonl was cut by a crash: only that request is recomputed.
    text = (run_dir / "requests.jsonl").read_text()
    (run_dir / "requests.jsonl").write_text(text[: text.rstrip("\n").rfind("\n") + 40])
    with caplog.at_level(logging.WARNING):
        _run(tmp_path, models, "--no-cache")  # the run's own cache is under test, not the shared one
    assert CountingBackend.calls == 1
    assert "moved to cache.sqlite.corrupt" in caplog.text and f"{N - 1} result(s) restored" in caplog.text
    assert "truncated or corrupt" in caplog.text
    assert (run_dir / "cache.sqlite.corrupt").is_file()
    assert (run_dir / "results.json").read_bytes() == want
    assert len((run_dir / "requests.jsonl").read_text().splitlines()) == N


def test_truncated_requests_jsonl_is_rewritten_without_model_calls(tmp_path, tiny_llama_dir, backends, caplog, capsys):
    models = _models(tmp_path, tiny_llama_dir)
    run_dir = _run(tmp_path, models)
    want = (run_dir / "requests.jsonl").read_bytes()
    (run_dir / "requests.jsonl").write_bytes(want[: len(want) // 2])
    capsys.readouterr()
    assert main(["score", str(run_dir), "-q"]) == 2  # `score` detects it: one line, names the file
    err = capsys.readouterr().err
    assert "requests.jsonl" in err and "truncated" in err and err.count("\n") == 1
    with caplog.at_level(logging.WARNING):
        _run(tmp_path, models)
    assert CountingBackend.calls == 0 and "truncated or corrupt" in caplog.text
    assert (run_dir / "requests.jsonl").read_bytes() == want


def test_nan_inf_and_empty_answers_are_counted_invalid(tmp_path, tiny_llama_dir, backends):
    models = _models(tmp_path, tiny_llama_dir, backend="faulty")
    run_dir = _run(tmp_path, models)
    rows = [json.loads(x) for x in (run_dir / "requests.jsonl").read_text().splitlines()]
    bad = [r for r in rows if any(not isinstance(x, float) or not math.isfinite(x) for x in r["option_logprobs"])]
    assert bad, "the fault injector must hit some rows"
    assert {str(x) for r in bad for x in r["option_logprobs"]} & {"nan", "inf", "-inf"}
    results = json.loads((run_dir / "results.json").read_text())
    assert results["n_requests"] == N and results["n_invalid"] == len(bad)
    assert results["invalid_rate"] == pytest.approx(len(bad) / N, abs=1e-6)
    # Generation: empty text is invalid too.
    assert main(["run", "--model", "tiny", "--limit", "2", "--prompt-mode", "cot", "--output-dir", str(tmp_path),
                 "--models-file", str(models), "-q"]) == 0
    gen = json.loads((tmp_path / "tiny__qpain-demo__cot__seed0__limit2" / "results.json").read_text())
    empty = [json.loads(x) for x in (tmp_path / "tiny__qpain-demo__cot__seed0__limit2" / "requests.jsonl").read_text().splitlines()]
    n_empty = sum(1 for r in empty if not r["raw_output"])
    assert 0 < n_empty < N and gen["n_invalid"] == n_empty


def _close(a, b, path="results", tol=FLOAT_TOL):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}", tol)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]", tol)
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, abs=tol, nan_ok=True), path
    else:
        assert a == b, path


def test_same_seed_same_results_across_runs_and_batch_sizes(tmp_path, tiny_llama_dir, backends):
    auto = _models(tmp_path, tiny_llama_dir, batch_size="auto")
    one = _models(tmp_path, tiny_llama_dir, batch_size=1)
    a = _run(tmp_path / "a", auto)
    b = _run(tmp_path / "b", auto)
    c = _run(tmp_path / "c", one)
    assert (a / "results.json").read_bytes() == (b / "results.json").read_bytes()
    assert _stable_rows(a) == _stable_rows(b)
    _close(json.loads((a / "results.json").read_text()), json.loads((c / "results.json").read_text()))
    _close(_stable_rows(a), _stable_rows(c), "requests", LOGLIK_TOL)
