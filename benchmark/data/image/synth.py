"""synth-xray: procedurally generated 64x64 "chest films" with a true lesion signal and a
demographic shortcut, so the imaging pipeline and the mitigation plugins are measurable on a CPU.

What it is:
- Each image is a body outline with two darker lung fields and smooth anatomical noise.
- The label ("lesion") is a real signal: a small bright blob inside a lung, present exactly when
  y = 1. Its contrast may differ by sex (``lesion_contrast``), which makes one group genuinely harder.
- Demographics: sex (``p_female``) and age (uniform between ``age_range``). Base rates of the
  lesion differ by sex (``base_rates``).
- The demographic shortcut: ``shortcut_strength`` sets the amplitude of a sex-specific soft-tissue
  band over the lower lung fields (0 = invisible). A model can read sex from it and use the base
  rates as a prior instead of looking for the lesion: the shortcut that fairness audits and
  mitigations are meant to expose and remove.
- Everything is generated from the card's ``split_seed`` (not the run seed), so runs with
  different seeds are paired on the same images; splits are per synthetic patient (one image each).

What it is not: a model of real radiographs. Metric values on it say nothing about clinical
performance; it is a controlled test bench whose ground truth (who is harder, how strong the
shortcut is) is known.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter

from ...errors import FairbenchError
from ..cases import LoadReport
from .dataset import finish
from .splits import patient_split

DEFAULTS = {
    "n": 2400,
    "size": 64,
    "p_female": 0.5,
    "age_range": [20, 90],
    "base_rates": {"female": 0.25, "male": 0.45},
    "lesion_contrast": {"female": 0.7, "male": 1.0},
    "shortcut_strength": 0.3,
    "noise": 0.06,
}


def _opt(card, key):
    value = card.loader_options.get(key, DEFAULTS[key])
    if isinstance(DEFAULTS[key], dict):
        if not isinstance(value, dict) or set(value) != {"female", "male"}:
            raise FairbenchError(f"task {card.name}: loader_options.{key} must map female and male to numbers.")
        return {k: float(v) for k, v in value.items()}
    return value


def generate(card) -> tuple[pd.DataFrame, np.ndarray]:
    """The card's images (n, size, size) float32 in [0, 1] and their frame (one row per image)."""
    frame, images, _ = _simulate(card)
    return frame, images


def _simulate(card) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """:func:`generate` plus the lesion's horizontal position in [0, 1] (< 0.5: the image's left lung)."""
    n, size = int(_opt(card, "n")), int(_opt(card, "size"))
    if n < 30 or size < 16:
        raise FairbenchError(f"task {card.name}: loader_options.n must be >= 30 and size >= 16.")
    rng = np.random.default_rng(card.split_seed)
    female = rng.random(n) < float(_opt(card, "p_female"))
    lo, hi = _opt(card, "age_range")
    age = rng.integers(int(lo), int(hi) + 1, size=n)
    rates, contrast = _opt(card, "base_rates"), _opt(card, "lesion_contrast")
    y = rng.random(n) < np.where(female, rates["female"], rates["male"])

    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)  # coordinates in [0, 1]
    body = ((xx - 0.5) / 0.46) ** 2 + ((yy - 0.55) / 0.5) ** 2 < 1
    lungs = np.zeros((size, size), bool)
    for cx in (0.32, 0.68):
        lungs |= ((xx - cx) / 0.14) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
    base = 0.15 + 0.45 * body - 0.25 * lungs
    noise = gaussian_filter(rng.normal(0, 1, (n, size, size)), sigma=(0, 2, 2)) * float(_opt(card, "noise")) * 4
    img = base[None] + noise
    img -= (age[:, None, None] - 50) / 800.0  # mild age-related contrast change, not a label signal

    # The shortcut: a soft band over the lower lungs whose presence tracks sex only.
    band = np.exp(-(((yy - 0.72) / 0.07) ** 2)) * lungs
    img += float(_opt(card, "shortcut_strength")) * 0.25 * female[:, None, None] * band[None]

    # The true signal: a blob at a random lung position in every positive image.
    ly, lx = np.nonzero(lungs)
    pick = rng.integers(0, len(ly), size=n)
    cy, cx = ly[pick] / (size - 1), lx[pick] / (size - 1)
    radius = rng.uniform(0.035, 0.06, size=n)
    blob = np.exp(-(((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) / (2 * radius[:, None, None] ** 2)))
    amp = 0.3 * np.where(female, contrast["female"], contrast["male"]) * y
    img += amp[:, None, None] * blob
    images = np.clip(img, 0, 1).astype(np.float32)

    frame = pd.DataFrame(
        {
            "id": [f"synth{i:05d}" for i in range(n)],
            "patient_id": [f"p{i:05d}" for i in range(n)],
            "sex": np.where(female, "female", "male"),
            "age": age.astype(float),
            "race": None,
            card.labels[0]: y.astype(float),
            "source": [f"synth:{i}" for i in range(n)],
        }
    )
    frame["split"] = patient_split(frame["patient_id"], card.split_fractions, card.split_seed).to_numpy()
    return frame, images, cx


PRETEXT_LABELS = ("lesion", "lesion_left")


def pretext(card, split_seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A disjoint pretext task for pre-training a backbone (FairTune needs a pre-trained model).

    Images of the card's generator from another ``split_seed`` (so none is a task image), with the
    demographic signal removed: no sex band (``shortcut_strength`` 0), equal base rates (0.5) and
    equal lesion contrast by sex. Two planted targets, (n, 2) float32: lesion present, and lesion in
    the image's left lung (NaN = masked where there is no lesion), i.e. detect *and* lateralise.
    Raises FairbenchError if ``split_seed`` equals the card's (the images would be the task's own)."""
    if int(split_seed) == int(card.split_seed):
        raise FairbenchError(f"task {card.name}: the pretext split_seed must differ from the card's ({card.split_seed}), "
                             "or the pre-training images would be the task's own.")
    options = {**card.loader_options, "n": int(n), "shortcut_strength": 0.0,
               "base_rates": {"female": 0.5, "male": 0.5}, "lesion_contrast": {"female": 1.0, "male": 1.0}}
    other = card.model_copy(update={"split_seed": int(split_seed), "loader_options": options})
    frame, images, cx = _simulate(other)
    y = frame[card.labels[0]].to_numpy(dtype=np.float32)
    left = np.where(y == 1, (cx < 0.5).astype(np.float32), np.nan).astype(np.float32)
    return images, np.stack([y, left], 1)


def load_synth_xray(card, root, report: LoadReport):
    """Registered loader ``synth_xray``; needs no files (``root`` is ignored)."""
    if card.label_type != "binary":
        raise FairbenchError(f"task {card.name}: synth-xray is a binary task; set label_type: binary.")
    frame, images = generate(card)
    report.quirks.append("synthetic data: metric values describe the test bench, not clinical performance")

    def read(row) -> np.ndarray:
        return images[int(str(row["source"]).split(":", 1)[1])]

    return finish(frame, card, read, report, [])
