"""Issue 24: the first screen. ``fairbench`` alone and ``fairbench run --help`` show, within 24 lines
of an 80-column terminal, the three commands a newcomer needs and a worked example, and the example
names models and tasks that exist."""

from __future__ import annotations

import re
import shlex

import pytest

from benchmark.cli import START, main

THREE = ("fairbench run", "fairbench report runs/", "fairbench leaderboard runs/")


def _first_screen(capsys, args, monkeypatch) -> list[str]:
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("LINES", "24")
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(len(x) <= 80 for x in lines), [x for x in lines if len(x) > 80]
    return lines


@pytest.mark.parametrize("args", [[], ["run", "--help"]], ids=["no arguments", "run --help"])
def test_three_commands_and_a_worked_example_within_24_lines(args, capsys, monkeypatch):
    screen = "\n".join(_first_screen(capsys, args, monkeypatch)[:24])
    for command in THREE:
        assert command in screen, command
    assert "Worked example" in screen and "--limit 3" in screen
    assert "verdict: EFFECT FOUND" in screen  # how to read what run prints


def test_the_example_names_real_models_and_tasks():
    from benchmark.cards import discover
    from benchmark.config import load_models

    example = START.split("Worked example", 1)[1].split("\n", 1)[1].split('"verdict')[0]
    argv = shlex.split(example.replace("\n", " "))
    models = argv[argv.index("-m") + 1].split(",")
    tasks = argv[argv.index("-t") + 1].split(",")
    assert set(models) <= set(load_models(None).names())
    assert set(tasks) <= set(discover(None))
    run_dir = re.search(r"fairbench report (\S+)", START).group(1)
    assert run_dir == "runs/smollm2-135m__qpain-demo__zero_shot__seed0"  # what a plain `fairbench run` writes


def test_no_arguments_is_not_an_error(capsys):
    assert main([]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.startswith("fairbench: ")


def test_the_command_list_names_every_command(capsys, monkeypatch):
    from benchmark.cli import app

    lines = _first_screen(capsys, [], monkeypatch)
    i = next(n for n, x in enumerate(lines) if x.startswith("Commands: "))
    listed = " ".join(lines[i:i + 3]).split("Docs:")[0].removeprefix("Commands: ").split()
    want = [c.name or c.callback.__name__ for c in app.registered_commands] + [g.name for g in app.registered_groups]
    assert listed == want and "power" in listed
