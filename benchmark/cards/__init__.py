"""Task cards (``tasks/<name>/task.yaml``): one discovery for every kind; ``kind:`` picks the schema
(``text``: :mod:`benchmark.cards.text`, ``imaging``: :mod:`benchmark.cards.image`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import FairbenchError, unknown
from ..paths import builtin_tasks_dir
from ..yamlio import parse_model, read_yaml
from .image import ImagingTaskCard
from .text import TaskCard

TASKS_ENV = "FAIRBENCH_TASKS_DIR"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
CARDS = {"text": TaskCard, "imaging": ImagingTaskCard}
Card = TaskCard | ImagingTaskCard


def task_dirs(tasks_dir: Path | None = None) -> list[Path]:
    """Built-in tasks first, then the user's (``--tasks-dir`` or ``$FAIRBENCH_TASKS_DIR``), which win."""
    dirs = [builtin_tasks_dir()]
    user = tasks_dir or (Path(os.environ[TASKS_ENV]) if os.environ.get(TASKS_ENV) else None)
    if user is not None:
        if not Path(user).is_dir():
            raise FairbenchError(f"tasks directory {user} does not exist. Fix --tasks-dir or ${TASKS_ENV}.")
        dirs.append(Path(user))
    return dirs


def discover(tasks_dir: Path | None = None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in task_dirs(tasks_dir):
        for card in sorted(root.glob("*/task.yaml")):
            found[card.parent.name] = card
    return found


def load_task(name: str, tasks_dir: Path | None = None) -> Card:
    found = discover(tasks_dir)
    if name not in found:
        raise unknown("task", name, found)
    return read_card(found[name])


def read_card(path: Path) -> Card:
    """The card at ``path``, parsed by the schema of its ``kind`` (:data:`CARDS`; default text).

    Raises FairbenchError (one line naming the file and field) on any invalid card."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise FairbenchError(f"{path}: expected a mapping of task settings.")
    kind = data.get("kind", "text")
    if kind not in CARDS:
        raise FairbenchError(f"{path}: field kind: {kind!r} is not a task kind. Use one of {', '.join(CARDS)}.")
    card = parse_model(CARDS[kind], data, path)
    if not _SAFE_NAME.match(card.name):
        raise FairbenchError(f"{path}: field name: {card.name!r} must be letters, digits, '.', '_' or '-'.")
    card.directory = path.parent
    return card
