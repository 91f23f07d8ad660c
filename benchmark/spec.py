"""RunSpec: everything that names an experiment, and the run id (its directory name) derived from it."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path


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
