"""The audit protocol. An audit is a plugin (entry-point group ``fairbench.audits``) named by a task
card's ``audits:`` list; it receives the kind's evaluated rows and returns one JSON-able dict."""

from __future__ import annotations

from typing import Protocol


class Audit(Protocol):
    """``Audit(card, seed=seed).audit(data) -> dict``.

    ``needs`` names the fields of :class:`benchmark.kinds.base.AuditData` the audit reads (``rows``:
    per-request paired variants; ``instances``: per-instance endpoints); the run stops with a
    one-line error when the task's kind does not provide them. Every result holds ``tests`` (each
    with raw and adjusted p-values), ``warnings`` and, where tests were corrected together,
    ``correction``; the rest is the audit's own (``questions`` or ``endpoints``)."""

    name: str
    needs: tuple[str, ...]

    def __init__(self, card, seed: int = 0) -> None: ...

    def audit(self, data) -> dict: ...
