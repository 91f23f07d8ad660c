"""User-facing errors: the CLI prints them as one line and exits with code 2 (input) or 3 (environment)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FairbenchError(Exception):
    """An error caused by input the user can fix. The message names the file, field and fix.
    The CLI prints it as one line and exits with ``exit_code`` (2)."""

    exit_code = 2


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


class StorageError(FairbenchError):
    """The environment refused a write or read (disk full, read-only, permission, vanished
    directory). One line naming the path and the fix; the CLI exits with code 3."""

    exit_code = 3

_FIXES = {
    "full": "no space left on the device. Free space, or choose another --output-dir/--cache-dir, and rerun "
            "the same command: finished requests are kept and not recomputed",
    "readonly": "the file system or file is read-only. Choose a writable --output-dir/--cache-dir",
    "permission": "permission denied. Fix the permissions or choose another --output-dir/--cache-dir",
    "vanished": "the directory disappeared during the run (deleted or unmounted). Recreate it or choose "
                "another --output-dir, and rerun: finished requests are kept",
}


def storage_error(path, exc: BaseException) -> StorageError | None:
    """The one-line error for an OSError or sqlite3 error at ``path``; None when it is not about the
    environment (a bug, which should keep its traceback)."""
    import errno as _errno

    code = getattr(exc, "errno", None)
    text = str(exc).lower()
    if code in (_errno.ENOSPC, getattr(_errno, "EDQUOT", -1)) or "disk is full" in text or "no space" in text:
        kind = "full"
    elif code == _errno.EROFS or "readonly" in text or "read-only" in text:
        kind = "readonly"
    elif code in (_errno.EACCES, _errno.EPERM) or "permission denied" in text:
        kind = "permission"
    elif code == _errno.ENOENT or "unable to open database" in text or "disk i/o error" in text:
        kind = "vanished"
    else:
        return None
    where = getattr(exc, "filename", None) or path
    return StorageError(f"{where}: {_FIXES[kind]}.")
