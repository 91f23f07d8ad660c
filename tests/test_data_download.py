"""``fairbench data download``: pinned checksums verified; a mismatch names the file and saves nothing."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from benchmark.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _task(tmp_path: Path, payload: bytes, pinned: bytes) -> Path:
    src = tmp_path / "mirror" / "cases.csv"
    src.parent.mkdir(parents=True)
    src.write_bytes(payload)
    task = tmp_path / "tasks" / "dl"
    shutil.copytree(ROOT / "tasks" / "treatment", task)
    text = (task / "task.yaml").read_text()
    head, rest = text.split("data:\n", 1)
    rest = rest.split("\ncounterfactual:", 1)[1]
    text = head.replace("name: treatment", "name: dl") + (
        "data:\n  subdir: dl\n  files: [cases.csv]\n"
        f"  sha256: {{cases.csv: {hashlib.sha256(pinned).hexdigest()}}}\n"
        f"  download: {{cases.csv: '{src.as_uri()}'}}\n\ncounterfactual:" + rest
    )
    (task / "task.yaml").write_text(text)
    return tmp_path / "tasks"


def test_download_verifies_and_is_idempotent(tmp_path, capsys):
    tasks = _task(tmp_path, b"title,Case one liner\r\nT,A @Race @Sex.\r\n", b"title,Case one liner\r\nT,A @Race @Sex.\r\n")
    dest = tmp_path / "data"
    assert main(["data", "download", "dl", "--tasks-dir", str(tasks), "--data-dir", str(dest)]) == 0
    assert (dest / "dl" / "cases.csv").is_file() and "downloaded" in capsys.readouterr().out
    assert main(["data", "download", "dl", "--tasks-dir", str(tasks), "--data-dir", str(dest)]) == 0
    assert "present" in capsys.readouterr().out


def test_checksum_mismatch_is_an_error_naming_the_file(tmp_path, capsys):
    tasks = _task(tmp_path, b"tampered\n", b"official\n")
    dest = tmp_path / "data"
    assert main(["data", "download", "dl", "--tasks-dir", str(tasks), "--data-dir", str(dest)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cases.csv: SHA-256") and "does not match the pinned" in err and len(err.splitlines()) == 1
    assert not any((dest / "dl").iterdir()) if (dest / "dl").exists() else True


def test_bundled_task_has_nothing_to_download(capsys):
    assert main(["data", "download", "qpain-demo"]) == 2
    assert "bundled" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["qpain", "treatment", "triage"])
def test_official_cards_pin_every_file(task, shared_data):
    """Every official file has a URL and a SHA-256, and the pinned hash matches the reference copy."""
    from benchmark.cards import load_task

    card = load_task(task)
    assert set(card.data.download) == set(card.data.files) == set(card.data.sha256)
    assert all(u.startswith("https://") for u in card.data.download.values())
    for name in card.data.files:
        path = next(shared_data.rglob(name))
        assert hashlib.sha256(path.read_bytes()).hexdigest() == card.data.sha256[name]
