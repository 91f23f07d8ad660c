"""One seed drives Python, numpy and torch."""

from __future__ import annotations

import random

import numpy as np


def seed_everything(seed: int) -> None:
    if not 0 <= seed < 2**63:
        from .errors import FairbenchError

        raise FairbenchError(f"--seed must be a whole number from 0 to 2^63-1, got {seed}.")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
