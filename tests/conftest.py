"""Shared fixtures: a tiny random-weight Llama with its own tokenizer, built offline, and the
official data folder (../shared/data, or $FAIRBENCH_TEST_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, tmp_path, monkeypatch):
    """Tests never touch the user's ~/.cache/fairbench. One cache per test session, so the embedded
    GGUF model is converted once per session; one shared request cache per test, so a test counts
    only its own model calls."""
    cache = tmp_path_factory.getbasetemp() / "fairbench-cache"
    monkeypatch.setenv("FAIRBENCH_CACHE", str(cache))
    monkeypatch.setenv("FAIRBENCH_REQUEST_CACHE", str(tmp_path / "request-cache"))
    monkeypatch.delenv("FAIRBENCH_MODELS_FILE", raising=False)
    monkeypatch.delenv("FAIRBENCH_TASKS_DIR", raising=False)
    monkeypatch.delenv("FAIRBENCH_DATA", raising=False)


def _train_tokenizer(out: Path, corpus: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide Llama with random (seeded) weights and a BPE tokenizer trained here."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    corpus = (ROOT / "tasks" / "qpain-demo" / "vignettes.csv").read_text().splitlines() * 3
    corpus += ["Yes No Answer: Yes Answer: No Low High"] * 200  # so the options are single tokens
    tok = _train_tokenizer(out, corpus)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture()
def tiny_models_file(tmp_path, tiny_llama_dir) -> Path:
    """A user models file registering the tiny model as ``tiny`` (chat) and ``tiny-plain``."""
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n"
        f"  tiny:\n    backend: hf\n    model: {tiny_llama_dir}\n    chat_template: true\n"
        f"  tiny-plain:\n    backend: hf\n    model: {tiny_llama_dir}\n    chat_template: false\n"
    )
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The official task files; tests that need them skip with a reason where absent."""
    path = Path(os.environ.get("FAIRBENCH_TEST_DATA", ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"official task data not found at {path} (set FAIRBENCH_TEST_DATA)")
    return path


@pytest.fixture()
def cli():
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from benchmark.cli import main

    def _run(*args: str, capsys=None):
        return main(list(args))

    return _run
