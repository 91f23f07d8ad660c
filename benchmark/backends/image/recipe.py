"""The training recipe of an imaging mitigation, and the ``mitigated-classifier`` backend that applies it.

An imaging mitigation does not hand over frozen weights: the derived model ``<base>+<method>`` is
the base classifier **plus a recipe** (``extra.recipe`` in its models entry), and the ordinary
imaging run path (``fairbench run --seeds N``) trains it on the task's train split once per seed,
selects on validation and predicts validation + test. So a mitigation is compared with ERM on
the same seeds, splits and audit code, and never computes its own metrics.

Recipe parts (any combination; an empty recipe is plain ERM):
- ``sample_weight: group_label`` -- inverse (group x label) frequency weights (reweighting);
- ``adversary`` -- a gradient-reversal head predicting the group from the features;
- ``balanced`` -- balanced intersectional sampling with augmented duplicates (FairMed-VLM);
- ``fairmed`` -- concept alignment (InfoNCE against concept text embeddings), the demographic
  prompt prepended to the model's input during training, the cross-group fairness regulariser
  from epoch ``stage1_epochs + 1`` on, and model selection among those Stage-2 epochs;
- ``lora`` -- LoRA adapters on the ViT's query / key / value;
- ``mask`` + ``lr`` -- FairTune's per-block trainable mask and learning rate;
- ``init`` -- start from pre-trained backbone weights (safetensors, checked by SHA-256), e.g. the
  backbone FairTune pre-trains on a disjoint pretext task;
- ``postprocess`` -- fairlearn ``ThresholdOptimizer`` fitted on validation predictions.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from sklearn.base import BaseEstimator
from torch import nn

from ...errors import FairbenchError
from ...requests import Request, Result
from .balanced import BalancedView, balanced_indices, strata_of
from .classifier import ClassifierBackend
from .losses import concept_infonce, fairness_loss
from .train import HookBatch, TrainConfig, train_classifier


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Adversary(_Strict):
    attribute: str = "sex"
    weight: float = Field(1.0, ge=0)  # of the adversary's loss in the total
    alpha: float = Field(1.0, ge=0)  # gradient-reversal strength
    hidden: int = Field(64, gt=0)


class FairMed(_Strict):
    concept: bool = True  # Stage 1 concept alignment (InfoNCE)
    # Paper 001 Sec. 3.3: "Patient: Female, Age group: 60-79." prepended to the model's input, in
    # training only. A ViT has no text input: the prefix's sentence embedding, through a learned
    # linear map, becomes one extra input token after [CLS] (see _demographic_prompt).
    demographic_prompts: bool = True
    gamma: float = Field(1.0, ge=0)  # weight of L_concept in L_task
    tau_concept: float = Field(0.07, gt=0)
    fairness: bool = True  # Stage 2 regulariser
    lam: float = Field(0.1, ge=0)
    eta1: float = Field(1.0, ge=0)  # supcon (0 = the "w/o contrastive" ablation)
    eta2: float = Field(1.0, ge=0)  # moment alignment
    tau: float = Field(0.07, gt=0)
    margin: float = 0.3
    lambda_sigma: float = Field(1.0, ge=0)
    stage1_epochs: int = Field(1, ge=0)  # epochs before the fairness regulariser switches on
    # Model selection: lowest validation loss among Stage-2 epochs (> stage1_epochs) only, so the
    # kept checkpoint always had the fairness stage (recorded as report["selection"]).
    selection: Literal["stage2-val-loss"] = "stage2-val-loss"
    attributes: list[str] = Field(default_factory=lambda: ["sex", "age_group"])


class Lora(_Strict):
    r: int = Field(32, gt=0)
    alpha: int = Field(64, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    # ViT query / key / value: ``attention.attention.query`` in transformers 4, ``attention.q_proj`` in 5.
    target_modules: str | list[str] = r".*attention\.(query|key|value|q_proj|k_proj|v_proj)$"


class Mask(_Strict):
    """FairTune: one bit per ViT block for attention, MLP and norm; the head is always trained."""

    attention: list[bool]
    mlp: list[bool]
    norm: list[bool]
    other: bool = True  # patch/position embeddings and the final layernorm


class Init(_Strict):
    """Pre-trained backbone weights to start from: a safetensors file and its SHA-256."""

    backbone: str
    sha256: str


def load_init(model, init: Init) -> None:
    """Load ``init`` into ``model.backbone`` (strict: every tensor must match). Raises FairbenchError
    when the file is missing or its SHA-256 differs (the recipe was registered with other weights)."""
    from safetensors.torch import load_file

    path = Path(init.backbone)
    if not path.is_file():
        raise FairbenchError(f"recipe init.backbone: {path} not found; re-run `fairbench mitigate` to rebuild the pre-trained backbone.")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != init.sha256:
        raise FairbenchError(f"recipe init.backbone: {path} has SHA-256 {digest[:12]}, the recipe expects {init.sha256[:12]}; "
                             "re-run `fairbench mitigate` to register the current weights.")
    model.backbone.load_state_dict(load_file(str(path)), strict=True)


class Postprocess(_Strict):
    constraint: Literal["demographic_parity", "equalized_odds"] = "demographic_parity"
    attribute: str = "sex"
    objective: Literal["accuracy_score", "balanced_accuracy_score"] = "balanced_accuracy_score"


class Recipe(_Strict):
    method: str = "erm"
    sample_weight: Literal["group_label"] | None = None
    weight_attribute: str = "sex"
    adversary: Adversary | None = None
    balanced: bool = False
    balance_max_ratio: float = Field(1.5, ge=1)
    balance_max_duplication: float = Field(1.3, ge=1)  # a stratum grows to at most this x its size
    fairmed: FairMed | None = None
    lora: Lora | None = None
    mask: Mask | None = None
    init: Init | None = None
    lr: float | None = Field(None, gt=0)
    epochs: int | None = Field(None, gt=0)
    postprocess: Postprocess | None = None


def read_recipe(spec) -> Recipe:
    raw = spec.extra.get("recipe")
    if not isinstance(raw, dict):
        raise FairbenchError(f'model "{spec.name}": backend mitigated-classifier needs extra.recipe (a mapping); '
                             "register it with `fairbench mitigate`.")
    try:
        return Recipe(**raw)
    except Exception as exc:  # pydantic ValidationError: one line naming the field
        first = str(exc).splitlines()
        raise FairbenchError(f'model "{spec.name}": invalid extra.recipe ({" ".join(first[1:3]).strip()}).') from None


def codes(values, missing=None) -> tuple[np.ndarray, list]:
    """Integer codes of a column (sorted category order); unknown values -> -1."""
    vals = [None if (v is None or v != v) else str(v) for v in values]
    cats = sorted({v for v in vals if v is not None})
    index = {c: i for i, c in enumerate(cats)}
    return np.array([index.get(v, -1) if v is not None else -1 for v in vals], dtype=np.int64), cats


def group_label_weights(groups: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Inverse (group x label) frequency, normalised to mean 1 over the rows; rows with an unknown
    group or label get weight 1 (Kamiran & Calders-style reweighting without the product form)."""
    w = np.ones(len(groups))
    ok = (groups >= 0) & ~np.isnan(labels)
    keys = [f"{g}|{int(y)}" for g, y in zip(groups[ok], labels[ok])]
    uniq, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
    raw = ok.sum() / (len(uniq) * counts[inv])
    w[ok] = raw
    return w * len(w) / w.sum()


class GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha):
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.alpha * grad, None


def mask_predicate(mask: Mask) -> callable:
    """Parameter name -> trainable, for an ``ImageClassifier`` with a transformers ViT backbone."""
    n = len(mask.attention)
    # transformers 4: backbone.encoder.layer.N.{attention,intermediate,output,layernorm_*};
    # transformers 5: backbone.layers.N.{attention,mlp,layernorm_*}.
    pat = re.compile(r"backbone\.(?:encoder\.layer|layers)\.(\d+)\.(.+)")

    def trainable(name: str) -> bool:
        if name.startswith("head."):
            return True
        m = pat.match(name)
        if not m:
            return mask.other
        i, rest = int(m.group(1)), m.group(2)
        if i >= n:
            raise FairbenchError(f"FairTune mask covers {n} blocks but the model has block {i}.")
        if rest.startswith("attention."):
            return mask.attention[i]
        if rest.startswith(("intermediate.", "output.", "mlp.")):
            return mask.mlp[i]
        if rest.startswith("layernorm"):
            return mask.norm[i]
        return mask.other

    return trainable


def concept_texts(card) -> list[str]:
    """Concept vocabulary of the primary endpoint: [negative, positive] for binary / multilabel
    tasks (the card's first CLIP prompts when present), the class names for multiclass tasks."""
    if card.label_type == "multiclass":
        return [card.display(c) for c in card.labels]
    label = card.primary()
    p = card.prompts.get(label)
    pos = p.positive[0] if p else f"a medical image showing {card.display(label)}"
    neg = p.negative[0] if p and p.negative else f"a medical image without {card.display(label)}"
    return [neg, pos]


