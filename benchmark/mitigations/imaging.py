"""Imaging mitigations on the shared plugin API (``Mitigation.apply -> ModelArtifact``).

``fairbench mitigate METHOD --model <classifier model> --task <imaging task>`` lands here (the
runner dispatches on the card's ``kind``). The method sees only the task's **train and
validation** splits (:class:`ImagingTaskData`; the test split is never loaded into it) and returns
derived models whose entry is the base model plus a training recipe (``backend:
mitigated-classifier``, ``extra.recipe``). ``fairbench run --model <base>+<method> --seeds N`` then
trains and audits them through the ordinary imaging run path, on the test split.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ModelSpec
from ..derived import register_derived
from ..errors import FairbenchError
from ..hashing import sha256_file
from ..manifest import base_manifest
from ..store import dumps, write_atomic
from .base import Context, Mitigation, MitigationConfig, ModelArtifact

BACKEND = "mitigated-classifier"


@dataclass
class ImagingTaskData:
    """The mitigation side of an imaging task: train and validation only (never test)."""

    card: object
    train: object  # ImagingDataset
    val: object
    files: list[Path] = field(default_factory=list)


class ImagingMitigation(Mitigation):
    """A mitigation expressed as a training recipe for the classifier backend."""

    imaging = True

    def recipes(self, base: ModelSpec, data: ImagingTaskData, config: MitigationConfig, ctx: Context) -> dict[str, dict]:
        """Derived-model suffix -> recipe (a ``recipe.Recipe`` mapping)."""
        raise NotImplementedError

    def apply(self, base: ModelSpec, data: ImagingTaskData, config: MitigationConfig, ctx: Context) -> ModelArtifact:
        check_base(base, self.name)
        from .recipe import Recipe

        models, manifest = {}, {"recipes": {}}
        for suffix, recipe in self.recipes(base, data, config, ctx).items():
            recipe = Recipe(**recipe).model_dump(mode="json", exclude_none=True)
            models[suffix] = {"backend": BACKEND, "extra": {**base.extra, "recipe": recipe}}
            manifest["recipes"][suffix] = recipe
        write_atomic(ctx.out_dir / "recipes.json", dumps(manifest["recipes"]))
        return ModelArtifact(ctx.out_dir, models, manifest)


def check_base(base: ModelSpec, method: str) -> None:
    if base.backend != "classifier":
        raise FairbenchError(
            f'mitigation {method} trains image classifiers; model "{base.name}" uses backend {base.backend}. '
            "Use a classifier model such as vit-tiny (fairbench list models)."
        )


def mitigate_imaging(method: Mitigation, config, base: ModelSpec, card, models, seed: int, output_dir: Path | None,
                     data_dir: Path | None, quiet: bool, t0: float) -> list[str]:
    """The imaging branch of ``fairbench mitigate``: train/val data -> apply -> derived models."""
    from ..imaging.engine import load_dataset
    from ..paths import cache_dir

    if not getattr(method, "imaging", False):
        raise FairbenchError(f"mitigation {method.name} works on text tasks only; task {card.name} is an imaging task.")
    ds = load_dataset(card, data_dir)
    data = ImagingTaskData(card, ds.split("train"), ds.split("val"), list(ds.files))
    out = Path(output_dir) if output_dir else cache_dir() / "mitigations" / f"{base.name}+{method.name}__{card.name}__seed{seed}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    artifact = method.apply(base, data, config, Context(out, seed, models, quiet))
    registered = []
    for suffix, fields in artifact.models.items():
        name = f"{base.name}+{suffix}"
        entry = base.model_dump(mode="json", exclude={"name"}, exclude_defaults=True)
        entry.update(fields)
        entry.update({"base": base.name, "description": f"{suffix} mitigation of {base.name} on {card.name} (seed {seed})"})
        register_derived(name, entry)
        registered.append(name)
    manifest = base_manifest(list(sys.argv))
    manifest.update({
        "method": method.name, "config": config.model_dump(mode="json"), "seed": seed, "kind": "imaging",
        "base_model": {"name": base.name, "spec": base.model_dump(mode="json")},
        "task": {"name": card.name, "card_sha256": sha256_file(card.directory / "task.yaml")},
        "data": {"n_train": len(data.train), "n_val": len(data.val), "test_used": False},
        "derived_models": registered, "artifact": artifact.manifest, "wall_seconds": round(time.time() - t0, 3),
    })
    write_atomic(out / "manifest.json", dumps(manifest))
    return registered
