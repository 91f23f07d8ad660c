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

