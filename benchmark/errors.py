"""User-facing errors: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FairbenchError(Exception):
    """An error caused by input the user can fix. The message names the file, field and fix."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean "x"?' for the closest known name, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f' Did you mean "{close[0]}"?' if close else ""


def unknown(kind: str, name: str, choices: Iterable[str], where: str = "") -> FairbenchError:
    choices = sorted(choices)
    hint = suggest(name, choices)
    known = ", ".join(choices) if len(choices) <= 12 else ", ".join(choices[:12]) + ", ..."
    loc = f" in {where}" if where else ""
    return FairbenchError(f'unknown {kind} "{name}"{loc}.{hint} Known: {known}.')
