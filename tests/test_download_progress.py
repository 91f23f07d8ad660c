"""``fairbench data download`` reports bytes as they arrive (with the total when the server sends
Content-Length), from a local http.server mirror."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from benchmark.cli import main
from benchmark.data.download import download
from benchmark.errors import FairbenchError

PAYLOAD = bytes(range(256)) * 1200  # 307,200 bytes: several 64 KiB reads


class _Mirror:
    """Serves PAYLOAD at /with-length (Content-Length) and /no-length (close-delimited body)."""

    def __enter__(self):
        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                if self.path == "/with-length":
                    self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _card(url: str):
    data = SimpleNamespace(files=["cases.csv"], download={"cases.csv": url}, subdir="dl",
                           sha256={"cases.csv": hashlib.sha256(PAYLOAD).hexdigest()})
    return SimpleNamespace(name="dl", data=data)


@pytest.mark.parametrize("path, total", [("/with-length", len(PAYLOAD)), ("/no-length", None)])
def test_download_reports_bytes(tmp_path, path, total):
    seen: list[tuple[str, int, int | None]] = []
    with _Mirror() as mirror:
        assert download(_card(mirror.base + path), tmp_path, on_bytes=lambda *a: seen.append(a)) == [("cases.csv", "downloaded")]
    done = [d for _, d, _ in seen]
    assert done[0] == 0 and done[-1] == len(PAYLOAD) and done == sorted(done) and len(done) >= 5
    assert {t for _, _, t in seen} == {total} and {n for n, _, _ in seen} == {"cases.csv"}
    assert (tmp_path / "dl" / "cases.csv").read_bytes() == PAYLOAD


def test_remote_plain_http_is_refused(tmp_path):
    with pytest.raises(FairbenchError, match="must be https"):
        download(_card("http://example.org/cases.csv"), tmp_path)


def test_cli_download_shows_a_byte_bar(tmp_path, capsys, monkeypatch):
    import benchmark.progress as progress_mod

    made = []
    real = progress_mod.download_progress

    def spy(quiet):
        made.append(real(quiet=True))
        return made[-1]

    monkeypatch.setattr(progress_mod, "download_progress", spy)
    from test_data_download import _task

    tasks = _task(tmp_path, PAYLOAD, PAYLOAD)
    with _Mirror() as mirror:
        yaml_path = tasks / "dl" / "task.yaml"
        text = yaml_path.read_text()
        yaml_path.write_text(text.replace((tmp_path / "mirror" / "cases.csv").as_uri(), mirror.base + "/with-length"))
        assert main(["data", "download", "dl", "--tasks-dir", str(tasks), "--data-dir", str(tmp_path / "data")]) == 0
    bar = made[0].tasks[0]
    assert bar.description == "cases.csv" and bar.total == len(PAYLOAD) and bar.completed == len(PAYLOAD)
    assert "downloaded" in capsys.readouterr().out
