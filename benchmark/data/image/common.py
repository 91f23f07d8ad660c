"""Helpers shared by the imaging loaders: locating files, reading tables with clear errors,
skipping rows whose image is missing (counted, never a crash mid-run) and reading pixels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import FairbenchError
from ..cases import LoadReport

DATA_ENV = "FAIRBENCH_DATA"


def resolve_root(card, data_dir: Path | None) -> Path:
    root = data_dir or (Path(os.environ[DATA_ENV]) if os.environ.get(DATA_ENV) else None)
    if root is None:
        raise FairbenchError(
            f"task {card.name} reads a local copy of its official data. Pass --data-dir DIR (or set "
            f"${DATA_ENV}); the README section for {card.name} says where to get it and how to lay it out."
        )
    root = Path(root)
    if card.data.subdir and (root / card.data.subdir).is_dir():
        root = root / card.data.subdir
    if not root.is_dir():
        raise FairbenchError(f"task {card.name}: data directory {root} does not exist. Fix --data-dir.")
    return root


def find_file(root: Path, names: list[str], card, what: str, required: bool = True) -> Path | None:
    """The first of ``names`` (tried with .csv / .csv.gz spellings as given) under ``root``."""
    for name in names:
        if (root / name).is_file():
            return root / name
    if required:
        raise FairbenchError(
            f"task {card.name}: {what} not found under {root} (looked for {', '.join(names)}). "
            "Point --data-dir at the dataset's root folder."
        )
    return None


def read_table(path: Path, required: list[str], card, fix: str = "", **kwargs) -> pd.DataFrame:
    """Read a CSV (optionally gzipped) or Excel file and check its columns."""
    try:
        if path.suffix.lower() in (".xlsx", ".xls"):
            try:
                import openpyxl  # noqa: F401
            except ImportError:
                raise FairbenchError(
                    f"{path}: reading Excel needs openpyxl (pip install openpyxl), or save the sheet as CSV."
                ) from None
            df = pd.read_excel(path, **kwargs)
        else:
            df = pd.read_csv(path, **kwargs)
    except FairbenchError:
        raise
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise FairbenchError(f"{path}: cannot be read as a table ({str(exc).splitlines()[0]}). Replace it with the official file.") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise FairbenchError(
            f"{path}: missing column(s) {', '.join(missing)} (found {', '.join(map(str, df.columns[:12]))}). "
            + (fix or f"Use the official {card.name} file.")
        )
    return df


def skip_rows(df: pd.DataFrame, bad: pd.Series, report: LoadReport, reason: str, ids: pd.Series | None = None) -> pd.DataFrame:
    """Drop rows where ``bad`` is true, recording how many and a few example ids."""
    bad = bad.fillna(True).astype(bool)
    n = int(bad.sum())
    if n:
        examples = (ids if ids is not None else df.index.to_series())[bad].astype(str).head(3).tolist()
        report.skipped.append(f"{n} rows skipped: {reason} (e.g. {', '.join(examples)})")
    return df[~bad]


def drop_missing_files(df: pd.DataFrame, paths: pd.Series, report: LoadReport, what: str = "image file") -> pd.DataFrame:
    exists = paths.map(lambda p: Path(p).is_file())
    return skip_rows(df, ~exists, report, f"{what} missing", ids=paths)


def read_image(path: str, colour: bool) -> np.ndarray:
    """float32 in [0, 1]: (H, W) grey or (H, W, 3) RGB."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB" if colour else "L")
        return np.asarray(img, dtype=np.float32) / 255.0


def image_reader(colour: bool):
    def read(row) -> np.ndarray:
        try:
            return read_image(row["source"], colour)
        except (OSError, ValueError) as exc:
            raise FairbenchError(f"{row['source']}: cannot be decoded as an image ({exc}). Replace or remove the file.") from None

    return read
