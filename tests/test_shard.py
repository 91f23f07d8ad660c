"""Sharding: deterministic disjoint split, shards completing one run directory, and merge."""

from __future__ import annotations

import hashlib
import json

import pytest

from benchmark.cli import main
from benchmark.errors import FairbenchError
from benchmark.shard import in_shard, parse_shard

RUN = "tiny__qpain-demo__zero_shot__seed0__limit2"


def test_parse_shard():
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) is None
    for bad in ("0/4", "5/4", "a/b", "3"):
        with pytest.raises(FairbenchError, match="--shard"):
            parse_shard(bad)


def test_shards_partition_keys():
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(300)]
    parts = [[k for k in keys if in_shard(k, (i, 3))] for i in (1, 2, 3)]
    assert sorted(sum(parts, [])) == sorted(keys)
    assert all(len(p) > len(keys) / 6 for p in parts)


def _run(tmp_path, models, out, *extra):
    # --no-cache: shards must compute their own requests (the shared request cache is tested elsewhere).
    return main(["run", "--model", "tiny", "--limit", "2", "-o", str(out), "--models-file", str(models), "-q", "--no-cache", *extra])


def _logprobs(run_dir):
    rows = [json.loads(x) for x in (run_dir / "requests.jsonl").read_text().splitlines()]
    return {r["key"]: r["option_logprobs"] for r in rows}


def test_shards_share_a_run_directory(tmp_path, tiny_models_file, capsys):
    assert _run(tmp_path, tiny_models_file, tmp_path / "whole") == 0
    assert _run(tmp_path, tiny_models_file, tmp_path / "sh", "--shard", "1/2") == 0
    run_dir = tmp_path / "sh" / RUN
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "partial" and 0 < manifest["n_missing"] < 16
    missing = manifest["n_missing"]
    assert not (run_dir / "results.json").exists()
    assert "shard 1/2 done" in capsys.readouterr().out
    assert _run(tmp_path, tiny_models_file, tmp_path / "sh", "--shard", "2/2") == 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["timing"]["n_computed"] == missing
    # Same rows; values equal up to float noise from different HF batch makeup.
    whole, sharded = _logprobs(tmp_path / "whole" / RUN), _logprobs(run_dir)
    assert whole.keys() == sharded.keys()
    for key, lps in whole.items():
        assert sharded[key] == pytest.approx(lps, abs=1e-4)
    rows = (run_dir / "requests.jsonl").read_text().splitlines()
    assert len(rows) == 16 and len({json.loads(r)["key"] for r in rows}) == 16


def test_merge_shards_from_other_machines(tmp_path, tiny_models_file, capsys):
    assert _run(tmp_path, tiny_models_file, tmp_path / "a", "--shard", "1/2") == 0
    assert _run(tmp_path, tiny_models_file, tmp_path / "b", "--shard", "2/2") == 0
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "b" / RUN), str(tmp_path / "a" / RUN)]) == 0
    added = int(capsys.readouterr().out.split(":")[-1].split()[0])
    assert added > 0
    assert _run(tmp_path, tiny_models_file, tmp_path / "b") == 0  # finishes without computing
    manifest = json.loads((tmp_path / "b" / RUN / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["timing"]["n_computed"] == 0
    assert main(["merge", str(tmp_path / "b" / RUN), str(tmp_path / "nowhere")]) == 2
