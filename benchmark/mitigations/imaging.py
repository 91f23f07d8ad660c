"""Imaging mitigations expressed as training recipes (``Mitigation.apply -> ModelArtifact``).

The method sees only the task's **train and validation** splits (:class:`ImagingTaskData`; the test
split is never loaded into it) and returns derived models whose entry is the base model plus a
training recipe (``backend: mitigated-classifier``, ``extra.recipe``, read by
:mod:`benchmark.backends.image.recipe`). ``fairbench run --model <base>+<method> --seeds N`` then
trains and audits them through the ordinary run path, on the test split.
"""

from __future__ import annotations

from ..backends.image.recipe import Recipe
from ..config import ModelSpec
from ..errors import FairbenchError
from ..store import dumps, write_atomic
from .base import Context, ImagingTaskData, Mitigation, MitigationConfig, ModelArtifact

BACKEND = "mitigated-classifier"


class ImagingMitigation(Mitigation):
    """A mitigation expressed as a training recipe for the classifier backend."""

    kinds = ("imaging",)
    bases: tuple[str, ...] = ("classifier",)  # base-model backends the method can train

    def recipes(self, base: ModelSpec, data: ImagingTaskData, config: MitigationConfig, ctx: Context) -> dict[str, dict]:
        """Derived-model suffix -> recipe (a ``recipe.Recipe`` mapping)."""
        raise NotImplementedError

    def apply(self, base: ModelSpec, data: ImagingTaskData, config: MitigationConfig, ctx: Context) -> ModelArtifact:
        check_base(base, self.name, self.bases)

        models, manifest = {}, {"recipes": {}}
        for suffix, recipe in self.recipes(base, data, config, ctx).items():
            recipe = Recipe(**recipe).model_dump(mode="json", exclude_none=True)
            models[suffix] = {"backend": BACKEND, "extra": {**base.extra, "recipe": recipe}}
            manifest["recipes"][suffix] = recipe
        write_atomic(ctx.out_dir / "recipes.json", dumps(manifest["recipes"]))
        return ModelArtifact(ctx.out_dir, models, manifest)


def check_base(base: ModelSpec, method: str, bases: tuple[str, ...] = ("classifier",)) -> None:
    if base.backend not in bases:
        what = " or ".join(f"backend {b}" for b in bases)
        raise FairbenchError(
            f'mitigation {method} trains models with {what}; model "{base.name}" uses backend {base.backend}. '
            "Use a classifier model such as vit-tiny"
            + (" or a LLaVA-family vlm model" if "vlm" in bases else "") + " (fairbench list models)."
        )
