"""The run path: RunSpec -> cases -> variants -> requests -> backend (cached) -> rows -> audits."""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .config import load_models
from .counterfactual import expand, variant_id
from .data import load_cases
from .errors import FairbenchError
from .evaluate import evaluate
from .hashing import sha256_files
from .manifest import base_manifest
from .registry import get
from .requests import Request, build_requests
from .seeding import seed_everything
from .shard import in_shard
from .store import RunStore
from .taskcard import load_task

# Requests per cache transaction: a kill loses at most one chunk of work.
CHUNK = int(os.environ.get("FAIRBENCH_TEST_CHUNK", "64"))


@dataclass
class RunSpec:
    """Everything that names an experiment. Same spec -> same run directory -> resume."""

    model: str = "smollm2-135m"
    task: str = "qpain-demo"
    prompt_mode: str | None = None
    seed: int = 0
    limit: int | None = None
    output_dir: Path = Path("runs")
    models_file: Path | None = None
    tasks_dir: Path | None = None
    data_dir: Path | None = None
    temperature: float = 0.0
    shard: tuple[int, int] | None = None  # (i, n): compute only shard i of n (see shard.py)
    cases_from: str | None = None  # use the held-out cases of this derived model (fair base comparison)
    argv: list[str] = field(default_factory=lambda: list(sys.argv))

    def run_id(self, mode: str, heldout: str | None = None) -> str:
        parts = [self.model, self.task, mode, f"seed{self.seed}"]
        if heldout:
            parts.append(f"heldout-{heldout[:8]}")
        if self.limit is not None:
            parts.append(f"limit{self.limit}")
        if self.temperature:
            parts.append(f"t{self.temperature:g}")
        return re.sub(r"[^A-Za-z0-9._+=-]", "_", "__".join(parts))


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} req/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=quiet,
        transient=False,
    )


def execute(requests: list[Request], keys: list[str], store: RunStore, make_backend, quiet: bool) -> dict:
    """Run the requests whose keys are not cached yet. Returns timing facts."""
    done = store.cache.keys()
    pending: dict[str, Request] = {}
    for req, key in zip(requests, keys):
        if key not in done and key not in pending:
            pending[key] = req
    timing = {"n_requests": len(requests), "n_cached": len(requests) - len(pending), "n_computed": len(pending)}
    if not pending:
        return timing
    backend = make_backend()
    timing["backend"] = backend.describe()
    items = list(pending.items())
    t0 = time.perf_counter()
    with _progress(quiet) as progress:
        bar = progress.add_task("scoring", total=len(items), rate="-")
        for start in range(0, len(items), CHUNK):
            chunk = items[start : start + CHUNK]
            by_method: dict[str, list[tuple[str, Request]]] = {}
            for key, req in chunk:
                by_method.setdefault(req.method, []).append((key, req))
            rows = {}
            for method, group in by_method.items():
                reqs = [r for _, r in group]
                results = backend.score_choices(reqs) if method == "choice" else backend.generate(reqs)
                rows.update({key: res.as_dict() for (key, _), res in zip(group, results)})
            store.cache.put_many(rows)
            elapsed = time.perf_counter() - t0
            completed = start + len(chunk)
            progress.update(bar, completed=completed, rate=f"{completed / max(elapsed, 1e-9):.1f}")
    timing["inference_seconds"] = round(time.perf_counter() - t0, 3)
    backend.close()
    return timing


def assemble_rows(requests: list[Request], keys: list[str], store: RunStore) -> list[dict]:
    cached = store.cache.get_many(set(keys))
    rows = []
    for index, (req, key) in enumerate(zip(requests, keys)):
        if key not in cached:
            raise FairbenchError(f"request {key[:12]} has no stored result; re-run the command to compute it.")
        rows.append(
            {
                "index": index,
                "key": key,
                "case_id": req.case_id,
                "question_id": req.question_id,
                "variant": variant_id(req.attributes),
                "attributes": req.attributes,
                "prompt": req.prompt,
                "options": req.options,
                "method": req.method,
                "meta": req.meta,
                **cached[key],
            }
        )
    return rows


