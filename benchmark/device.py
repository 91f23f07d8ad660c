"""Device and dtype by what the hardware supports."""

from __future__ import annotations

import torch

from .errors import FairbenchError


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise FairbenchError(f"device {requested!r} requested but CUDA is not available. Use device: auto or cpu.")
    return torch.device(requested)


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested != "auto":
        dtype = getattr(torch, requested)
        if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # CPU and MPS: half precision is slow or inexact for log-likelihoods; use float32.
    return torch.float32


def bf16_native(device: torch.device) -> bool:
    """True only where bf16 runs natively (training precision is chosen by this)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def idle_cpu_threads() -> int:
    """CPU threads for a spin-waiting thread pool (llama.cpp's OpenMP workers): the cores this process
    may use minus the 1-minute load average, rounded, at least 1. On an idle machine that is every
    core; on a busy one fewer, because spinning workers that share a core with another job wait on each
    other at every barrier (measured on 2 shared cores: 24 s for a 57-token prompt with 2 threads, 1.5 s
    with 1). Choice scores do not depend on it (the llama.cpp scorer is thread-count invariant, tested);
    a generation over 512 or more cells could (llama.cpp's split-KV attention reduces per thread)."""
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, min(cores, int(cores - load + 0.5)))
