"""``fairbench score RUN_DIR``: re-derive scores and audits from stored raw outputs only, for every kind."""

from __future__ import annotations

import json
from pathlib import Path

from .cards import load_task
from .errors import FairbenchError
from .kinds import kind_for
from .manifest import git_commit
from .store import RunStore, read_requests


def rescore(run_dir: Path, tasks_dir: Path | None = None) -> dict:
    run_dir = Path(run_dir)
    results_path = run_dir / "results.json"
    if not results_path.is_file():
        raise FairbenchError(f"{results_path} not found: {run_dir} is not a finished fairbench run directory.")
    store = RunStore(run_dir)  # held from the first read: a run still writing this directory stops us
    try:
        previous = json.loads(results_path.read_text(encoding="utf-8"))
        run_info = previous["run"]
        kind = kind_for(load_task(run_info["task"], tasks_dir))
        rows = [{k: v for k, v in row.items() if k != "scored"} for row in read_requests(run_dir)]
        run_info = {k: v for k, v in run_info.items() if k != "rescored"}
        scored, results = kind.evaluate(rows, run_info["seed"], run_info, previous.get("data_report", {}))
        # The model outputs stay those of the run's commit (manifest.json); the statistics are this code's.
        # Where the two commits differ it is recorded, so a board says both (leaderboard column git_commit:
        # "RUN (scored SCORER)"); rescoring with the run's own code stays byte-identical.
        manifest_path = run_dir / "manifest.json"
        run_git = json.loads(manifest_path.read_text(encoding="utf-8")).get("git") if manifest_path.is_file() else None
        scorer = git_commit()
        if scorer != run_git:
            results["run"]["rescored"] = {"git": scorer}
        store.write_requests(scored)
        store.write_results(results)
    finally:
        store.close()
    return results
