"""Kinds of task: ``text`` (counterfactual prompts) and ``imaging`` (images with labels). A kind turns a
card's data into requests and evaluates the stored rows; everything else is the one engine's."""

from __future__ import annotations

from .base import AuditData, Kind, Prepared
from .image.kind import ImageKind
from .text.kind import TextKind

KINDS: dict[str, type[Kind]] = {"text": TextKind, "imaging": ImageKind}


def kind_for(card) -> Kind:
    """The kind that runs ``card`` (chosen by the card's ``kind:`` field)."""
    return KINDS[card.kind](card)


__all__ = ["AuditData", "Kind", "Prepared", "KINDS", "kind_for"]
