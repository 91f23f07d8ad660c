"""A small scripted OpenAI-compatible HTTP server on 127.0.0.1, for backend tests that need a real
socket (retries, status codes, garbage bodies, concurrency) without a model."""

from __future__ import annotations

import json
import re
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def fake_logprob(token: str) -> float:
    """Deterministic log-probability of a token, so tests know the expected sums."""
    return -((zlib.crc32(token.encode()) % 1000) / 100.0 + 0.01)


def completions_echo(payload: dict) -> dict:
    """Whitespace "tokenizer": each token is a word with its leading whitespace; one generated token."""
    tokens = re.findall(r"\s*\S+", payload["prompt"]) + ["!"]
    lps = [None] + [fake_logprob(t) for t in tokens[1:]]
    return {
        "choices": [{"text": payload["prompt"] + "!", "logprobs": {"tokens": tokens, "token_logprobs": lps}}],
        "usage": {"prompt_tokens": len(tokens) - 1, "completion_tokens": 1},
    }


class FakeServer:
    """``handler(path, payload, headers) -> (status, body)``; body a dict (sent as JSON) or str."""

    def __init__(self, handler, delay_s: float = 0.0):
        self.handler = handler
        self.delay_s = delay_s
        self.calls: list[tuple[str, dict]] = []
        self.inflight = 0
        self.max_inflight = 0
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(n) or b"{}")
                with outer.lock:
                    outer.calls.append((self.path, payload))
                    outer.inflight += 1
                    outer.max_inflight = max(outer.max_inflight, outer.inflight)
                try:
                    time.sleep(outer.delay_s)
                    status, body = outer.handler(self.path, payload, dict(self.headers))
                finally:
                    with outer.lock:
                        outer.inflight -= 1
                data = (json.dumps(body) if isinstance(body, dict) else body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
