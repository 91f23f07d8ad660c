"""``fairbench data download TASK``: fetch a task's official files and verify their pinned SHA-256s.

The URLs and checksums live in the task card's ``data:`` section (``download`` and ``sha256``), so
a new task needs no Python. Files land in ``DEST/<subdir>/<file>``; ``DEST`` is ``--data-dir``,
``$FAIRBENCH_DATA`` or the fairbench cache (``~/.cache/fairbench/data``), which the run path
searches in the same order.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..cards.text import TaskCard
from ..errors import FairbenchError
from ..paths import cache_dir

TIMEOUT_S = 60


def default_data_root() -> Path:
    return cache_dir() / "data"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# Local mirrors (and tests): file:// and plain http on this machine only; everything else is https.
LOCAL_HTTP = ("http://127.0.0.1:", "http://127.0.0.1/", "http://localhost:", "http://localhost/")

# (file name, bytes written so far, total bytes or None when the server sends no Content-Length)
ByteReport = Callable[[str, int, "int | None"], None]


def _fetch(url: str, out: Path, name: str = "", on_bytes: ByteReport | None = None) -> None:
    if not url.startswith(("https://", "file://", *LOCAL_HTTP)):
        raise FairbenchError(f"download URL {url!r} must be https:// (or file:// / http://localhost for a local mirror).")
    req = urllib.request.Request(url, headers={"User-Agent": "fairbench-med"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp, open(out, "wb") as fh:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            if on_bytes is not None:
                on_bytes(name, 0, total)
            while block := resp.read(1 << 16):
                fh.write(block)
                done += len(block)
                if on_bytes is not None:
                    on_bytes(name, done, total)
    except OSError as exc:  # URLError and HTTPError are OSErrors
        out.unlink(missing_ok=True)
        raise FairbenchError(f"could not download {url}: {getattr(exc, 'reason', exc)}. Check the network or fetch it by hand.") from None


def download(card: TaskCard, dest: Path | None = None, force: bool = False,
             on_bytes: ByteReport | None = None) -> list[tuple[str, str]]:
    """Download every file of ``card.data.files``. Returns (file, status) pairs, status being
    ``downloaded`` or ``present`` (already there with the pinned checksum). ``on_bytes(file, done,
    total)`` is called as each download proceeds (``total`` None when the server does not say)."""
    if not card.data.files:
        raise FairbenchError(f"task {card.name} has no official files to download (its data is bundled).")
    missing = [f for f in card.data.files if f not in card.data.download or f not in card.data.sha256]
    if missing:
        raise FairbenchError(
            f"task {card.name}: data.download and data.sha256 of the task card need an entry for {', '.join(missing)}."
        )
    root = Path(dest) if dest else Path(os.environ["FAIRBENCH_DATA"]) if os.environ.get("FAIRBENCH_DATA") else default_data_root()
    base = root / card.data.subdir
    done = []
    for name in card.data.files:
        target = base / name
        want = card.data.sha256[name].lower()
        if target.is_file() and not force and _sha256(target) == want:
            done.append((name, "present"))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        _fetch(card.data.download[name], tmp, name, on_bytes)
        got = _sha256(tmp)
        if got != want:
            tmp.unlink(missing_ok=True)
            raise FairbenchError(
                f"{name}: SHA-256 {got} does not match the pinned {want} (task {card.name}, from "
                f"{card.data.download[name]}). The source changed or the download is corrupt; nothing was saved."
            )
        tmp.replace(target)
        done.append((name, "downloaded"))
    return done
