"""Helpers for tests that need llama-cpp-python: skip with the reason where it is absent, but fail
in CI (where `make test` installs it), and start/stop llama.cpp's OpenAI-compatible server."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def require_llama_cpp() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        msg = "llama-cpp-python is not installed (pip install 'fairbench-med[llamacpp]'; `make test` installs it)"
        if os.environ.get("CI"):
            pytest.fail(msg + " - CI must run the llama.cpp tests")
        pytest.skip(msg)


def smollm2_gguf() -> Path:
    from benchmark.config import load_models
    from benchmark.errors import FairbenchError

    spec = load_models().get("smollm2-135m-llamacpp")
    try:
        return Path(spec.resolved_model_path()) / spec.gguf_file
    except FairbenchError as exc:
        pytest.skip(str(exc))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """``python -m llama_cpp.server`` on 127.0.0.1 with the embedded GGUF; restartable on one port."""

    def __init__(self, gguf: Path, port: int | None = None):
        self.gguf = gguf
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 120) -> "LlamaServer":
        # The stock server, started without llama.cpp's weight repacking (see
        # benchmark.backends.llamacpp.without_weight_repacking: GCC 12 miscompiles its AMX kernels).
        launch = ("import sys, runpy, llama_cpp; from benchmark.backends.llamacpp import without_weight_repacking; "
                  "without_weight_repacking(llama_cpp); sys.argv[0] = 'llama_cpp.server'; "
                  "runpy.run_module('llama_cpp.server', run_name='__main__')")
        cmd = [
            sys.executable, "-c", launch, "--model", str(self.gguf), "--model_alias", "smollm2",
            "--host", "127.0.0.1", "--port", str(self.port), "--logits_all", "true", "--n_ctx", "2048",
            "--n_threads", "1", "--n_threads_batch", "1", "--seed", "0",
            # The kernels of the in-process scorer (benchmark/backends/llamacpp_batch.py): flash
            # attention, at most 32 tokens per decode (fewer than its 64-query tile).
            "--flash_attn", "true", "--n_batch", "32", "--n_ubatch", "32",
        ]
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"llama-server-{self.port}.log", "ab")
        # Passive OpenMP waits: spinning workers crawl on a shared CPU.
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not answer within {timeout_s}s; see {self.log.name}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.log:
            self.log.close()
            self.log = None
