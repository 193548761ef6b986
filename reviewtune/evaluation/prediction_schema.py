"""One prediction per record, the same for every system (generative, classifier, baseline)::

    {"id", "label": int|None, "probs": list[float]|None, "aspects": list|None, "score": float|None,
     "invalid": bool, "invalid_reason": str|None, "shortened": bool, "raw": str|None}

``label`` indexes the task's label names, ``probs`` follows the same order, ``aspects`` is a list of
``{"keyword", "polarity"}``, ``score`` is the regression value, ``shortened`` says the review was cut to the
model's input limit, ``raw`` is the generated text (generative runs).
An answer that cannot be read is ``invalid`` with its reason, never an exception.
"""

from __future__ import annotations

from typing import Any

PREDICTION_KEYS = ("id", "label", "probs", "aspects", "score", "invalid", "invalid_reason", "shortened")


def new_prediction(record_id: Any, **values: Any) -> dict:
    """A prediction for ``record_id`` with every key present: ``values`` set, the rest empty (and valid)."""
    unknown = set(values) - {*PREDICTION_KEYS, "raw"}
    if unknown:
        raise ValueError(f"not prediction fields: {sorted(unknown)}")
    return {"id": str(record_id), "label": None, "probs": None, "aspects": None, "score": None, "invalid": False,
            "invalid_reason": None, "shortened": False, "raw": None, **values}  # fmt: skip
