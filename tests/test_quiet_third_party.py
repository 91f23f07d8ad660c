"""Third-party warnings, logs and progress bars (transformers, accelerate, peft, trl, torch,
llama.cpp) stay out of fairbench's output; ``--debug`` lets them through. Captured at the file
descriptor level, so C-level prints of llama.cpp count too."""

from __future__ import annotations

import logging
import warnings

import pytest


@pytest.fixture()
def fresh_logging(monkeypatch):
    """Each test starts from the third-party defaults (an earlier quieting in this process must not
    make it pass) and yields the warnings issued during the test: pytest would otherwise swallow
    them, where a user sees them on stderr."""
    from transformers.utils import logging as hf_logging

    for name in ("transformers", "accelerate", "peft", "trl", "torch"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    for var in ("TRL_EXPERIMENTAL_SILENCE", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "FAIRBENCH_DEBUG"):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)  # recorded, so a value the CLI sets is removed afterwards
    hf_logging.enable_progress_bar()
    logging.Logger.warning_once.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        yield caught
    hf_logging.enable_progress_bar()


def test_mitigate_and_run_print_no_third_party_noise(tmp_path, tiny_models_file, cli, capfd, monkeypatch, fresh_logging):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "simpo.yaml"
    cfg.write_text("samples: 6\nvariants_per_case: 2\nmax_steps: 2\nbatch_size: 2\n")
    m = ["--models-file", str(tiny_models_file)]
    assert cli("mitigate", "--method", "simpo-distill", "--model", "tiny", "--config", str(cfg), "-o", str(tmp_path / "art"), "-q", *m) == 0
    out, err = capfd.readouterr()
    assert err == "" and out.split() == ["tiny+simpo-distill"], (out, err)
    assert cli("run", "-q", "--model", "tiny+simpo-distill", "--limit", "1", "-o", str(tmp_path / "runs"), *m) == 0
    out, err = capfd.readouterr()
    assert err == "", err
    assert [f"{w.filename}: {w.message}" for w in fresh_logging] == []


def test_debug_lets_third_party_output_through(tmp_path, tiny_models_file, cli, capfd, fresh_logging):
    """The same run with --debug: transformers' own output (here its weight-loading bar or
    warnings) is not hidden."""
    m = ["--models-file", str(tiny_models_file)]
    assert cli("run", "-q", "--model", "tiny", "--limit", "1", "--no-cache", "-o", str(tmp_path), "--debug", *m) == 0
    assert capfd.readouterr().err != "" or fresh_logging


def test_llamacpp_run_prints_no_third_party_noise(tmp_path, cli, capfd, fresh_logging):
    from llamacpp_support import require_llama_cpp

    require_llama_cpp()
    assert cli("run", "-q", "--model", "smollm2-135m-llamacpp", "--limit", "1", "--no-cache", "-o", str(tmp_path)) == 0
    out, err = capfd.readouterr()
    assert err == "", err
    assert [str(w.message) for w in fresh_logging] == []
    assert out.strip().splitlines()[-1].startswith(str(tmp_path))


@pytest.mark.integration
def test_first_run_of_the_default_model_prints_only_fairbench_lines(tmp_path, cli, capfd, fresh_logging, monkeypatch):
    """Issue 24: the very first run (empty request cache, empty GGUF conversion cache, which conftest
    and this test point at its own directories) of the embedded default model on the hf backend: the
    GGUF is de-quantised here, and transformers' bare tqdm bar for it ("Converting and de-quantizing
    GGUF tensors") must not show, nor any other third-party line. One case (8 requests)."""
    import os
    from pathlib import Path

    from benchmark.paths import cache_dir

    monkeypatch.chdir(tmp_path)
    # A cache of this test's own: other tests of the session may have converted the GGUF already.
    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path / "first-run-cache"))
    converted = cache_dir() / "converted"
    assert not converted.exists() and not Path(os.environ["FAIRBENCH_REQUEST_CACHE"]).exists()
    assert cli("run", "--limit", "1", "-o", str(tmp_path / "runs")) == 0
    out, err = capfd.readouterr()
    assert any(converted.glob("*/config.json")), "the GGUF was not converted in this run: not a first run"
    assert err == "", err
    assert "\r" not in out  # no carriage-return progress bar of any library
    for marker in ("Converting", "GGUF", "it/s]", "%|", "tqdm", "Warning", "warn(", "transformers", "llama_", "Loading"):
        assert marker not in out, (marker, out[:2000])
    assert out.startswith("verdict: ") or "verdict: " in out.splitlines()[1]
    assert [f"{w.filename}: {w.message}" for w in fresh_logging] == []
