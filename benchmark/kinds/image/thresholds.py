"""Decision thresholds chosen on the validation split and frozen for test (never tuned on test)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve


def tune_threshold(y: np.ndarray, p: np.ndarray, rule: str = "max_f1") -> tuple[float, str]:
    """Threshold on P(positive) maximising F1 (or Youden's J) on validation. Returns (threshold,
    note); falls back to 0.5 with a note when validation has one class only."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    keep = ~np.isnan(y) & ~np.isnan(p)
    y, p = y[keep].astype(int), p[keep]
    if len(np.unique(y)) < 2:
        return 0.5, "validation has a single class: threshold 0.5"
    if rule == "youden":
        fpr, tpr, thr = roc_curve(y, p)
        j = tpr - fpr
        best = int(np.argmax(j))
        return float(min(thr[best], 1.0)), ""
    prec, rec, thr = precision_recall_curve(y, p)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)[:-1]
    best = int(np.argmax(f1))
    return float(thr[best]), ""
