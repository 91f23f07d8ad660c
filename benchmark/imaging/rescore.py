"""``fairbench score`` for imaging runs: thresholds and audits from the stored prediction rows."""

from __future__ import annotations

from pathlib import Path

from ..store import RunStore, read_requests
from .evaluate import evaluate


def rescore_imaging(run_dir: Path, card, previous: dict) -> dict:
    rows = read_requests(run_dir)
    run_info = previous["run"]
    results = evaluate(rows, card, run_info["seed"], run_info, previous.get("data_report", {}))
    store = RunStore(run_dir)
    store.write_results(results)
    store.cache.close()
    return results
