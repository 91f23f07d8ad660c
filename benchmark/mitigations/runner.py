"""``fairbench mitigate``: split the task's cases, let the method fit on the mitigation cases, write
the artifact manifest and register the derived model(s) ``<base>+<method>``."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from ..config import ModelSpec, load_models
from ..data import load_cases
from ..derived import register_derived
from ..errors import FairbenchError
from ..hashing import sha256_file, sha256_files
from ..manifest import base_manifest
from ..paths import cache_dir
from ..registry import get
from ..seeding import seed_everything
from ..store import dumps, write_atomic
from ..taskcard import load_task
from ..yamlio import parse_model, read_yaml
from .base import Context, Mitigation, TaskData
from .split import SPLIT_FILE, split_cases


def load_config(method: Mitigation, path: Path | None):
    data = {} if path is None else (read_yaml(Path(path)) or {})
    if not isinstance(data, dict):
        raise FairbenchError(f"{path}: expected a mapping of {method.name} settings.")
    return parse_model(method.Config, data, Path(path) if path else Path(f"<{method.name} defaults>"))


def derived_entry(base: ModelSpec, fields: dict, split_file: Path, description: str) -> dict:
    entry = base.model_dump(mode="json", exclude={"name"}, exclude_defaults=True)
    entry.update(fields)
    entry.update({"base": base.name, "eval_cases": str(split_file), "description": description})
    return entry


def mitigate(
    method_name: str,
    model: str,
    task: str,
    config_file: Path | None = None,
    seed: int = 0,
    eval_fraction: float = 0.5,
    output_dir: Path | None = None,
    models_file: Path | None = None,
    tasks_dir: Path | None = None,
    data_dir: Path | None = None,
    prompt_mode: str | None = None,
    quiet: bool = True,
) -> list[str]:
    """Returns the names of the registered derived models."""
    t0 = time.time()
    seed_everything(seed)
    method_cls = get("mitigations", method_name)
    method: Mitigation = method_cls() if isinstance(method_cls, type) else method_cls
    config = load_config(method, config_file)
    models = load_models(models_file)
    base = models.get(model)
    if base.base is not None:
        raise FairbenchError(f'model "{model}" is itself derived (from {base.base}); mitigate its base model instead.')
    card = load_task(task, tasks_dir)
    if getattr(card, "kind", "text") == "imaging":  # train/val only, recipe models (mitigations/imaging.py)
        from .imaging import mitigate_imaging

        return mitigate_imaging(method, config, base, card, models, seed, output_dir, data_dir, quiet, t0)
    if getattr(method, "imaging", False):
        raise FairbenchError(f"mitigation {method.name} works on imaging tasks only; task {card.name} is a text task.")
    mode = prompt_mode or card.default_mode
    if mode not in card.prompt_modes:
        from ..errors import unknown

        raise unknown("prompt mode", mode, card.prompt_modes, where=f"task {card.name}")
    cases, report, files = load_cases(card, data_dir)
    split = split_cases(cases, card, eval_fraction, seed)
    keep = set(split["mitigation_case_ids"])
    data = TaskData(card, [c for c in cases if c.case_id in keep], report, files, mode)

    out = Path(output_dir) if output_dir else cache_dir() / "mitigations" / f"{model}+{method.name}__{card.name}__seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    split_file = out / SPLIT_FILE
    write_atomic(split_file, dumps(split))
    artifact = method.apply(base, data, config, Context(out, seed, models, quiet))

    backend_cls = get("backends", base.backend)
    registered = []
    for suffix, fields in artifact.models.items():
        name = f"{model}+{suffix}"
        register_derived(name, derived_entry(base, fields, split_file.resolve(), f"{suffix} mitigation of {model} on {card.name} (seed {seed})"))
        registered.append(name)
    manifest = base_manifest(list(sys.argv))
    manifest.update(
        {
            "method": method.name,
            "config": config.model_dump(mode="json"),
            "seed": seed,
            "base_model": {"name": base.name, "fingerprint": backend_cls.fingerprint(base), "spec": base.model_dump(mode="json")},
            "task": {"name": card.name, "prompt_mode": mode, "card_sha256": sha256_file(card.directory / "task.yaml")},
            "data": {"files": sha256_files(files), "n_cases": len(cases)},
            "split": {
                "file": SPLIT_FILE,
                "sha256": sha256_file(split_file),
                "eval_fraction": eval_fraction,
                "n_mitigation": len(split["mitigation_case_ids"]),
                "n_evaluation": len(split["evaluation_case_ids"]),
            },
            "derived_models": registered,
            "artifact": artifact.manifest,
            "wall_seconds": round(time.time() - t0, 3),
        }
    )
    write_atomic(out / "manifest.json", dumps(manifest))
    return registered
