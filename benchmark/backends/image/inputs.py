"""From a dataset row to a model input tensor, streamed so large datasets never sit in memory.

Two input modalities (the card's ``input_modality``):
- ``image``: (H, W) or (H, W, 3) in [0, 1] -> normalised (channels, size, size), resized bilinearly.
- ``signal``: (channels, T) waveform -> (channels, T), each channel standardised over time; never
  resized or resampled, and no operation mixes channels (a 12-lead ECG keeps one row per lead).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ...data.image.dataset import ImagingDataset
from ...errors import FairbenchError


def to_tensor(array: np.ndarray, size: int, channels: int, mean: float | list[float] = 0.5, std: float | list[float] = 0.5) -> torch.Tensor:
    """(H, W) or (H, W, 3) float in [0, 1] -> normalised (channels, size, size)."""
    x = torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32)
    x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
    if x.shape[0] != channels:
        x = x.mean(0, keepdim=True).expand(channels, -1, -1) if channels in (1, 3) else x[:channels]
    if x.shape[1:] != (size, size):
        x = F.interpolate(x.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    return (x - mean_t) / std_t


def to_signal_tensor(array: np.ndarray, channels: int, length: int, eps: float = 1e-6) -> torch.Tensor:
    """(channels, T) waveform in any unit -> float32 (channels, T), per-channel z-score over time.

    This is the per-instance, per-channel normalisation of RevIN (Kim et al., ICLR 2022) that
    PatchTST applies (Nie et al., ICLR 2023; transformers ``PatchTSTConfig(scaling="std")``), done
    here so every signal model sees the same input; it removes baseline offset and gain without
    touching the time axis. Raises FairbenchError when the shape is not the card's (channels, T)."""
    x = torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32)
    if tuple(x.shape) != (channels, length):
        raise FairbenchError(
            f"a signal of shape {tuple(x.shape)} reached a model built for {channels} channels x {length} samples; "
            "the card's signal block (channels, sampling_rate x seconds) must match the records."
        )
    return (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + eps)


def to_input(array: np.ndarray, size=None, channels: int = 1, mean=0.5, std=0.5, modality: str = "image", length: int | None = None) -> torch.Tensor:
    """One model input from a reader's array, by modality (keywords as in a classifier's ``inputs``)."""
    if modality == "signal":
        return to_signal_tensor(array, channels, int(length))
    return to_tensor(array, size, channels, mean, std)


class TensorView(Dataset):
    """Items: (input tensor, target, row index). Targets: float vector (NaN = masked) or class index.

    ``TensorView(ds, **inputs)`` with a classifier's ``inputs`` dict picks the right modality."""

    def __init__(self, ds: ImagingDataset, size=None, channels: int = 1, mean=0.5, std=0.5, modality: str = "image", length: int | None = None):
        self.ds = ds
        self.inputs = {"size": size, "channels": channels, "mean": mean, "std": std, "modality": modality, "length": length}
        self.targets = ds.targets()

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        x = to_input(self.ds.read(i), **self.inputs)
        t = self.targets[i]
        target = torch.tensor(np.array(t), dtype=torch.long if self.ds.label_type == "multiclass" else torch.float32)
        return x, target, i
