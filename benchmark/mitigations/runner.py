"""``fairbench mitigate``, for every kind: give the method only its share of the task's data (text: the
mitigation cases of a held-out split; imaging: train and validation images), write the artifact
manifest and register the derived model(s) ``<base>+<method>``, which the ordinary run path audits."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from ..cards import load_task
from ..config import ModelSpec, load_models
from ..data.image.dataset import load_dataset
from ..data.split import SPLIT_FILE, split_cases
from ..data.text import load_cases
from ..kinds.text.expand import expand
from ..kinds.text.prompts import build_requests, check_fields, check_prompts_differ
from ..derived import register_derived
from ..errors import FairbenchError, unknown
from ..hashing import sha256_file, sha256_files
from ..manifest import base_manifest
from ..paths import cache_dir
from ..registry import get
from ..seeding import seed_everything
from ..store import dumps, write_atomic
from ..yamlio import parse_model, read_yaml
from .base import Context, ImagingTaskData, Mitigation, TaskData


def load_config(method: Mitigation, path: Path | None):
    data = {} if path is None else (read_yaml(Path(path)) or {})
    if not isinstance(data, dict):
        raise FairbenchError(f"{path}: expected a mapping of {method.name} settings.")
    return parse_model(method.Config, data, Path(path) if path else Path(f"<{method.name} defaults>"))


def derived_entry(base: ModelSpec, fields: dict, description: str) -> dict:
    """The derived model's models.yaml entry: the base entry, the fields the method changed, and the
    held-out split (``eval_cases``) for text tasks."""
    entry = base.model_dump(mode="json", exclude={"name"}, exclude_defaults=True)
    entry.update(fields)
    entry.update({"base": base.name, "description": description})
    return entry


def _text_split(card, data_dir, prompt_mode, eval_fraction, seed):
    """Validate and load everything before the artifact directory is touched (bad input loses nothing)."""
    mode = prompt_mode or card.default_mode
    if mode not in card.prompt_modes:
        raise unknown("prompt mode", mode, card.prompt_modes, where=f"task {card.name}")
    cases, report, files = load_cases(card, data_dir)
    # The audit's card checks, on the whole file and the built prompts: a card that makes the audit
    # meaningless makes the mitigation meaningless too, and is refused before any training.
    check_fields(card, cases)
    variants = expand(cases, card.counterfactual, seed, report)
    check_prompts_differ(card, mode, variants, build_requests(card, variants, mode, seed), report)
    return cases, report, files, mode, split_cases(cases, card, eval_fraction, seed)


def _text_data(card, cases, report, files, mode, split, eval_fraction, out: Path, write: bool = True):
    """The mitigation cases of a seeded held-out split (data/split.py); the split file is written to
    ``out`` (by the main process only: ``write``) and named by the derived models, so their audits use
    only the evaluation cases."""
    keep = set(split["mitigation_case_ids"])
    data = TaskData(card, [c for c in cases if c.case_id in keep], report, files, mode)
    split_file = out / SPLIT_FILE
    if not write:
        return data, {"eval_cases": str(split_file.resolve())}, {"prompt_mode": mode}
    write_atomic(split_file, dumps(split))
    info = {"prompt_mode": mode, "files": sha256_files(files), "n_cases": len(cases),
            "split": {"file": SPLIT_FILE, "sha256": sha256_file(split_file), "eval_fraction": eval_fraction,
                      "n_mitigation": len(split["mitigation_case_ids"]), "n_evaluation": len(split["evaluation_case_ids"])}}
    return data, {"eval_cases": str(split_file.resolve())}, info


def _image_data(card, data_dir):
    """Train and validation images only: the test split is never handed to a mitigation."""
    ds = load_dataset(card, data_dir)
    data = ImagingTaskData(card, ds.split("train"), ds.split("val"), list(ds.files))
    return data, {}, {"files": sha256_files(ds.files), "n_train": len(data.train), "n_val": len(data.val), "test_used": False}


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
    """Fit ``method_name`` on ``task``'s mitigation data for base ``model``; register and return the
    names of the derived models (``<model>+<suffix>``). Raises FairbenchError on bad input.

    Under ``accelerate launch`` or ``torchrun`` every process runs this unchanged: only the main
    process prepares the artifact directory, writes the manifest and registers the derived models;
    the others run ``apply`` only if the method trains (``Mitigation.distributed``), meet the main
    process at barriers, and return [] (exit 0)."""
    from .training import barrier, distributed_state, is_main_process

    t0 = time.time()
    distributed_state()  # the process group first (it also picks each process's CUDA device)
    seed_everything(seed)
    method_cls = get("mitigations", method_name)
    method: Mitigation = method_cls() if isinstance(method_cls, type) else method_cls
    config = load_config(method, config_file)
    models = load_models(models_file)
    base = models.get(model)
    if base.base is not None:
        raise FairbenchError(f'model "{model}" is itself derived (from {base.base}); mitigate its base model instead.')
    card = load_task(task, tasks_dir)
    if card.kind not in method.kinds:
        article = {"text": "a text", "imaging": "an imaging"}
        raise FairbenchError(f"mitigation {method.name} works on {' and '.join(method.kinds)} tasks only; "
                             f"task {card.name} is {article.get(card.kind, card.kind)} task.")
    out = Path(output_dir) if output_dir else cache_dir() / "mitigations" / f"{model}+{method.artifact_name(config)}__{card.name}__seed{seed}"
    if card.kind == "imaging":
        data, entry_fields, data_info = _image_data(card, data_dir)
    else:
        loaded = _text_split(card, data_dir, prompt_mode, eval_fraction, seed)
    method.check(base, card, config, None if card.kind == "imaging" else loaded[3])
    main = is_main_process()
    if main:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
    barrier()
    if card.kind != "imaging":
        data, entry_fields, data_info = _text_data(card, *loaded, eval_fraction, out, write=main)
    if main or method.distributed:
        artifact = method.apply(base, data, config, Context(out, seed, models, quiet))
    barrier()
    if not main:
        return []

    backend_cls = get("backends", base.backend)
    registered = []
    for suffix, fields in artifact.models.items():
        name = f"{model}+{suffix}"
        note = artifact.descriptions.get(suffix)
        description = f"{suffix} mitigation of {model} on {card.name} (seed {seed})" + (f"; {note}" if note else "")
        register_derived(name, derived_entry(base, {**fields, **entry_fields}, description))
        registered.append(name)
    manifest = base_manifest(list(sys.argv))
    manifest.update(
        {
            "method": method.name,
            "config": config.model_dump(mode="json"),
            "seed": seed,
            "kind": card.kind,
            "base_model": {"name": base.name, "fingerprint": backend_cls.fingerprint(base), "spec": base.model_dump(mode="json")},
            "task": {"name": card.name, "prompt_mode": data_info.pop("prompt_mode", None), "card_sha256": sha256_file(card.directory / "task.yaml")},
            "data": {k: v for k, v in data_info.items() if k != "split"},
            **({"split": data_info["split"]} if "split" in data_info else {}),
            "derived_models": registered,
            "artifact": artifact.manifest,
            "wall_seconds": round(time.time() - t0, 3),
        }
    )
    write_atomic(out / "manifest.json", dumps(manifest))
    return registered
