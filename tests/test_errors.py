"""Bad input: one line naming file, field and fix; exit code 2; no traceback."""

import os

import pytest

from benchmark.cli import main


def _err(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.err


def test_malformed_models_yaml(tmp_path, capsys):
    bad = tmp_path / "models.yaml"
    bad.write_text("models:\n  x:\n    backend: hf\n   model: [unclosed\n")
    code, err = _err(capsys, "run", "--models-file", str(bad))
    assert code == 2
    assert str(bad) in err and "malformed YAML at line" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_unknown_field_in_models_yaml(tmp_path, capsys):
    bad = tmp_path / "models.yaml"
    bad.write_text("models:\n  x:\n    backend: hf\n    model: foo\n    trust_remote: true\n")
    code, err = _err(capsys, "run", "--model", "x", "--models-file", str(bad))
    assert code == 2 and "models.x.trust_remote" in err and "unknown field" in err


def test_wrong_type_in_models_yaml(tmp_path, capsys):
    bad = tmp_path / "models.yaml"
    bad.write_text("models:\n  x:\n    backend: hf\n    model: foo\n    batch_size: -3\n")
    code, err = _err(capsys, "list", "models", "--models-file", str(bad))
    assert code == 2 and "models.x.batch_size" in err


def test_unknown_model_suggests_closest(capsys):
    code, err = _err(capsys, "run", "--model", "smollm2-135")
    assert code == 2 and 'unknown model "smollm2-135"' in err and 'Did you mean "smollm2-135m"' in err


def test_unknown_task_suggests_closest(capsys):
    code, err = _err(capsys, "run", "--task", "qpain-dem")
    assert code == 2 and 'Did you mean "qpain-demo"' in err


def test_unknown_prompt_mode(capsys, tiny_models_file):
    code, err = _err(capsys, "run", "--model", "tiny", "--prompt-mode", "zeroshot", "--models-file", str(tiny_models_file))
    assert code == 2 and 'Did you mean "zero_shot"' in err


def test_missing_gguf(tmp_path, capsys):
    f = tmp_path / "models.yaml"
    f.write_text(f"models:\n  g:\n    backend: hf\n    model: {tmp_path}\n    gguf_file: nope.gguf\n")
    code, err = _err(capsys, "run", "--model", "g", "--models-file", str(f))
    assert code == 2 and "nope.gguf not found" in err


def test_missing_model_path(tmp_path, capsys):
    f = tmp_path / "models.yaml"
    f.write_text(f"models:\n  g:\n    backend: hf\n    model: {tmp_path / 'absent'}\n")
    code, err = _err(capsys, "run", "--model", "g", "--models-file", str(f))
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize("limit", ["0", "-2", "ten"])
def test_invalid_limit(capsys, limit):
    code, err = _err(capsys, "run", "--limit", limit)
    assert code == 2 and "--limit" in err and "Traceback" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_dir_nonroot(tmp_path, capsys, tiny_models_file):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    code, err = _err(capsys, "run", "--model", "tiny", "--output-dir", str(ro / "x"), "--models-file", str(tiny_models_file))
    assert code == 2 and "not writable" in err


def test_unwritable_output_dir(tmp_path, capsys, tiny_models_file):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    code, err = _err(capsys, "run", "--model", "tiny", "--limit", "1", "--output-dir", str(blocker / "runs"), "--models-file", str(tiny_models_file))
    assert code == 2 and "not writable" in err and "--output-dir" in err


def test_debug_shows_traceback(capsys):
    from benchmark.errors import FairbenchError

    with pytest.raises(FairbenchError):
        main(["--debug", "run", "--model", "nope"])
