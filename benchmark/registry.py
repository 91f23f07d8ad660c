"""Plugin registries. Built-ins and third-party plugins register the same way: Python entry points.

Groups: ``fairbench.backends``, ``fairbench.loaders``, ``fairbench.audits``, ``fairbench.mitigations``.
``register()`` adds an object at run time (tests, notebooks) without packaging it.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from .errors import unknown

KINDS = {
    "backends": "fairbench.backends",
    "loaders": "fairbench.loaders",
    "audits": "fairbench.audits",
    "mitigations": "fairbench.mitigations",
}

_runtime: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}


def _entry_points(kind: str) -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=KINDS[kind])}


def names(kind: str) -> list[str]:
    return sorted(set(_entry_points(kind)) | set(_runtime[kind]))


def describe(kind: str) -> dict[str, str]:
    """Name -> where it comes from (``module:attr`` or ``runtime``)."""
    out = {name: ep.value for name, ep in _entry_points(kind).items()}
    out.update({name: "runtime" for name in _runtime[kind]})
    return dict(sorted(out.items()))


def get(kind: str, name: str) -> Any:
    if name in _runtime[kind]:
        return _runtime[kind][name]
    eps = _entry_points(kind)
    if name not in eps:
        raise unknown(kind.rstrip("s"), name, names(kind))
    return eps[name].load()


def register(kind: str, name: str, obj: Any) -> None:
    _runtime[kind][name] = obj


def unregister(kind: str, name: str) -> None:
    _runtime[kind].pop(name, None)
