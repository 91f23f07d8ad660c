"""The core install (no extras) runs without torch: `fairbench list`, an openai-backend run and a
llamacpp run work with torch and the other `hf` / `mitigations` packages hidden from the import
system, and an in-process hf model gives one line naming the extra to install (exit 2)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from fake_openai import FakeServer, completions_echo

ROOT = Path(__file__).resolve().parent.parent
# The packages of the hf, mitigations, timm and vllm extras: absent from a core install.
HIDDEN = ["torch", "accelerate", "safetensors", "peft", "trl", "datasets", "optuna", "concept_erasure",
          "sentence_transformers", "torchvision", "timm", "open_clip", "vllm"]
# A path finder that does not find the hidden packages: imports fail and importlib.util.find_spec
# returns None, exactly as when they are not installed (transformers probes torch that way).
RUNNER = """
import importlib.machinery as m, sys
HIDDEN = set(sys.argv[1].split(","))
class Hidden(m.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.split(".")[0] in HIDDEN else m.PathFinder.find_spec(name, path, target)
sys.meta_path[:] = [Hidden if f is m.PathFinder else f for f in sys.meta_path]
from benchmark.cli import main
code = main(sys.argv[2:])
leaked = sorted(HIDDEN & {n.split(".")[0] for n in sys.modules})
print("LEAKED", leaked, file=sys.stderr) if leaked else None
sys.exit(code)
"""


def _fairbench(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUNNER, ",".join(HIDDEN), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def test_pyproject_keeps_torch_in_the_hf_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    extras = project["optional-dependencies"]
    assert "torch" not in core and "accelerate" not in core
    assert any(d.startswith("torch") for d in extras["hf"])
    # The quick start (`make install`: extras dev,mitigations,llamacpp) still gets torch.
    assert "fairbench-med[hf]" in extras["dev"] and "fairbench-med[hf]" in extras["mitigations"]


def test_list_and_openai_run_without_torch(tmp_path):
    proc = _fairbench("list", "models", cwd=tmp_path)
    assert proc.returncode == 0 and "smollm2-135m" in proc.stdout and proc.stderr == "", proc.stderr
    with FakeServer(lambda path, payload, headers: (200, completions_echo(payload))) as srv:
        proc = _fairbench("run", "--model", "openai", "--model-args", f"base_url={srv.base_url},model=m,chat_template=false",
                          "--limit", "1", "--no-cache", "-o", str(tmp_path / "runs"), "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    assert (run_dir / "results.json").is_file() and run_dir.parent == tmp_path / "runs"


def test_hf_model_without_torch_names_the_extra(tmp_path):
    proc = _fairbench("run", "--model", "smollm2-135m", "--limit", "1", "--no-cache", "-o", str(tmp_path / "runs"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "error: this needs torch, which is not installed: pip install 'fairbench-med[hf]'\n"


def test_llamacpp_run_without_torch(tmp_path):
    from llamacpp_support import require_llama_cpp

    require_llama_cpp()
    proc = _fairbench("run", "--model", "smollm2-135m-llamacpp", "--limit", "1", "--no-cache", "-o", str(tmp_path / "runs"), "-q",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (Path(proc.stdout.strip().splitlines()[-1]) / "results.json").is_file()


@pytest.mark.parametrize("module, extra", [("torch", "hf"), ("peft", "mitigations"), ("llama_cpp", "llamacpp"), ("h5py", "vision")])
def test_missing_extra_message(module, extra):
    from benchmark.cli import missing_extra

    assert missing_extra(ModuleNotFoundError(f"No module named '{module}'", name=module)).endswith(f"'fairbench-med[{extra}]'")
    assert missing_extra(ModuleNotFoundError("No module named 'nosuch'", name="nosuch")) is None
