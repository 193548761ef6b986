"""The canonical review record: one JSON object per line.

``{"id": str, "text": str, "sentiment": int|null, "aspects": [{"keyword": str, "polarity": int}]|null,
"score": float|null, "meta": {}}``
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reviewtune.atomic import atomic_write_jsonl, read_jsonl
from reviewtune.tasks import TaskSpec

logger = logging.getLogger(__name__)

RECORD_KEYS = ("id", "text", "sentiment", "aspects", "score", "meta")


def make_record(
    id: str,
    text: str,
    sentiment: int | None = None,
    aspects: list[dict] | None = None,
    score: float | None = None,
    meta: dict | None = None,
) -> dict[str, Any]:
    return {
        "id": str(id),
        "text": text,
        "sentiment": sentiment,
        "aspects": aspects,
        "score": score,
        "meta": dict(meta or {}),
    }


def drop_reason(record: dict, task: TaskSpec) -> str | None:
    """Why ``record`` cannot be used for ``task`` (a short reason key), or ``None`` if it can."""
    if not isinstance(record.get("text"), str) or not record["text"].strip():
        return "empty_text"
    if task.name in ("sentiment", "sentiment5"):
        label = record.get("sentiment")
        if label is None:
            return "missing_label"
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(task.label_names):
            return "unknown_label"
    elif task.name == "aspects":
        aspects = record.get("aspects")
        if aspects is None:
            return "missing_label"
        if not isinstance(aspects, list):
            return "unknown_label"
        seen = set()
        for a in aspects:
            if not isinstance(a, dict) or a.get("keyword") not in task.keywords:
                return "unknown_keyword"
            p = a.get("polarity")
            if isinstance(p, bool) or not isinstance(p, int) or p not in task.polarities:
                return "unknown_label"
            if a["keyword"] in seen:
                return "duplicate_keyword"
            seen.add(a["keyword"])
    elif task.name == "regression":
        score = record.get("score")
        if score is None:
            return "missing_label"
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            return "unknown_label"
    return None


def sort_aspects(aspects: list[dict], task: TaskSpec) -> list[dict]:
    """Aspects in keyword-list order (the order answers are written in)."""
    order = {k: i for i, k in enumerate(task.keywords)}
    return sorted(aspects, key=lambda a: order.get(a["keyword"], len(order)))


def read_records(path: str | Path) -> list[dict]:
    """Read a records.jsonl file; every record is checked for the canonical keys."""
    rows = read_jsonl(path)
    for lineno, r in enumerate(rows, 1):
        if not isinstance(r, dict):
            raise ValueError(f"{path}: record {lineno}: not a JSON object")
        missing = [k for k in ("id", "text") if k not in r]
        if missing:
            raise ValueError(f"{path}: record {lineno}: missing field(s) {', '.join(missing)}")
        for k in RECORD_KEYS:
            r.setdefault(k, {} if k == "meta" else None)
    return rows


def write_records(path: str | Path, records: list[dict]) -> Path:
    return atomic_write_jsonl(path, records)


def keep_usable(records: Iterable[dict], task: TaskSpec) -> tuple[list[dict], dict[str, int]]:
    """The records usable for ``task``, and how many others were dropped, by reason (``drop_reason``)."""
    kept, dropped = [], Counter()
    for record in records:
        reason = drop_reason(record, task)
        if reason is None:
            kept.append(record)
        else:
            dropped[reason] += 1
    return kept, dict(sorted(dropped.items()))


def load_task_records(path: str | Path, task: TaskSpec) -> tuple[list[dict], dict[str, Any]]:
    """Records of ``path`` usable for ``task``, and ``{"path", "read", "kept", "dropped": {reason: n}}``
    (read = kept + dropped, always); a file with no usable record is an error naming it."""
    records = read_records(path)
    kept, dropped = keep_usable(records, task)
    report = {"path": str(path), "read": len(records), "kept": len(kept), "dropped": dropped}
    if not kept:
        raise ValueError(f"{path}: none of {len(records)} records is usable for task {task.name} (dropped: {dropped})")
    if dropped:
        logger.warning("%s: dropped %d of %d records: %s", path, sum(dropped.values()), len(records), dropped)
    return kept, report
