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

from reviewtune.atomic import atomic_write_jsonl
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


def read_records(path: str | Path, encoding: str = "utf-8") -> list[dict]:
    """Read a records file (JSON lines, or a JSON array) through the suite's one decoder (encodings, byte-order
    mark, NFC); every record needs ``id`` and ``text`` and gets the other canonical keys. A problem is a
    ``DataError`` naming the file and line."""
    from reviewtune.data.decoding import DataError, decode_file, nfc, undecodable_field
    from reviewtune.data.rows import Malformed, iter_json

    text, _ = decode_file(path, encoding)
    rows = []
    for where, row in iter_json(text, Path(path)):
        if isinstance(row, Malformed):
            raise DataError(f"{where}: {row.detail}")
        missing = [k for k in ("id", "text") if k not in row]
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
        bad = undecodable_field(row)
        if bad is not None:
            raise DataError(f"{where}: field {bad!r} holds bytes that are not valid {encoding}; if the file is in "
                            "another encoding, name it (e.g. --encoding cp949)")  # fmt: skip
        row, _ = nfc(row)
        for k in RECORD_KEYS:
            row.setdefault(k, {} if k == "meta" else None)
        rows.append(row)
    return rows


def write_records(path: str | Path, records: list[dict]) -> Path:
    return atomic_write_jsonl(path, records)


def keep_usable(records: Iterable[dict], task: TaskSpec | None) -> tuple[list[dict], dict[str, int]]:
    """The records usable for ``task`` (``None``: to predict, a text is all it takes), and how many others were
    dropped, by reason (``drop_reason``; ``duplicate_id`` for an id seen before)."""
    kept, dropped, seen = [], Counter(), set()
    for record in records:
        reason = drop_reason(record, task) if task is not None else _no_text(record)
        if reason is None and str(record["id"]) in seen:
            reason = "duplicate_id"  # systems are matched example by example on ids; the first one is kept
        if reason is None:
            kept.append(record)
            seen.add(str(record["id"]))
        else:
            dropped[reason] += 1
    return kept, dict(sorted(dropped.items()))


def _no_text(record: dict) -> str | None:
    return None if isinstance(record.get("text"), str) and record["text"].strip() else "empty_text"


def load_task_records(
    path: str | Path, task: TaskSpec | None, encoding: str = "utf-8"
) -> tuple[list[dict], dict[str, Any]]:
    """Records of ``path`` usable for ``task`` (``None``: any record with a text, to predict), and
    ``{"path", "read", "kept", "dropped": {reason: n}}`` (read = kept + dropped, always); a file with no record,
    or none usable, is an error naming it."""
    records = read_records(path, encoding)
    if not records:
        from reviewtune.data.decoding import DataError

        raise DataError(f"{path}: no records (an empty file)")
    kept, dropped = keep_usable(records, task)
    report = {"path": str(path), "read": len(records), "kept": len(kept), "dropped": dropped}
    if not kept:
        purpose = f"for task {task.name}" if task is not None else "to predict"
        raise ValueError(f"{path}: none of {len(records)} records is usable {purpose} (dropped: {dropped})")
    if dropped:
        logger.warning("%s: dropped %d of %d records: %s", path, sum(dropped.values()), len(records), dropped)
    return kept, report
