"""The bad-input corpus (tests/bad_inputs/<case>/): every case must exit with code 2 and one line
`error: ...` naming the problem, with no traceback. Each case directory holds its input files and a
case.yaml with the command line ({here} = the copied case directory, {tiny_models} = a models file
registering the tiny test model as `tiny`, {tiny} = its directory (also inside models.yaml), {out} = an output directory) and the expected text."""

import shutil
from pathlib import Path

import pytest
import yaml

from benchmark.cli import main

CORPUS = Path(__file__).parent / "bad_inputs"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "case.yaml").is_file())


def test_corpus_is_large_enough():
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", CASES)
def test_bad_input(name, tmp_path, tiny_models_file, tiny_llama_dir, capsys):
    here = tmp_path / name
    shutil.copytree(CORPUS / name, here)
    spec = yaml.safe_load((here / "case.yaml").read_text(encoding="utf-8"))
    subs = {"{here}": str(here), "{tiny_models}": str(tiny_models_file), "{tiny}": str(tiny_llama_dir), "{out}": str(tmp_path / "runs")}
    models = here / "models.yaml"  # a models file may name the tiny model's directory as {tiny}
    if models.is_file() and b"{tiny}" in models.read_bytes():
        models.write_bytes(models.read_bytes().replace(b"{tiny}", str(tiny_llama_dir).encode()))
    args = []
    for a in spec["args"]:
        for k, v in subs.items():
            a = a.replace(k, v)
        args.append(a)
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 2, f"exit {code}; stderr: {err!r}"
    assert "Traceback" not in err + out
    assert err.startswith("error: ") and err.count("\n") == 1, f"not one line: {err!r}"
    assert spec["expect"] in err, f"{spec['expect']!r} not in {err!r}"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("results.json"))
