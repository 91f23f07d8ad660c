"""``clip``: zero-shot scoring with the task card's class prompts.

transformers ``CLIPModel`` (local directory or hub id) by default; ``extra.library: open_clip``
loads through open_clip (optional ``timm`` extra; it needs a torchvision matching torch).
Binary / multilabel labels: P(positive) = softmax over the mean positive and mean negative
prompt embeddings; multiclass: softmax over the classes' prompt embeddings.
"""

from __future__ import annotations

import numpy as np
import torch

from ...device import pick_device
from ...errors import FairbenchError
from ...requests import Request, Result
from ..base import Backend, spec_digest


class CLIPBackend(Backend):
    name = "clip"
    methods = frozenset({"predict"})
    accepts_images = True

    @classmethod
    def fingerprint(cls, spec) -> str:
        return spec_digest(cls.name, spec)

    def __init__(self, spec, card=None, seed: int = 0, quiet: bool = True):
        super().__init__(spec, card, seed, quiet)
        self.device = pick_device(spec.device)
        missing = [l for l in card.labels if l not in card.prompts]
        if missing:
            raise FairbenchError(f"task {card.name}: the clip backend needs prompts for {missing} in the card's prompts section.")
        if card.label_type != "multiclass":
            bad = [l for l in card.labels if not card.prompts[l].negative]
            if bad:
                raise FairbenchError(f"task {card.name}: prompts.{bad[0]}.negative is empty; binary labels need negative prompts.")
        self.library = spec.extra.get("library", "transformers")
        if self.library == "open_clip":
            try:
                import open_clip
            except Exception as exc:
                raise FairbenchError(
                    f'model "{spec.name}": open_clip is not usable here ({str(exc).splitlines()[0]}). '
                    "pip install 'fairbench-med[timm]' with a torchvision matching torch, or use a transformers CLIP checkpoint."
                ) from None
            self.model, self.preprocess = open_clip.create_model_from_pretrained(spec.model)
            self.tokenizer = open_clip.get_tokenizer(spec.model)
        else:
            from transformers import CLIPModel, CLIPProcessor

            try:
                self.model = CLIPModel.from_pretrained(spec.model, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
                self.processor = CLIPProcessor.from_pretrained(spec.model, revision=spec.revision)
            except OSError as exc:
                raise FairbenchError(f'model "{spec.name}": cannot load CLIP from {spec.model!r} ({str(exc).splitlines()[0]}).') from None
        self.model.to(self.device).eval()
        self._text = None

    @torch.no_grad()
    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        if self.library == "open_clip":
            emb = self.model.encode_text(self.tokenizer(prompts).to(self.device))
        else:
            tok = self.processor.tokenizer(prompts, padding=True, return_tensors="pt").to(self.device)
            emb = self.model.get_text_features(**tok)
            emb = emb if isinstance(emb, torch.Tensor) else emb.pooler_output
        emb = emb / emb.norm(dim=-1, keepdim=True)
        mean = emb.mean(0)
        return mean / mean.norm()

    def _class_embeddings(self) -> torch.Tensor:
        """(n_labels, 2, D) for binary/multilabel (negative, positive) or (n_classes, D)."""
        if self._text is None:
            p = self.card.prompts
            if self.card.label_type == "multiclass":
                self._text = torch.stack([self._encode_text(p[c].positive) for c in self.card.labels])
            else:
                self._text = torch.stack([torch.stack([self._encode_text(p[l].negative), self._encode_text(p[l].positive)]) for l in self.card.labels])
        return self._text

    @torch.no_grad()
    def predict(self, requests: list[Request]) -> list[Result]:
        text = self._class_embeddings()
        scale = self.model.logit_scale.exp()
        out = []
        for start in range(0, len(requests), 32):
            images = [r.images[0].pil() for r in requests[start:start + 32]]
            if self.library == "open_clip":
                pix = torch.stack([self.preprocess(im) for im in images]).to(self.device)
                img = self.model.encode_image(pix)
            else:
                pix = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
                img = self.model.get_image_features(pixel_values=pix)
                img = img if isinstance(img, torch.Tensor) else img.pooler_output
            img = img / img.norm(dim=-1, keepdim=True)
            if self.card.label_type == "multiclass":
                probs = torch.softmax(scale * img @ text.T, -1)
            else:
                logits = scale * torch.einsum("nd,lkd->nlk", img, text)
                probs = torch.softmax(logits, -1)[..., 1]
            out.extend(Result(probs=p.tolist()) for p in probs.float().cpu().numpy().astype(np.float64))
            self.report_progress(len(images))
        return out

    def describe(self) -> dict:
        return {"backend": self.name, "device": str(self.device)}
