"""Fake `run --seeds N` directories for the multi-seed board tests: per-seed results.json files with
chosen headline metrics, and the summary.json that `benchmark.seeds.summarize` writes for them."""

from __future__ import annotations

from pathlib import Path

from benchmark.seeds import summarize
from benchmark.store import dumps


def fake_seeds(root: Path, model: str, per_seed: list[dict]) -> Path:
    """One seed run per entry of ``per_seed`` (metric name -> value, None = missing in that seed);
    returns the seeds directory ``root/<model>__seeds``."""
    dirs, results = [], []
    for seed, metrics in enumerate(per_seed):
        d = root / f"{model}__seed{seed}"
        d.mkdir(parents=True)
        r = {"schema_version": 2, "kind": "imaging-test", "run": {"model": model, "task": "synth-xray", "seed": seed, "base_model": None},
             "n_test": 100, "metrics": {k: {"value": v} for k, v in metrics.items()}}
        (d / "results.json").write_text(dumps(r))
        dirs.append(d)
        results.append(r)
    out = root / f"{model}__seeds"
    out.mkdir()
    (out / "summary.json").write_text(dumps(summarize(results, dirs)))
    return out


def auc_dp_seeds(root: Path, model: str, values: list[tuple[float, float]]) -> Path:
    """Seeds given as (AUC, dp_gap) pairs; accuracy, eod and worst_group_auc follow from them."""
    return fake_seeds(root, model, [{"accuracy": auc - 0.1, "auc": auc, "dp_gap": dp, "eod": dp, "worst_group_auc": auc - 0.05}
                                    for auc, dp in values])
