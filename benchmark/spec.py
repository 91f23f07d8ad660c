"""RunSpec: everything that names an experiment, and the run id (its directory name) derived from it."""

from __future__ import annotations

import hashlib
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FairbenchError

SAFE = re.compile(r"[^A-Za-z0-9._+=-]")
MAX_SEED = 2**63


def check_fraction(fraction) -> float:
    """A label fraction (``--label-fraction``) in (0, 1] as a float; anything else raises
    FairbenchError (one line, naming the flag and the fix)."""
    try:
        f = float(fraction)
    except (TypeError, ValueError):
        raise FairbenchError(f"--label-fraction must be a number in (0, 1], e.g. 0.25; got {fraction!r}.") from None
    if isinstance(fraction, bool) or not math.isfinite(f) or not 0 < f <= 1:
        raise FairbenchError(f"--label-fraction must be a number in (0, 1] (the share of the labelled train split to "
                             f"train on; 1 = all of it), got {fraction!r}.")
    return f


def safe_part(text: str) -> str:
    """A name as it may appear in a directory name. Names made only of ``[A-Za-z0-9._+=-]`` are kept
    as they are (unless they contain ``__``, the run id's separator); any other name gets its unsafe characters replaced by ``_`` and 8 hex digits of its
    SHA-256 appended, so two distinct names never share a run directory."""
    if not SAFE.search(text) and "__" not in text and text not in ("", ".", ".."):
        return text
    return SAFE.sub("_", text) + "~" + hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclass
class RunSpec:
    """Everything that names an experiment. Same spec -> same run directory -> resume.

    Values are validated on construction (:class:`benchmark.errors.FairbenchError`, one line):
    ``seed`` 0..2^63-1, ``limit`` and ``sample`` >= 1 or None (not both), ``label_fraction`` in (0, 1] or None
    (1.0 becomes None), ``temperature`` finite and >= 0 or None (None: the
    model entry's ``generation.temperature``)."""

    model: str = "smollm2-135m"  # a models.yaml name, or a backend name with ``model_args``
    model_args: str | None = None  # ad-hoc model: "pretrained=ID,dtype=bfloat16" (config.adhoc_model)
    task: str = "qpain-demo"
    prompt_mode: str | None = None
    seed: int = 0
    limit: int | None = None
    sample: int | None = None  # a seeded random subset of N cases (data.cases.sample_cases)
    # Imaging tasks, trained backends: train on this share of the labelled train split, a seeded stratified
    # subsample (data.image.budget); None = 1.0 = the whole split (1.0 is stored as None: the same run).
    label_fraction: float | None = None
    output_dir: Path = Path("runs")
    models_file: Path | None = None
    tasks_dir: Path | None = None
    data_dir: Path | None = None
    temperature: float | None = None
    shard: tuple[int, int] | None = None  # (i, n): compute only shard i of n (see shard.py)
    cases_from: str | None = None  # use the held-out cases of this derived model (fair base comparison)
    cache_dir: Path | None = None  # the request cache shared across runs (None: the fairbench cache)
    use_cache: bool = True  # False: neither read nor write the shared request cache
    argv: list[str] = field(default_factory=lambda: list(sys.argv))

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < MAX_SEED:
            raise FairbenchError(f"--seed must be a whole number from 0 to 2^63-1, got {self.seed}.")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1):
            raise FairbenchError(f"--limit must be a positive whole number of cases, got {self.limit}.")
        if self.sample is not None and (isinstance(self.sample, bool) or not isinstance(self.sample, int) or self.sample < 1):
            raise FairbenchError(f"--sample must be a positive whole number of cases, got {self.sample}.")
        if self.sample is not None and self.limit is not None:
            raise FairbenchError("--sample and --limit both choose the cases: give one (--sample N draws N at random with --seed).")
        if self.label_fraction is not None:
            f = check_fraction(self.label_fraction)
            self.label_fraction = None if f == 1.0 else f
        if self.temperature is not None:
            try:
                t = float(self.temperature)
            except (TypeError, ValueError):
                raise FairbenchError(f"--temperature must be a number >= 0, got {self.temperature!r}.") from None
            if not math.isfinite(t) or t < 0:
                raise FairbenchError(f"--temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}.")
            self.temperature = t

    def run_id(self, mode: str, heldout: str | None = None) -> str:
        parts = [safe_part(self.model), safe_part(self.task), safe_part(mode), f"seed{self.seed}"]
        if heldout:
            parts.append(f"heldout-{heldout[:8]}")
        if self.limit is not None:
            parts.append(f"limit{self.limit}")
        if self.sample is not None:
            parts.append(f"sample{self.sample}")
        if self.label_fraction is not None:
            parts.append(f"frac{self.label_fraction!r}")  # shortest exact form, as for the temperature
        if self.temperature:
            parts.append(f"t{self.temperature!r}")  # shortest exact form: 0.1 and 0.10000001 differ
        return "__".join(parts)
