"""``classifier``: an image backbone with a linear head, trained by fairbench on the task's
training split (fine-tune or linear probe), selected on validation loss.

Backbones (``extra.backbone``):
- ``vit`` (default): transformers ``ViTModel``. ``model: scratch`` builds a small random-init ViT
  from ``extra`` (image_size, patch_size, hidden_size, num_layers, num_heads) -- the CPU default;
  any other ``model`` is a local directory or hub id of a ViT checkpoint.
- ``timm``: ``timm.create_model(model)`` -- optional extra; timm needs torchvision.
- ``patchtst`` (the only backbone for cards with ``input_modality: signal``, e.g. PTB-XL):
  transformers ``PatchTSTModel`` (Nie et al., ICLR 2023) over the (channels, T) waveform at its
  declared rate. ``model: scratch`` builds it from ``extra`` (hidden_size, num_layers, num_heads and
  ``patch_seconds``, the patch length in seconds, stride = length); any other ``model`` is a
  PatchTST checkpoint. Features: each channel's patch tokens mean-pooled, channels concatenated
  (N, channels x hidden) -- the pooling of ``PatchTSTForClassification``'s head.
Training settings in ``extra``: head (finetune | linear_probe), epochs, lr, batch_size,
weight_decay, patience, num_workers. Weights are saved as safetensors in the run directory and
reused when the same run resumes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...device import pick_device
from ...errors import FairbenchError
from ...requests import Request, Result
from ..base import Backend, spec_digest
from .inputs import TensorView, to_input
from .train import TrainConfig, train_classifier

SCRATCH = {"image_size": 64, "patch_size": 8, "hidden_size": 64, "num_layers": 4, "num_heads": 4, "channels": 1}
SIGNAL = {"patch_seconds": 0.25}  # 0.25 s patches: 40 tokens per lead over a 10 s ECG
TRAIN = {"head": "finetune", "epochs": 8, "lr": 1e-3, "batch_size": 64, "weight_decay": 0.01, "patience": None, "num_workers": 0}


class ImageClassifier(nn.Module):
    """backbone(pixel_values) -> features (N, D); head -> logits (N, K)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, n_outputs: int, kind: str = "vit"):
        super().__init__()
        self.backbone, self.kind = backbone, kind
        self.head = nn.Linear(feature_dim, n_outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "vit":
            return self.backbone(pixel_values=x).last_hidden_state[:, 0]
        if self.kind == "patchtst":  # x: (N, channels, T); PatchTST takes (N, T, channels)
            hidden = self.backbone(past_values=x.transpose(1, 2)).last_hidden_state  # (N, C, patches, D)
            return hidden.mean(dim=2).flatten(1)
        return self.backbone(x)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        f = self.features(x)
        logits = self.head(f)
        return (logits, f) if return_features else logits


def _settings(spec, card) -> tuple[dict, dict]:
    arch = {**SCRATCH, "image_size": card.image_size}
    arch.update({k: v for k, v in spec.extra.items() if k in SCRATCH})
    train = {**TRAIN, **{k: v for k, v in spec.extra.items() if k in TRAIN}}
    arch.update({k: spec.extra.get(k, v) for k, v in SIGNAL.items()})
    unknown = set(spec.extra) - set(SCRATCH) - set(SIGNAL) - set(TRAIN) - {"backbone", "mean", "std"}
    if unknown:
        raise FairbenchError(f'model "{spec.name}": unknown extra setting(s) {sorted(unknown)} for the classifier backend.')
    if train["head"] not in ("finetune", "linear_probe"):
        raise FairbenchError(f'model "{spec.name}": extra.head must be finetune or linear_probe.')
    return arch, train


def build_classifier(spec, card, n_outputs: int) -> tuple[ImageClassifier, dict]:
    """The model and its input settings (size, channels, mean, std). Reused by mitigations."""
    arch, _ = _settings(spec, card)
    if getattr(card, "input_modality", "image") == "signal":
        return build_signal_classifier(spec, card, arch, n_outputs)
    backbone_kind = spec.extra.get("backbone", "vit")
    if backbone_kind == "timm":
        try:
            import timm
        except Exception as exc:  # ImportError, or torchvision operator errors beside torch CPU builds
            raise FairbenchError(
                f'model "{spec.name}": the timm backbone needs timm and a torchvision matching torch '
                f"(pip install 'fairbench-med[timm]'): {str(exc).splitlines()[0]}. Use backbone: vit instead."
            ) from None
        net = timm.create_model(spec.model, pretrained=True, num_classes=0)
        cfg = net.pretrained_cfg
        inputs = {"size": cfg["input_size"][-1], "channels": cfg["input_size"][0], "mean": list(cfg["mean"]), "std": list(cfg["std"])}
        return ImageClassifier(net, net.num_features, n_outputs, kind="timm"), inputs
    if backbone_kind != "vit":
        raise FairbenchError(f'model "{spec.name}": extra.backbone must be vit or timm, got {backbone_kind!r}.')
    from transformers import ViTConfig, ViTModel

    if spec.model == "scratch":
        config = ViTConfig(
            image_size=arch["image_size"], patch_size=arch["patch_size"], num_channels=arch["channels"],
            hidden_size=arch["hidden_size"], num_hidden_layers=arch["num_layers"], num_attention_heads=arch["num_heads"],
            intermediate_size=arch["hidden_size"] * 2,
        )
        net = ViTModel(config, add_pooling_layer=False)
        inputs = {"size": arch["image_size"], "channels": arch["channels"], "mean": spec.extra.get("mean", 0.5), "std": spec.extra.get("std", 0.5)}
    else:
        try:
            net = ViTModel.from_pretrained(spec.model, revision=spec.revision, trust_remote_code=spec.trust_remote_code, add_pooling_layer=False)
        except OSError as exc:
            raise FairbenchError(f'model "{spec.name}": cannot load ViT weights from {spec.model!r} ({str(exc).splitlines()[0]}).') from None
        c = net.config
        inputs = {"size": c.image_size, "channels": c.num_channels, "mean": spec.extra.get("mean", 0.5), "std": spec.extra.get("std", 0.5)}
    return ImageClassifier(net, net.config.hidden_size, n_outputs), inputs


def build_signal_classifier(spec, card, arch: dict, n_outputs: int) -> tuple[ImageClassifier, dict]:
    """A PatchTST backbone for a (channels, T) waveform; T and channels come from the card's signal block."""
    from transformers import PatchTSTConfig, PatchTSTModel

    sig = card.signal
    backbone_kind = spec.extra.get("backbone", "patchtst")
    if backbone_kind != "patchtst":
        raise FairbenchError(
            f'task {card.name} feeds a {sig.channels}-channel waveform (input_modality: signal); model "{spec.name}" asks '
            f"for the image backbone {backbone_kind!r}. Use backbone: patchtst (the default for signal tasks)."
        )
    inputs = {"size": None, "channels": sig.channels, "mean": None, "std": None, "modality": "signal", "length": sig.length}
    if spec.model == "scratch":
        patch = max(1, round(float(arch["patch_seconds"]) * sig.sampling_rate))
        if patch > sig.length:
            raise FairbenchError(f'model "{spec.name}": extra.patch_seconds {arch["patch_seconds"]} is longer than the {sig.seconds} s signal.')
        config = PatchTSTConfig(
            num_input_channels=sig.channels, context_length=sig.length, patch_length=patch, patch_stride=patch,
            d_model=arch["hidden_size"], num_hidden_layers=arch["num_layers"], num_attention_heads=arch["num_heads"],
            ffn_dim=arch["hidden_size"] * 2,
            # Inputs arrive standardised per lead (inputs.to_signal_tensor), so no second scaler. LayerNorm
            # instead of the paper's BatchNorm: batch statistics would couple records and leads in training.
            scaling=None, norm_type="layernorm", channel_attention=False,
        )
        net = PatchTSTModel(config)
    else:
        from transformers import AutoConfig

        try:
            # Check the architecture first: from_pretrained on another model type only warns and
            # would leave random weights.
            kind = AutoConfig.from_pretrained(spec.model, revision=spec.revision, trust_remote_code=spec.trust_remote_code).model_type
            if kind != "patchtst":
                raise FairbenchError(
                    f'model "{spec.name}": {spec.model!r} is a {kind} checkpoint; task {card.name} (input_modality: signal) '
                    "needs a PatchTST checkpoint or model: scratch."
                )
            net = PatchTSTModel.from_pretrained(spec.model, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise FairbenchError(f'model "{spec.name}": cannot load PatchTST weights from {spec.model!r} ({str(exc).splitlines()[0]}).') from None
        c = net.config
        if (c.num_input_channels, c.context_length) != (sig.channels, sig.length):
            raise FairbenchError(
                f'model "{spec.name}": the checkpoint takes {c.num_input_channels} channels x {c.context_length} samples; '
                f"task {card.name} declares {sig.channels} x {sig.length}."
            )
    return ImageClassifier(net, sig.channels * net.config.d_model, n_outputs, kind="patchtst"), inputs


class ClassifierBackend(Backend):
    name = "classifier"
    methods = frozenset({"predict"})
    accepts_images = True
    accepts_signals = True  # cards with input_modality: signal (a PatchTST backbone, see build_signal_classifier)
    trains = True

    def __init__(self, spec, card=None, seed: int = 0, quiet: bool = True):
        super().__init__(spec, card, seed, quiet)
        self.device = pick_device(spec.device)
        self.arch, self.train_cfg = _settings(spec, card)
        self.model, self.inputs = build_classifier(spec, card, len(card.labels))
        self.report: dict = {}

    @classmethod
    def fingerprint(cls, spec) -> str:
        return spec_digest(cls.name, spec)

    @classmethod
    def check(cls, spec) -> None:
        if spec.extra.get("head", "finetune") not in ("finetune", "linear_probe"):
            raise FairbenchError(f'model "{spec.name}": extra.head must be finetune or linear_probe.')

    def _view(self, ds):
        return TensorView(ds, **self.inputs)

    def fit(self, train, val, workdir: Path) -> dict:
        workdir = Path(workdir) / "model"
        workdir.mkdir(parents=True, exist_ok=True)
        ident = hashlib.sha256(
            json.dumps({"fp": self.fingerprint(self.spec), "seed": self.seed, "train": train.frame["id"].tolist(),
                        "val": val.frame["id"].tolist()}, sort_keys=True).encode()
        ).hexdigest()[:16]
        weights, meta_p = workdir / "model.safetensors", workdir / "meta.json"
        if weights.is_file() and meta_p.is_file() and json.loads(meta_p.read_text()).get("ident") == ident:
            from safetensors.torch import load_file

            self.model.load_state_dict(load_file(str(weights)))
            self.report = {**json.loads(meta_p.read_text())["report"], "reused": True}
            return self.report
        if self.train_cfg["head"] == "linear_probe":
            trainable = lambda name: name.startswith("head.")  # noqa: E731
        else:
            trainable = None
        cfg = TrainConfig(
            epochs=int(self.train_cfg["epochs"]), lr=float(self.train_cfg["lr"]), batch_size=int(self.train_cfg["batch_size"]),
            weight_decay=float(self.train_cfg["weight_decay"]), seed=self.seed, device=str(self.device),
            num_workers=int(self.train_cfg["num_workers"]),
            patience=None if self.train_cfg["patience"] is None else int(self.train_cfg["patience"]),
        )
        progress = None if self.quiet else (lambda e, tl, vl: print(f"epoch {e}: train loss {tl:.4f}, val loss {vl:.4f}"))
        rep = train_classifier(
            self.model, self._view(train), self._view(val), cfg,
            multiclass=self.card.label_type == "multiclass", trainable=trainable, progress=progress,
        )
        self.report = rep.as_dict()
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(weights))
        meta_p.write_text(json.dumps({"ident": ident, "report": self.report}, indent=2, sort_keys=True))
        return self.report

    @torch.no_grad()
    def probabilities(self, readers: list) -> np.ndarray:
        """(n, K) float64 P(output) for n inputs, each given as a zero-argument reader of its pixels."""
        self.model.to(self.device).eval()
        i, bs = self.inputs, int(self.train_cfg["batch_size"]) * 2
        out = []
        for start in range(0, len(readers), bs):
            x = torch.stack([to_input(read(), **i) for read in readers[start:start + bs]])
            logits = self.model(x.to(self.device)).float()
            probs = torch.softmax(logits, -1) if self.card.label_type == "multiclass" else torch.sigmoid(logits)
            out.append(probs.cpu().numpy().astype(np.float64))
        return np.concatenate(out) if out else np.zeros((0, len(self.card.labels)))

    def predict(self, requests: list[Request]) -> list[Result]:
        probs = self.probabilities([r.images[0].load for r in requests])
        return [Result(probs=p.tolist()) for p in probs]

    def describe(self) -> dict:
        return {"backend": self.name, "device": str(self.device), "training": self.report}
