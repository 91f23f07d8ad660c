"""One request cache shared across runs, keyed by request content + the FULL model fingerprint
(issue 17): every field of a model entry that can change an output changes the keys; the others
do not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from benchmark.backends.openai import OpenAIBackend
from benchmark.cli import main
from benchmark.config import ModelSpec
from benchmark.engine import plan
from benchmark.spec import RunSpec

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def gen_tasks(tmp_path) -> Path:
    """qpain-demo with a generation mode that takes max_new_tokens from the model entry."""
    tasks = tmp_path / "tasks"
    shutil.copytree(ROOT / "tasks" / "qpain-demo", tasks / "qpain-gen")
    card = tasks / "qpain-gen" / "task.yaml"
    text = card.read_text().replace("name: qpain-demo", "name: qpain-gen").replace("    max_new_tokens: 160\n", "")
    card.write_text(text)
    return tasks


def _variant_dir(tiny: Path, tmp: Path, name: str, edit) -> Path:
    out = tmp / name
    shutil.copytree(tiny, out)
    edit(out)
    return out


def _keys(tmp_path, entry: dict, tasks: Path, mode: str) -> set[str]:
    f = tmp_path / f"m{abs(hash(json.dumps(entry, sort_keys=True, default=str)))}.yaml"
    f.write_text(yaml.safe_dump({"models": {"x": entry}}))
    return set(plan(RunSpec(model="x", task="qpain-gen", prompt_mode=mode, limit=1, models_file=f, tasks_dir=tasks,
                            output_dir=tmp_path / "runs", argv=[])).keys)


def test_each_model_entry_field_one_at_a_time(tmp_path, tiny_llama_dir, gen_tasks):
    tiny = tiny_llama_dir
    other_weights = _variant_dir(tiny, tmp_path, "w2", lambda d: (d / "config.json").write_text(
        (d / "config.json").read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05')))
    other_tok = _variant_dir(tiny, tmp_path, "tok2", lambda d: (d / "tokenizer_config.json").write_text(
        (d / "tokenizer_config.json").read_text().replace("<|im_end|>", "<unk>", 1)))
    same_copy = _variant_dir(tiny, tmp_path, "copy", lambda d: None)
    jinja = _variant_dir(tiny, tmp_path, "jinja", lambda d: (d / "chat_template.jinja").write_text("{{ messages[0]['content'] }}"))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    steering = tmp_path / "steer"
    steering.mkdir()
    (steering / "steering.json").write_text("{}")

    base = {"backend": "hf", "model": str(tiny), "chat_template": True}
    # field -> (new value, changes outputs?). Every ModelSpec field must be classified here.
    changes = {
        "model": (str(other_weights), True),
        "tokenizer": (str(other_tok), True),
        "dtype": ("bfloat16", True),
        "chat_template": (False, True),
        "system_prompt": ("You are a careful clinician.", True),
        "trust_remote_code": (True, True),
        "max_length": (64, True),
        "adapter": (str(adapter), True),
        "steering": (str(steering), True),
        "generation.max_new_tokens": (17, True),
        "generation.temperature": (0.7, True),
        "generation.top_p": (0.9, True),
        # cannot change an output (or not on this backend):
        "name": (None, False),  # the entry's key; the fingerprint is about content
        "description": ("another text", False),
        "revision": ("v2", False),  # a local directory has no revisions (hub ids: covered below)
        "device": ("cpu", False),  # CPU here either way; the resolved dtype is what counts
        "batch_size": (3, False),  # floats within 1e-4 (README: A run directory)
        "base": ("tiny", False),
        "eval_cases": (None, False),  # selects cases; each case's requests keep their keys
        "gguf_file": (None, False),  # covered by test_gguf_and_hub_identity
        "backend": (None, False),  # another backend is another fingerprint function (tested below)
        "base_url": ("http://127.0.0.1:1/v1", False),
        "api_key_env": ("SOME_KEY", False),
        "scoring_endpoint": ("chat", False),
        "max_concurrency": (2, False),
        "timeout_s": (5.0, False),
        "tensor_parallel_size": (2, False),
        "pipeline_parallel_size": (2, False),
        "extra": (None, False),  # hf reads no extra settings (validated: unknown keys are errors)
        "generation": (None, False),  # its three fields are listed one by one
    }
    assert set(ModelSpec.model_fields) <= set(changes) | {f.split(".")[0] for f in changes}, \
        f"classify new fields: {set(ModelSpec.model_fields) - set(changes)}"
    ref = {mode: _keys(tmp_path, base, gen_tasks, mode) for mode in ("zero_shot", "cot")}
    for field, (value, affects) in changes.items():
        if value is None:
            continue
        entry = json.loads(json.dumps(base))
        if field.startswith("generation."):
            entry.setdefault("generation", {})[field.split(".")[1]] = value
        else:
            entry[field] = value
        mode = "cot" if field.startswith("generation.") else "zero_shot"
        keys = _keys(tmp_path, entry, gen_tasks, mode)
        if affects:
            assert keys.isdisjoint(ref[mode]), f"{field}: changing it must recompute every request"
        else:
            assert keys == ref[mode], f"{field}: cannot change outputs, must reuse the cache"
    # a copy of the same files is the same model; a chat template saved apart is part of it
    assert _keys(tmp_path, {**base, "model": str(same_copy)}, gen_tasks, "zero_shot") == ref["zero_shot"]
    assert _keys(tmp_path, {**base, "model": str(jinja)}, gen_tasks, "zero_shot").isdisjoint(ref["zero_shot"])


def test_gguf_hub_and_backend_versions_in_the_fingerprint(monkeypatch):
    from benchmark.backends import base as backend_base

    hub = ModelSpec(name="h", backend="hf", model="org/model-that-is-not-local")
    assert OpenAIBackend is not None
    from benchmark.backends.hf import HFBackend

    a = HFBackend.fingerprint(hub)
    assert HFBackend.fingerprint(hub.model_copy(update={"revision": "abc123"})) != a
    assert HFBackend.fingerprint(hub.model_copy(update={"tokenizer": "org/other-tokenizer"})) != a
    real = backend_base.package_version
    monkeypatch.setattr("benchmark.backends.hf.package_version", lambda name: "0.0.0" if name == "transformers" else real(name))
    assert HFBackend.fingerprint(hub) != a


def test_openai_fields_one_at_a_time(monkeypatch):
    monkeypatch.setenv("K", "secret")
    base = ModelSpec(name="s", backend="openai", model="served", base_url="http://127.0.0.1:8000/v1", scoring_endpoint="chat")
    fp = OpenAIBackend.fingerprint(base)
    affects = {"base_url": "http://127.0.0.1:9000/v1", "model": "other", "revision": "r2", "scoring_endpoint": "completions",
               "tokenizer": "org/tok", "system_prompt": "x", "max_length": 99,
               "extra": {"top_logprobs": 5}, "generation": {"top_p": 0.5}}
    neutral = {"api_key_env": "K", "max_concurrency": 3, "timeout_s": 9.0, "extra": {"max_retries": 9, "backoff_s": 2.0},
               "description": "d", "batch_size": 4}
    for field, value in affects.items():
        spec = base.model_copy(update={field: value if field != "generation" else base.generation.model_copy(update=value)})
        assert OpenAIBackend.fingerprint(spec) != fp, field
    for field, value in neutral.items():
        assert OpenAIBackend.fingerprint(base.model_copy(update={field: value})) == fp, field


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_limit_10_after_limit_2_computes_only_new_requests(tmp_path, tiny_models_file):
    out = tmp_path / "runs"
    args = ["run", "--model", "tiny", "--models-file", str(tiny_models_file), "-o", str(out), "-q"]
    assert main([*args, "--limit", "1"]) == 0
    assert main([*args, "--limit", "2"]) == 0
    t = _manifest(out / "tiny__qpain-demo__zero_shot__seed0__limit2")["timing"]
    assert (t["n_reused"], t["n_computed"]) == (8, 8)
    assert (tmp_path / "request-cache" / "requests.sqlite").is_file()  # $FAIRBENCH_REQUEST_CACHE (conftest)
    # the output directory holds only run directories
    assert sorted(d.name for d in out.iterdir()) == ["tiny__qpain-demo__zero_shot__seed0__limit1", "tiny__qpain-demo__zero_shot__seed0__limit2"]
    # --no-cache: computed again (a fresh run directory), nothing written to the shared cache
    assert main([*args, "--limit", "2", "--seed", "1", "--no-cache"]) == 0
    t = _manifest(out / "tiny__qpain-demo__zero_shot__seed1__limit2")["timing"]
    assert t["n_reused"] == 0 and t["n_computed"] == 16
    # --cache-dir: the cache lives there and serves another output directory
    shared = tmp_path / "shared"
    assert main([*args[:-3], "-o", str(tmp_path / "a"), "-q", "--limit", "1", "--cache-dir", str(shared)]) == 0
    assert main([*args[:-3], "-o", str(tmp_path / "b"), "-q", "--limit", "1", "--cache-dir", str(shared)]) == 0
    t = _manifest(tmp_path / "b" / "tiny__qpain-demo__zero_shot__seed0__limit1")["timing"]
    assert (t["n_reused"], t["n_computed"]) == (8, 0) and (shared / "requests.sqlite").is_file()


def test_another_tokenizer_recomputes(tmp_path, tiny_llama_dir):
    """The bug of the issue: pointing an entry at another tokenizer reused the old rows."""
    tok = _variant_dir(tiny_llama_dir, tmp_path, "tok2", lambda d: (d / "tokenizer_config.json").write_text(
        (d / "tokenizer_config.json").read_text().replace("<|im_end|>", "<unk>", 1)))
    f = tmp_path / "m.yaml"
    out = tmp_path / "runs"
    run_dir = out / "tiny__qpain-demo__zero_shot__seed0__limit1"
    f.write_text(f"models:\n  tiny:\n    backend: hf\n    model: {tiny_llama_dir}\n    chat_template: true\n")
    assert main(["run", "--model", "tiny", "--limit", "1", "--models-file", str(f), "-o", str(out), "-q"]) == 0
    first = _manifest(run_dir)["model"]["fingerprint"]
    f.write_text(f"models:\n  tiny:\n    backend: hf\n    model: {tiny_llama_dir}\n    tokenizer: {tok}\n    chat_template: true\n")
    assert main(["run", "--model", "tiny", "--limit", "1", "--models-file", str(f), "-o", str(out), "-q"]) == 0
    m = _manifest(run_dir)
    assert m["model"]["fingerprint"] != first and m["timing"]["n_computed"] == 8 and m["timing"]["n_reused"] == 0