def run(spec: RunSpec, quiet: bool = False) -> Path:
    if spec.limit is not None and spec.limit < 1:
        raise FairbenchError(f"--limit must be a positive number of cases, got {spec.limit}.")
    card = load_task(spec.task, spec.tasks_dir)
    if card.kind == "imaging":
        from .imaging import engine as imaging_engine

        return imaging_engine.run(spec, card, quiet=quiet)
    t_start = time.time()
    seed_everything(spec.seed)
    models = load_models(spec.models_file)
    model_spec = models.get(spec.model)
    backend_cls = get("backends", model_spec.backend)
    if getattr(backend_cls, "imaging", False):
        raise FairbenchError(
            f'task {card.name} is a text task but model "{model_spec.name}" uses the imaging backend '
            f'"{model_spec.backend}". Use a text model (fairbench list models).'
        )
    card = load_task(spec.task, spec.tasks_dir)
    mode = spec.prompt_mode or card.default_mode
    if mode not in card.prompt_modes:
        from .errors import unknown

        raise unknown("prompt mode", mode, card.prompt_modes, where=f"task {card.name}")
    fingerprint = backend_cls.fingerprint(model_spec)

    cases, report, files = load_cases(card, spec.data_dir)
    n_cases_total = len({c.case_id for c in cases})
    from .mitigations.split import restrict  # held-out cases of a derived model (issue 7)

    cases, split_info = restrict(cases, models.get(spec.cases_from) if spec.cases_from else model_spec, card.name,
                                 required=spec.cases_from is not None)
    if spec.limit is not None:
        from .cases import first_cases

        cases = first_cases(cases, spec.limit)  # N case ids, all their (pre-expanded) rows
    variants = expand(cases, card.counterfactual, spec.seed, report)
    requests = build_requests(
        card, variants, mode, spec.seed,
        max_new_tokens=model_spec.generation.max_new_tokens, temperature=spec.temperature,
    )
    keys = [r.key(fingerprint) for r in requests]

    run_dir = Path(spec.output_dir) / spec.run_id(mode, split_info.get("eval_case_ids_sha256"))
    store = RunStore(run_dir)
    manifest = base_manifest(spec.argv)
    manifest.update(
        {
            "run_id": run_dir.name,
            "status": "running",
            "model": {"name": model_spec.name, "fingerprint": fingerprint, "spec": model_spec.model_dump(mode="json", exclude={"extra"})},
            "task": {"name": card.name, "card_sha256": sha256_files([card.directory / "task.yaml"])["task.yaml"]},
            "data": {"files": sha256_files(files)},
            "prompt_mode": mode,
            "seed": spec.seed,
            "limit": spec.limit,
            "started_at": t_start,
        }
    )
    store.write_manifest(manifest)

    mine = [(r, k) for r, k in zip(requests, keys) if in_shard(k, spec.shard)]
    timing = execute([r for r, _ in mine], [k for _, k in mine], store, lambda: backend_cls(model_spec, seed=spec.seed, quiet=quiet), quiet)
    if spec.shard is not None:
        missing = len(set(keys) - store.cache.keys())
        timing["shard"] = f"{spec.shard[0]}/{spec.shard[1]}"
        if missing:
            # Other shards have not finished: the shard that completes the grid writes the results.
            manifest.update({"status": "partial", "n_missing": missing, "timing": timing})
            store.write_manifest(manifest)
            store.cache.close()
            return run_dir
    rows = assemble_rows(requests, keys, store)
    run_info = {
        "model": model_spec.name,
        "base_model": model_spec.base,
        "task": card.name,
        "prompt_mode": mode,
        "seed": spec.seed,
        "limit": spec.limit,
        "n_cases": len({c.case_id for c in cases}),
        "n_cases_available": n_cases_total,
        "model_fingerprint": fingerprint,
        **split_info,
    }
    data_report = {"quirks": sorted(set(report.quirks)), "skipped": report.skipped}
    scored, results = evaluate(rows, card, spec.seed, run_info, data_report)
    store.write_requests(scored)
    store.write_results(results)
    manifest.update({"status": "complete", "finished_at": time.time(), "timing": timing, "wall_seconds": round(time.time() - t_start, 3)})
    if store.repairs:  # damaged cache rows / requests.jsonl lines found and repaired (store.py)
        manifest["repairs"] = store.repairs
    store.write_manifest(manifest)
    store.cache.close()
    return run_dir