def demographic_prefix(stratum: str) -> str:
    """``sex=female|age_group=60-79`` -> ``Patient: Female, Age group: 60-79.`` (the paper's prefix)."""
    if stratum == "unknown":
        return ""
    parts = dict(kv.split("=", 1) for kv in stratum.split("|"))
    return f"Patient: {parts.get('sex', 'unknown').capitalize()}, Age group: {parts.get('age_group', 'unknown')}. "


def embed_texts(texts: list[str], device: str = "cpu") -> torch.Tensor:
    """Concept text embeddings from the offline MiniLM sentence embedder (the classifier has no
    text tower; a VLM uses its own language model instead, see fairmed_llava.py)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from ..embedder import model_dir

    model = SentenceTransformer(str(model_dir()), device=device, local_files_only=True)
    return torch.as_tensor(model.encode(texts, normalize_embeddings=True, convert_to_numpy=True), dtype=torch.float32)


class MitigatedClassifierBackend(ClassifierBackend):
    """The ``classifier`` backend trained with a mitigation recipe (see the module docstring)."""

    name = "mitigated-classifier"

    def __init__(self, spec, card=None, seed: int = 0, quiet: bool = True):
        self.recipe = read_recipe(spec)
        plain = spec.model_copy(update={"extra": {k: v for k, v in spec.extra.items() if k != "recipe"}})
        super().__init__(plain, card, seed, quiet)
        self.post = None
        self.post_info: dict = {}

    @classmethod
    def check(cls, spec) -> None:
        read_recipe(spec)
        super().check(spec)

    # ----- training -----
    def _labels(self, ds) -> np.ndarray:
        t = ds.targets()
        if self.card.label_type == "multiclass":
            return t.astype(float)
        return t[:, list(self.card.labels).index(self.card.primary())].astype(float)

    def fit(self, train, val, workdir: Path) -> dict:
        rec = self.recipe
        tc = self.train_cfg
        cfg = TrainConfig(
            epochs=int(rec.epochs or tc["epochs"]), lr=float(rec.lr or tc["lr"]), batch_size=int(tc["batch_size"]),
            weight_decay=float(tc["weight_decay"]), seed=self.seed, device=str(self.device), num_workers=int(tc["num_workers"]),
            patience=None if tc["patience"] is None else int(tc["patience"]),
        )
        if rec.init is not None:
            load_init(self.model, rec.init)
        frame = train.frame
        train_view = self._view(train)
        order = np.arange(len(train))
        info: dict = {"recipe": rec.model_dump(mode="json", exclude_none=True)}
        if rec.balanced:
            order, dup, binfo = balanced_indices(strata_of(frame), self.seed, rec.balance_max_ratio, rec.balance_max_duplication)
            train_view = BalancedView(train_view, order, dup, self.seed)
            info["balanced"] = binfo
        y = torch.as_tensor(self._labels(train)[order], dtype=torch.float32)
        sample_weight = None
        if rec.sample_weight == "group_label":
            g, _ = codes(frame[rec.weight_attribute] if rec.weight_attribute in frame else [None] * len(frame))
            sample_weight = group_label_weights(g, self._labels(train))[order]
        hooks, extra = [], []
        feat_dim = self.model.head.in_features
        if rec.adversary is not None:
            adv = rec.adversary
            g, cats = codes(frame[adv.attribute])
            g_t = torch.as_tensor(g[order])
            head = nn.Sequential(nn.Linear(feat_dim, adv.hidden), nn.ReLU(), nn.Linear(adv.hidden, max(len(cats), 2))).to(self.device)
            extra += list(head.parameters())

            def adversary_loss(b: HookBatch) -> torch.Tensor:
                gb = g_t[b.index].to(b.features.device)
                ok = gb >= 0
                if not bool(ok.any()):
                    return b.features.sum() * 0.0
                logits = head(GradReverse.apply(b.features[ok], adv.alpha))
                return adv.weight * nn.functional.cross_entropy(logits, gb[ok])

            hooks.append(adversary_loss)
        before_forward = prompt_handle = None
        if rec.fairmed is not None:
            fm = rec.fairmed
            if cfg.epochs <= fm.stage1_epochs:
                raise FairbenchError(f"fairmed recipe: epochs ({cfg.epochs}) must exceed fairmed.stage1_epochs ({fm.stage1_epochs}) "
                                     "so that Stage 2 runs and a Stage-2 checkpoint can be selected.")
            cfg.select_from = fm.stage1_epochs + 1
            hook, params, terms = self._fairmed_hook(fm, frame, order, y, cfg, len(train_view))
            hooks.append(hook)
            extra += params
            if fm.demographic_prompts:
                before_forward, prompt_handle, params = self._demographic_prompt(frame, order)
                extra += params
        peft_config = None
        if rec.lora is not None:
            from peft import LoraConfig

            peft_config = LoraConfig(r=rec.lora.r, lora_alpha=rec.lora.alpha, lora_dropout=rec.lora.dropout,
                                     target_modules=rec.lora.target_modules)
        trainable = mask_predicate(rec.mask) if rec.mask is not None else None
        if trainable is None and tc["head"] == "linear_probe":
            trainable = lambda name: name.startswith("head.")  # noqa: E731

        def loss_hook(b: HookBatch) -> torch.Tensor:
            return sum((h(b) for h in hooks), b.logits.sum() * 0.0)

        progress = None if self.quiet else (lambda e, tl, vl: print(f"epoch {e}: train loss {tl:.4f}, val loss {vl:.4f}"))
        report = train_classifier(
            self.model, train_view, self._view(val), cfg, multiclass=self.card.label_type == "multiclass",
            sample_weight=sample_weight, loss_hook=loss_hook if hooks else None, extra_parameters=extra or None,
            peft_config=peft_config, trainable=trainable, before_forward=before_forward, progress=progress,
        )
        if prompt_handle is not None:
            prompt_handle.remove()
        self.report = {**report.as_dict(), **info}
        if rec.fairmed is not None:
            # Per-epoch means of the FairMed terms (Stage 1 has no supcon / dist) and the kept checkpoint.
            self.report["fairmed_terms"] = {k: [None if x is None else round(x, 6) for x in v] for k, v in terms.items()}
            self.report["selection"] = {"criterion": rec.fairmed.selection, "eligible_epochs": [cfg.select_from, report.epochs_run],
                                        "epoch": report.best_epoch, "stage": 2 if report.best_epoch >= cfg.select_from else 1}
        if rec.postprocess is not None:
            self._fit_postprocess(rec.postprocess, val)
            self.report["postprocess"] = self.post_info
        self._save(Path(workdir) / "model")
        return self.report

    def _fairmed_hook(self, fm: FairMed, frame, order, y, cfg: TrainConfig, n_rows: int):
        """The FairMed loss hook (concept InfoNCE; from Stage 2 on, lambda x fairness regulariser), its
        extra parameters and the per-epoch means of its terms (filled while training)."""
        strata = strata_of(frame)[order]
        s_codes, _ = codes(strata)
        s_codes[strata == "unknown"] = -1
        attr = np.stack([codes(frame[a])[0][order] for a in fm.attributes], 1) if fm.attributes else np.zeros((len(order), 0), int)
        s_t, a_t = torch.as_tensor(s_codes), torch.as_tensor(attr)
        params: list[nn.Parameter] = []
        proj = concepts = None
        if fm.concept and fm.gamma > 0:
            # Plain concept texts: the demographic prompt belongs to the input, not to the targets.
            concepts = embed_texts(concept_texts(self.card)).to(self.device)
            proj = nn.Linear(self.model.head.in_features, concepts.shape[-1]).to(self.device)
            params += list(proj.parameters())
        steps_per_epoch = math.ceil(n_rows / cfg.batch_size)
        calls = {"n": 0}
        sums: dict[str, list[float]] = {}
        terms: dict[str, list[float]] = {}

        def record(epoch: int, name: str, value: float) -> None:
            acc = sums.setdefault(name, [])
            acc.extend([None] * (epoch + 1 - len(acc)))  # None: the term was off in that epoch (Stage 1)
            acc[epoch] = (acc[epoch] or 0.0) + value
            terms[name] = [None if v is None else v / steps_per_epoch for v in acc]

        def hook(b: HookBatch) -> torch.Tensor:
            epoch = calls["n"] // steps_per_epoch
            calls["n"] += 1
            yb = y[b.index].to(b.features.device)
            ok = ~torch.isnan(yb)
            loss = b.features.sum() * 0.0
            if not bool(ok.any()):
                return loss
            f, yk = b.features[ok], yb[ok].long()
            if proj is not None:
                lc = concept_infonce(proj(f), concepts, yk, fm.tau_concept)
                loss = loss + fm.gamma * lc
                record(epoch, "concept", float(lc.detach()))
            if fm.fairness and fm.lam > 0 and epoch >= fm.stage1_epochs:
                fair, parts = fairness_loss(
                    f, yk, s_t[b.index].to(f.device)[ok], a_t[b.index].to(f.device)[ok],
                    eta1=fm.eta1, eta2=fm.eta2, tau=fm.tau, margin=fm.margin, lambda_sigma=fm.lambda_sigma,
                )
                loss = loss + fm.lam * fair
                for k, v in parts.items():
                    record(epoch, k, v)
            return loss

        return hook, params, terms

    def _demographic_prompt(self, frame, order):
        """Paper 001's demographic prompt, prepended to the model's input during training only.

        The prefix text ("Patient: Female, Age group: 60-79.", or "Patient: demographics not
        recorded." for an unknown stratum) is embedded by the offline sentence embedder; a learned
        linear map turns it into one token inserted after [CLS] by a forward hook on the ViT's
        embeddings. The hook acts only in training mode and only on a batch announced by
        ``before_forward``, so validation and inference see the plain image sequence (the paper:
        "used only during training and omitted at inference"). Returns (before_forward, hook
        handle, parameters)."""
        if self.model.kind != "vit":
            raise FairbenchError("fairmed.demographic_prompts needs the vit backbone (it prepends an input token); "
                                 "set fairmed.demographic_prompts: false for a timm backbone.")
        strata = strata_of(frame)[order]
        names = sorted(set(strata) - {"unknown"})
        index = {s: i for i, s in enumerate(names)}
        row_code = torch.as_tensor([index.get(s, len(names)) for s in strata])
        texts = [demographic_prefix(s).strip() for s in names] + ["Patient: demographics not recorded."]
        emb = embed_texts(texts).to(self.device)
        proj = nn.Linear(emb.shape[-1], self.model.backbone.config.hidden_size).to(self.device)
        state: dict = {"index": None}

        def before_forward(index: torch.Tensor) -> None:
            state["index"] = index

        def insert(module, inputs, output):
            index, state["index"] = state["index"], None
            if index is None or not module.training:
                return output
            token = proj(emb[row_code[index].to(emb.device)]).to(output.dtype)[:, None]
            return torch.cat([output[:, :1], token, output[:, 1:]], dim=1)

        handle = self.model.backbone.embeddings.register_forward_hook(insert)
        return before_forward, handle, list(proj.parameters())

    # ----- post-processing (fitted on validation, applied unchanged to test) -----
    def _scores(self, probs: np.ndarray) -> np.ndarray:
        """P(primary endpoint) from (n, K) output probabilities."""
        if self.card.label_type == "multiclass":
            pos = [c in self.card.positive_classes for c in self.card.labels]
            return probs[:, pos].sum(1)
        return probs[:, list(self.card.labels).index(self.card.primary())]

    def _fit_postprocess(self, pp: Postprocess, val) -> None:
        from fairlearn.postprocessing import ThresholdOptimizer

        y = self._labels(val)
        s = val.frame[pp.attribute].astype(object).where(val.frame[pp.attribute].notna(), "unknown").astype(str).to_numpy()
        ok = ~np.isnan(y)
        scores = self._scores(self.probabilities([lambda i=i: val.read(i) for i in range(len(val))]))
        self.post = ThresholdOptimizer(estimator=_Score().fit(), constraints=pp.constraint, objective=pp.objective,
                                       prefit=True, predict_method="predict")
        self.post.fit(scores[ok, None], y[ok].astype(int), sensitive_features=s[ok])
        self.post_groups = sorted(set(s[ok]))
        self.post_info = {"constraint": pp.constraint, "attribute": pp.attribute, "objective": pp.objective,
                          "fitted_on": "validation", "n_val": int(ok.sum()), "groups": self.post_groups}

    def predict(self, requests: list[Request]) -> list[Result]:
        probs = self.probabilities([r.images[0].load for r in requests])
        rows = [Result(probs=p.tolist()) for p in probs]
        if self.post is None:
            return rows
        pp = self.recipe.postprocess
        s = np.array([str(v) if (v := r.attributes.get(pp.attribute)) is not None else "unknown" for r in requests], dtype=object)
        scores = self._scores(probs)
        known = np.isin(s, self.post_groups)
        p_pos = np.full(len(rows), np.nan)
        if known.any():
            p_pos[known] = self.post._pmf_predict(scores[known, None], sensitive_features=s[known])[:, 1]
        k = list(self.card.labels).index(self.card.primary()) if self.card.label_type != "multiclass" else 0
        for i, (r, req) in enumerate(zip(rows, requests)):
            if not known[i]:
                r.extra["decision_note"] = f"group {s[i]!r} not seen on validation: no post-processed decision"
                continue
            # The optimizer's decision is randomised between two thresholds; draw it per image from
            # a generator keyed by (seed, image id), so the result does not depend on batching.
            h = int.from_bytes(hashlib.sha256(f"{self.seed}|{req.case_id}".encode()).digest()[:8], "little")
            d = float(np.random.default_rng(h).random() < p_pos[i])
            r.decisions = [None] * (1 if self.card.label_type == "multiclass" else len(self.card.labels))
            r.decisions[k] = d
        return rows

    def _save(self, out: Path) -> None:
        from safetensors.torch import save_file

        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}, str(out / "model.safetensors"))
        (out / "training.json").write_text(json.dumps(self.report, indent=2, sort_keys=True, default=str))


class _Score(BaseEstimator):
    """A fitted sklearn-style estimator whose prediction is its single input column (the model's
    P(positive)), so ThresholdOptimizer(prefit=True) thresholds the stored scores directly."""

    def fit(self, *args, **kwargs):
        self.fitted_ = True
        return self

    def predict(self, X):
        return np.asarray(X, dtype=float)[:, 0]

