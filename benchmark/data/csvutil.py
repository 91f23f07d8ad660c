"""CSV reading shared by the text-task loaders: BOM, empty trailing columns, clear column errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import FairbenchError


def read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    try:
        # utf-8-sig strips a BOM; keep_default_na=False keeps empty cells as "" not NaN.
        df = pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False)
    except UnicodeDecodeError as exc:
        raise FairbenchError(f"{path}: not valid UTF-8 (byte {exc.start}). Save it as UTF-8.") from None
    except pd.errors.ParserError as exc:
        raise FairbenchError(f"{path}: malformed CSV: {str(exc).splitlines()[0]}.") from None
    except pd.errors.EmptyDataError:
        raise FairbenchError(f"{path}: the file is empty; expected columns {', '.join(required)}.") from None
    df = df.loc[:, [c for c in df.columns if not c.startswith("Unnamed:")]]
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise FairbenchError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(df.columns) or 'none'}. "
            f"Expected {', '.join(required)}."
        )
    return df
