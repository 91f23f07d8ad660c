"""What every task card has, whatever its kind: the data it reads, how it is audited, strictness."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


def check_labels(field: str, labels: list[str]) -> None:
    """Labels that an audit tells apart: non-empty, no surrounding whitespace (" Yes" is never the
    answer "Yes"), each once, also ignoring case (the parsers and accuracy compare without case).
    The one check for every list of options, values or names a card or a data row declares.

    Raises ValueError (pydantic turns it into a field error; callers outside a card wrap it)."""
    for label in labels:
        if not label.strip():
            raise ValueError(f"{field}: an empty label")
        if label != label.strip():
            raise ValueError(f"{field}: {label!r} has leading or trailing whitespace; write {label.strip()!r}")
    lowered = [label.lower() for label in labels]
    dupes = sorted({label for label, low in zip(labels, lowered) if lowered.count(low) > 1})
    if dupes:
        raise ValueError(f"{field}: {', '.join(map(repr, dupes))} listed more than once (each must appear once)")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    bundled: list[str] = Field(default_factory=list)  # files shipped inside the task directory
    files: list[str] = Field(default_factory=list)  # official files, relative to the data dir
    subdir: str = ""  # where the files sit under --data-dir / $FAIRBENCH_DATA
    sha256: dict[str, str] = Field(default_factory=dict)
    source: str = ""  # human-readable provenance and licence
    download: dict[str, str] = Field(default_factory=dict)  # file -> URL
    # "PACKAGE/relative/dir": an installed Python package that ships the official files (found through
    # importlib, never imported), read when no --data-dir is given; its files must match ``sha256``.
    package: str = ""

    @field_validator("subdir")
    @classmethod
    def _subdir_inside(cls, v):
        if Path(v).is_absolute() or ".." in Path(v).parts:
            raise ValueError(f"{v!r}: subdir must stay inside the data directory")
        return v

    @field_validator("package")
    @classmethod
    def _package_path(cls, v):
        if v and (not v.split("/")[0].isidentifier() or ".." in Path(v).parts or Path(v).is_absolute()):
            raise ValueError(f"{v!r}: package must be PACKAGE/relative/dir with an importable package name")
        return v

    @field_validator("bundled", "files")
    @classmethod
    def _no_traversal(cls, v):
        for f in v:
            if Path(f).is_absolute() or ".." in Path(f).parts:
                raise ValueError(f"{f!r}: data paths must stay inside the task or data directory")
        return v


class AuditSpec(_Strict):
    min_group_size: int = Field(10, ge=1)
    correction: Literal["holm", "fdr_bh"] = "holm"
    alpha: float = Field(0.05, gt=0, lt=1)
    n_boot: int = Field(2000, ge=100, le=1_000_000)



class CardBase(_Strict):
    """The fields every task card has. ``kind`` selects the subclass (text or image) and, through
    :mod:`benchmark.kinds`, how instances become requests and how rows are evaluated. ``audits``
    names the audits that run on the evaluated rows (``fairbench list audits``); each kind has a
    default."""

    name: str
    kind: str
    description: str = ""
    loader: str  # a registered loader (``fairbench list loaders``)
    data: DataSpec = Field(default_factory=DataSpec)
    audits: list[str] | None = None  # default: the kind's (text: counterfactual; imaging: group)
    loader_options: dict[str, str | int | float | bool | list | dict | None] = Field(default_factory=dict)
    directory: Path | None = Field(default=None, exclude=True)

    @field_validator("audits")
    @classmethod
    def _audits_unique(cls, v):
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError("audits must list at least one audit, each once")
        return v
