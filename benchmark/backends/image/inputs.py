"""From a dataset row to a model input tensor, streamed so large datasets never sit in memory."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ...data.image.dataset import ImagingDataset


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


class TensorView(Dataset):
    """Items: (input tensor, target, row index). Targets: float vector (NaN = masked) or class index."""

    def __init__(self, ds: ImagingDataset, size: int, channels: int, mean=0.5, std=0.5):
        self.ds, self.size, self.channels, self.mean, self.std = ds, size, channels, mean, std
        self.targets = ds.targets()

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        x = to_tensor(self.ds.read(i), self.size, self.channels, self.mean, self.std)
        t = self.targets[i]
        target = torch.tensor(np.array(t), dtype=torch.long if self.ds.label_type == "multiclass" else torch.float32)
        return x, target, i
