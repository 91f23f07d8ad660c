"""Issue 24, one cache story: the shared request cache lives where the docs say (the user cache,
``~/.cache/fairbench/requests``), ``fairbench cache info`` shows its location, size and rows per model
fingerprint, ``fairbench cache clear [--model M]`` empties it, and a run says how many of its rows
came from it and from where."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from benchmark.cli import main
from benchmark.store import request_cache_location

ROOT = Path(__file__).resolve().parent.parent


def test_default_location_is_the_documented_user_cache(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("FAIRBENCH_REQUEST_CACHE", raising=False)
    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path / "c"))
    path, why = request_cache_location()
    assert (path, why) == (tmp_path / "c" / "requests" / "requests.sqlite", "default")
    monkeypatch.delenv("FAIRBENCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert request_cache_location()[0] == tmp_path / "xdg" / "fairbench" / "requests" / "requests.sqlite"
    assert request_cache_location(tmp_path / "mine") == (tmp_path / "mine" / "requests.sqlite", "--cache-dir")
    # The help text and the docs state the same default (and no longer OUTPUT_DIR/.cache).
    assert main(["run", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "~/.cache/fairbench/requests" in help_text and "OUTPUT_DIR/.cache" not in help_text
    docs = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))])
    assert "OUTPUT_DIR/.cache" not in docs and "~/.cache/fairbench/requests" in docs


def _run(tmp_path, models, out: str, *extra: str) -> dict:
    assert main(["run", "--model", "tiny", "--limit", "1", "-o", str(tmp_path / out), "--models-file", str(models), *extra]) == 0
    return json.loads(next((tmp_path / out).iterdir()).joinpath("manifest.json").read_text())


def test_info_rows_per_fingerprint_reuse_is_said_and_clear(tmp_path, tiny_models_file, capsys):
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "request-cache" / "requests.sqlite") in out and "$FAIRBENCH_REQUEST_CACHE" in out and "empty" in out

    first = _run(tmp_path, tiny_models_file, "a")
    assert first["timing"]["n_computed"] == 8
    capsys.readouterr()
    second = _run(tmp_path, tiny_models_file, "b")  # a fresh output directory: every row comes from the cache
    assert second["timing"]["n_reused"] == 8 and second["timing"]["n_computed"] == 0
    said = " ".join(capsys.readouterr().out.split())
    assert f"8 requests: 0 computed, 8 from the request cache {tmp_path / 'request-cache' / 'requests.sqlite'}" in said

    assert main(["cache", "info"]) == 0
    info = capsys.readouterr().out
    fp = first["model"]["fingerprint"]
    row = next(line for line in info.splitlines() if "tiny" in line)
    assert fp in row and " 8 " in row  # model, its fingerprint, 8 rows
    assert "8 rows" in info

    # Clearing another model is a usage error naming the fix; clearing this one by fingerprint prefix works.
    assert main(["cache", "clear", "--model", "nonesuch"]) == 2
    assert "fairbench cache info" in capsys.readouterr().err
    assert main(["cache", "clear", "--model", fp[:8]]) == 0
    assert "removed 8 rows" in capsys.readouterr().out
    third = _run(tmp_path, tiny_models_file, "c")
    assert third["timing"]["n_computed"] == 8 and third["timing"]["n_reused"] == 0
    assert main(["cache", "clear"]) == 0
    assert "removed 8 rows" in capsys.readouterr().out


def test_no_cache_run_says_so(tmp_path, tiny_models_file, capsys):
    _run(tmp_path, tiny_models_file, "a", "--no-cache")
    assert "8 requests: 8 computed, request cache off (--no-cache)" in " ".join(capsys.readouterr().out.split())


def test_cache_written_before_origins_were_recorded_still_opens(tmp_path, capsys):
    path = tmp_path / "old" / "requests.sqlite"
    path.parent.mkdir()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE results (key TEXT PRIMARY KEY, payload TEXT NOT NULL)")
    payload = json.dumps({k: None for k in ("option_logprobs", "raw_output", "rendered_prompt", "n_prompt_tokens", "latency_s", "extra")})
    conn.executemany("INSERT INTO results VALUES (?, ?)", [("k1", payload), ("k2", payload)])
    conn.commit()
    conn.close()
    assert main(["cache", "info", "--cache-dir", str(path.parent)]) == 0
    out = capsys.readouterr().out
    assert "(--cache-dir)" in out and "2 rows" in out and "(unrecorded)" in out
    assert main(["cache", "clear", "--cache-dir", str(path.parent)]) == 0
    assert "removed 2 rows" in capsys.readouterr().out
