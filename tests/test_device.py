"""Device, dtype and thread choice by what the hardware supports (benchmark/device.py)."""

import os

import torch

from benchmark import device
from benchmark.backends.llamacpp_batch import idle_cpu_threads


def test_idle_cpu_threads_is_the_cores_left_by_the_load(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    for load, expected in ((0.0, 4), (0.4, 4), (1.6, 2), (3.9, 1), (12.0, 1)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, 0.0, 0.0))
        assert idle_cpu_threads() == expected, load


def test_idle_cpu_threads_without_a_load_average(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)

    def unavailable():
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", unavailable)
    assert idle_cpu_threads() == 2


def test_cpu_dtype_is_float32_and_bf16_training_only_where_native():
    cpu = torch.device("cpu")
    assert device.pick_dtype("auto", cpu) == torch.float32
    assert device.pick_dtype("float16", cpu) == torch.float16
    assert device.bf16_native(cpu) is False
