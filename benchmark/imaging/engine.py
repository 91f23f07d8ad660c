"""One imaging run: card -> dataset -> backend.fit (train / val) -> predictions for val + test
(cached per image, so a killed run resumes) -> thresholds on val -> group audit -> RunStore."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ..cases import LoadReport
from ..config import load_models
from ..errors import FairbenchError
from ..hashing import sha256_files
from ..manifest import base_manifest
from ..registry import get
from ..seeding import seed_everything
from ..store import RunStore
from .dataset import ImagingDataset
from .datasets.common import resolve_root
from .evaluate import evaluate

CHUNK = 256  # predictions per cache transaction


def load_dataset(card, data_dir: Path | None) -> ImagingDataset:
    report = LoadReport()
    loader = get("loaders", card.loader)
    root = None if card.loader == "synth_xray" else resolve_root(card, data_dir)
    return loader(card, root, report)


def limit_dataset(ds: ImagingDataset, limit: int | None) -> ImagingDataset:
    """The first N images of each split, in file order (deterministic, no sampling)."""
    if limit is None:
        return ds
    frame = ds.frame.groupby("split", sort=False, group_keys=False).head(limit).reset_index(drop=True)
    return ImagingDataset(frame, ds.label_type, ds.labels, ds.reader, ds.report, ds.files)


def _key(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def run(spec, card, quiet: bool = False) -> Path:
    if spec.limit is not None and spec.limit < 1:
        raise FairbenchError(f"--limit must be a positive number of images, got {spec.limit}.")
    t_start = time.time()
    seed_everything(spec.seed)
    model_spec = load_models(spec.models_file).get(spec.model)
    backend_cls = get("backends", model_spec.backend)
    if not getattr(backend_cls, "imaging", False) and getattr(backend_cls, "imaging_backend", None):
        backend_cls = get("backends", backend_cls.imaging_backend)  # e.g. openai -> openai-vlm (sends the images)
    if not getattr(backend_cls, "imaging", False):
        raise FairbenchError(
            f'task {card.name} is an imaging task but model "{model_spec.name}" uses the text backend '
            f'"{model_spec.backend}". Use a classifier, clip, vlm or openai (served VLM) model (fairbench list models).'
        )
    backend_cls.check(model_spec)
    fingerprint = backend_cls.fingerprint(model_spec)
    ds = load_dataset(card, spec.data_dir)
    n_available = len(ds)
    ds = limit_dataset(ds, spec.limit)
    train, val = ds.split("train"), ds.split("val")
    model_ident = fingerprint
    if backend_cls.trains:
        model_ident = _key(fingerprint, spec.seed, *train.frame["id"], "|val|", *val.frame["id"])[:16]

    run_dir = Path(spec.output_dir) / spec.run_id("image")
    store = RunStore(run_dir)
    card_hash = sha256_files([card.directory / "task.yaml"])["task.yaml"]
    manifest = base_manifest(spec.argv)
    manifest.update(
        {
            "run_id": run_dir.name, "status": "running", "kind": "imaging",
            "model": {"name": model_spec.name, "fingerprint": fingerprint, "spec": model_spec.model_dump(mode="json", exclude={"extra"}), "extra": model_spec.extra},
            "task": {"name": card.name, "card_sha256": card_hash},
            "data": {"files": sha256_files(ds.files), "n_images": {s: int((ds.frame["split"] == s).sum()) for s in ("train", "val", "test")}},
            "seed": spec.seed, "limit": spec.limit, "started_at": t_start,
        }
    )
    store.write_manifest(manifest)

    eval_ds = ImagingDataset(
        ds.frame[ds.frame["split"].isin(["val", "test"])].reset_index(drop=True), ds.label_type, ds.labels, ds.reader, ds.report, ds.files
    )
    keys = [_key(model_ident, card_hash, s, i) for s, i in zip(eval_ds.frame["split"], eval_ds.frame["id"])]
    done = store.cache.keys()
    todo = [i for i, k in enumerate(keys) if k not in done]
    timing = {"n_requests": len(keys), "n_cached": len(keys) - len(todo), "n_computed": len(todo)}
    if todo:
        backend = backend_cls(model_spec, card, seed=spec.seed, quiet=quiet)
        t0 = time.perf_counter()
        timing["training"] = backend.fit(train, val, run_dir)
        timing["train_seconds"] = round(time.perf_counter() - t0, 3)
        t1 = time.perf_counter()
        for start in range(0, len(todo), CHUNK):
            idx = todo[start : start + CHUNK]
            chunk = ImagingDataset(eval_ds.frame.iloc[idx].reset_index(drop=True), ds.label_type, ds.labels, ds.reader)
            preds = backend.predict(chunk)
            store.cache.put_many({keys[i]: p for i, p in zip(idx, preds)})
        timing["inference_seconds"] = round(time.perf_counter() - t1, 3)
        timing["backend"] = backend.describe()
        backend.close()

    cached = store.cache.get_many(set(keys))
    targets = eval_ds.targets()
    rows = []
    for n, (key, (_, r)) in enumerate(zip(keys, eval_ds.frame.iterrows())):
        pred = cached[key]
        t = targets[n]
        rows.append(
            {
                "index": n, "key": key, "id": r["id"], "patient_id": r["patient_id"], "split": r["split"],
                "sex": r["sex"], "age": None if r["age"] != r["age"] else float(r["age"]), "age_group": r["age_group"],
                "race": r["race"], "targets": int(t) if ds.label_type == "multiclass" else [None if x != x else float(x) for x in t],
                **pred,
            }
        )
    run_info = {
        "model": model_spec.name, "base_model": model_spec.base, "task": card.name, "kind": "imaging",
        "prompt_mode": "image", "seed": spec.seed, "limit": spec.limit, "n_cases": len(ds), "n_cases_available": n_available,
        "model_fingerprint": fingerprint,
    }
    data_report = {"quirks": sorted(set(ds.report.quirks)), "skipped": ds.report.skipped}
    results = evaluate(rows, card, spec.seed, run_info, data_report)
    store.write_requests(rows)
    store.write_results(results)
    manifest.update({"status": "complete", "finished_at": time.time(), "timing": timing, "wall_seconds": round(time.time() - t_start, 3)})
    store.write_manifest(json.loads(json.dumps(manifest, default=str)))
    store.cache.close()
    return run_dir
