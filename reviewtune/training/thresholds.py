"""Keyword decision thresholds of a multi-label keywords model: tuned for F1 on validation, saved as
``thresholds.json`` beside the model, read back by the harness."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reviewtune.atomic import atomic_write_json, read_json
from reviewtune.provenance import provenance

THRESHOLDS_FILE = "thresholds.json"


DEFAULT_THRESHOLD = 0.5


THRESHOLD_GRID = tuple(round(t, 2) for t in np.arange(0.05, 0.951, 0.05))


MIN_POSITIVES_TO_TUNE = 5  # fewer positive validation examples than this: keep the default threshold


def tune_thresholds(
    probs: np.ndarray,
    labels: np.ndarray,
    keywords: list[str],
    grid: tuple[float, ...] = THRESHOLD_GRID,
    min_positives: int = MIN_POSITIVES_TO_TUNE,
) -> dict[str, float]:
    """Per-keyword decision threshold maximising F1 on validation (``prob >= threshold`` is a hit).

    Ties go to the threshold closest to 0.5; a keyword with fewer than ``min_positives`` positive
    validation examples keeps 0.5 (too little evidence to move it).
    """
    from sklearn.metrics import f1_score

    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels).round().astype(int)
    if probs.shape != labels.shape or probs.shape[1] != len(keywords):
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} must both be [n, {len(keywords)}]")
    out = {}
    for j, keyword in enumerate(keywords):
        if labels[:, j].sum() < min_positives:
            out[keyword] = DEFAULT_THRESHOLD
            continue
        scores = [f1_score(labels[:, j], probs[:, j] >= t, zero_division=0) for t in grid]
        best = [t for t, s in zip(grid, scores, strict=True) if s == max(scores)]
        out[keyword] = float(min(best, key=lambda t: abs(t - DEFAULT_THRESHOLD)))
    return out


def save_thresholds(directory: str | Path, thresholds: dict[str, float], tuned: bool, **extra) -> Path:
    """``thresholds.json``: ``{"thresholds": {keyword: threshold}, "tuned": bool, "rule": ..., ...}``."""
    rule = "keyword detected when sigmoid(logit) >= threshold"
    return atomic_write_json(
        Path(directory) / THRESHOLDS_FILE,
        {"thresholds": thresholds, "tuned": tuned, "rule": rule, **extra, "provenance": provenance()},
    )


def load_thresholds(directory: str | Path, keywords: list[str]) -> np.ndarray:
    """Thresholds in ``keywords`` order from ``thresholds.json`` (0.5 for a missing file or keyword)."""
    path = Path(directory) / THRESHOLDS_FILE
    if not path.is_file():
        return np.full(len(keywords), DEFAULT_THRESHOLD)
    data = read_json(path)
    data = data.get("thresholds") if isinstance(data, dict) else None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected field 'thresholds' mapping keyword -> threshold")
    unknown = set(data) - set(keywords)
    if unknown:
        raise ValueError(f"{path}: thresholds for unknown keywords {sorted(unknown)}")
    return np.asarray([float(data.get(k, DEFAULT_THRESHOLD)) for k in keywords])
