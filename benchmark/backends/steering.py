"""Apply a steering transform inside a transformers model at test time, through a forward hook on
one decoder layer. The hook edits the hidden state of the last position of every forward pass (the
position whose logits score the answer; with left padding it is the same column for the batch, and
during generation it is each new token).

A transform is stored as safetensors (never pickle) plus a JSON header:
  basis (d, k), center (d): the subspace it acts in, h' = h + basis (T(z) - z), z = (h - center) basis
  A (K, k, k), b (K, k): the affine map of each component
  gate_mean (K, k), gate_prec (K, k, k), gate_logc (K): the Gaussian probe that weighs components
  (log prior - 1/2 log det cov); with K = 1 there is no gate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import FairbenchError

TENSORS = "transform.safetensors"
HEADER = "transform.json"


def save_transform(out: Path, basis: np.ndarray, center: np.ndarray, transform, header: dict) -> None:
    comps = transform.components
    tensors = {
        "basis": basis, "center": center,
        "A": np.stack([c.a for c in comps]), "b": np.stack([c.b for c in comps]),
        "gate_mean": np.stack([c.gate_mean for c in comps]),
        "gate_prec": np.stack([np.linalg.inv(c.gate_cov) for c in comps]),
        "gate_logc": np.array([c.log_prior - 0.5 * np.linalg.slogdet(c.gate_cov)[1] for c in comps]),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float32) for k, v in tensors.items()}, str(out / TENSORS))
    (out / HEADER).write_text(json.dumps({**header, "components": [c.label for c in comps]}, indent=2, sort_keys=True) + "\n")


class SteeringHook:
    """Callable transform of hidden states (..., d) -> (..., d) from a saved directory."""

    def __init__(self, directory: str | Path):
        directory = Path(directory).expanduser()
        if not (directory / TENSORS).is_file() or not (directory / HEADER).is_file():
            raise FairbenchError(f"steering directory {directory} lacks {TENSORS}/{HEADER}; re-run `fairbench mitigate --method steering`.")
        self.header = json.loads((directory / HEADER).read_text())
        self.t = load_file(str(directory / TENSORS))
        self.layer = int(self.header["layer"])

    def to(self, device, dtype=torch.float32):
        self.t = {k: v.to(device=device, dtype=torch.float32) for k, v in self.t.items()}
        return self

    def transform(self, h: torch.Tensor) -> torch.Tensor:
        t = self.t
        z = (h.float() - t["center"]) @ t["basis"]  # (n, k)
        mapped = torch.einsum("kij,nj->nki", t["A"], z) + t["b"]  # (n, K, k)
        if mapped.shape[1] == 1:
            z2 = mapped[:, 0]
        else:
            diff = z[:, None, :] - t["gate_mean"]  # (n, K, k)
            maha = torch.einsum("nki,kij,nkj->nk", diff, t["gate_prec"], diff)
            w = torch.softmax(t["gate_logc"] - 0.5 * maha, dim=1)
            z2 = (w[:, :, None] * mapped).sum(1)
        return (h.float() + (z2 - z) @ t["basis"].T).to(h.dtype)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder blocks of a causal LM (also under a PEFT wrapper): the ModuleList whose length is
    ``config.num_hidden_layers``."""
    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise FairbenchError(f"cannot find the {n} decoder layers of {type(model).__name__} to hook for steering.")


def capture_last(model, layer: int):
    """Install a hook that records the last-position hidden state of ``layer``; returns (handle, store)."""
    store: list[torch.Tensor] = []

    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        store.append(hidden[:, -1, :].detach().float().cpu())

    return decoder_layers(model)[layer].register_forward_hook(hook), store


def install_steering(model, directory: str | Path):
    """Attach the transform in ``directory`` to ``model``; returns the hook handle."""
    steer = SteeringHook(directory)
    layers = decoder_layers(model)
    if not -len(layers) <= steer.layer < len(layers):
        raise FairbenchError(f"steering directory {directory}: layer {steer.layer} does not exist in a {len(layers)}-layer model.")
    device = next(model.parameters()).device
    steer.to(device)
    if steer.t["basis"].shape[0] != model.config.hidden_size:
        raise FairbenchError(f"steering directory {directory} was fitted for hidden size {steer.t['basis'].shape[0]}, "
                             f"but the model has {model.config.hidden_size}; it belongs to another base model.")

    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, -1, :] = steer.transform(hidden[:, -1, :])
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return layers[steer.layer].register_forward_hook(hook)
