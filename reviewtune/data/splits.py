"""Seeded splits of records and what the prepare report says about them (label counts, overlaps)."""

from __future__ import annotations

import collections
import json
import math
import re
from typing import Any

from reviewtune.data.decoding import DataError
from reviewtune.tasks import TaskSpec


def parse_split_spec(spec: str) -> dict[str, float]:
    """``"train=0.8,validation=0.1,test=0.1"`` -> ``{"train": 0.8, ...}`` (fractions must sum to 1)."""
    fractions: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            frac = float(value)
        except ValueError:
            frac = -1.0
        if not sep or not name or not 0 < frac <= 1 or name in fractions or not re.fullmatch(r"[\w.-]+", name):
            raise DataError(f"bad --split {spec!r}: expected name=fraction,... like train=0.8,validation=0.1,test=0.1")
        fractions[name] = frac
    if not math.isclose(sum(fractions.values()), 1.0, abs_tol=1e-6):
        raise DataError(f"bad --split {spec!r}: fractions sum to {sum(fractions.values()):g}, not 1")
    return fractions


def stratify_key(record: dict, task: TaskSpec) -> str:
    """The label a split is stratified by: the class; for aspects the overall polarity sign."""
    if task.name in ("sentiment", "sentiment5"):
        return str(record["sentiment"])
    if task.name == "aspects":
        total = sum(a["polarity"] for a in record["aspects"])
        return "none" if not record["aspects"] else ("neg" if total < 0 else "pos" if total > 0 else "neutral")
    return ""  # regression: binned by rank in split_records


def split_records(
    records: list[dict], fractions: dict[str, float], seed: int, task: TaskSpec
) -> tuple[dict[str, list[dict]], bool, list[str]]:
    """Seeded split stratified by label (``sklearn.model_selection.train_test_split``).

    Returns ``({name: records}, stratified, pooled)``; input order is kept inside each split. When a
    label is too rare to spread over the splits, the rare labels are pooled into one stratum (listed in
    ``pooled``), and as a last resort the split is not stratified (``stratified=False``).
    """
    import numpy as np
    from sklearn.model_selection import train_test_split

    n = len(records)
    # Exact integer sizes (largest remainder), so sizes do not depend on sklearn's rounding.
    raw = [f * n for f in fractions.values()]
    sizes = [int(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - sizes[i], reverse=True)[: n - sum(sizes)]:
        sizes[i] += 1
    if task.name == "regression":
        scores = np.array([r["score"] for r in records], dtype=float)
        ranks = scores.argsort(kind="stable").argsort(kind="stable")
        keys = [str(int(r * 5 // max(n, 1))) for r in ranks]
    else:
        keys = [stratify_key(r, task) for r in records]
    counts = collections.Counter(keys)
    rare = sorted(k for k, c in counts.items() if c < 2 * len(fractions))
    pooled = [k if k not in rare else "rare" for k in keys] if rare and len(rare) < len(counts) else None

    stratified, pooled_used = True, False
    remaining = np.arange(n)
    out: dict[str, list[dict]] = {}
    for name, size in zip(fractions, sizes, strict=True):
        if size == len(remaining) or size == 0:  # the last split takes the rest
            take, remaining = remaining[:size], remaining[size:]
        else:
            options = [keys, pooled, None] if pooled else [keys, None]
            for strata in options:
                try:
                    take, remaining = train_test_split(
                        remaining,
                        train_size=size,
                        random_state=seed,
                        stratify=strata and [strata[j] for j in remaining],
                    )
                    break
                except ValueError:  # a stratum too small for the requested sizes
                    continue
            stratified = stratified and strata is not None
            pooled_used = pooled_used or strata is pooled
        out[name] = [records[j] for j in sorted(take)]
    return out, stratified, rare if stratified and pooled_used else []


def label_counts(records: list[dict], task: TaskSpec) -> dict:
    """Label distribution of kept records, for the report."""
    if task.name in ("sentiment", "sentiment5"):
        c = collections.Counter(r["sentiment"] for r in records)
        return {task.label_names[k]: c[k] for k in range(len(task.label_names))}
    if task.name == "aspects":
        kw = collections.Counter(a["keyword"] for r in records for a in r["aspects"])
        pol = collections.Counter(a["polarity"] for r in records for a in r["aspects"])
        return {
            "keywords": {k: kw[k] for k in task.keywords},
            "polarities": {str(p): pol[p] for p in task.polarities},
            "no_aspects": sum(1 for r in records if not r["aspects"]),
        }
    scores = [r["score"] for r in records]
    if not scores:
        return {"n": 0}
    return {"n": len(scores), "mean": sum(scores) / len(scores), "min": min(scores), "max": max(scores)}


def text_overlap(a: list[dict], b: list[dict]) -> int:
    """How many records of ``b`` have a text (stripped) that also occurs in ``a``."""
    texts = {r["text"].strip() for r in a}
    return sum(1 for r in b if r["text"].strip() in texts)


def text_info(splits: dict[str | None, list[dict]], task: TaskSpec) -> dict:
    """Duplicate texts and texts shared between splits: reported, never dropped (comparability)."""
    info: dict[str, Any] = {}
    seen: dict[str, Any] = {}
    dup = conflicting = 0
    label_key = {"sentiment": "sentiment", "sentiment5": "sentiment", "aspects": "aspects", "regression": "score"}
    for records in splits.values():
        for r in records:
            t = r["text"].strip()
            label = json.dumps(r[label_key[task.name]], sort_keys=True)
            if t in seen:
                dup += 1
                conflicting += seen[t] != label
            else:
                seen[t] = label
    info["duplicate_texts"] = dup
    info["duplicate_texts_with_other_label"] = conflicting
    names = [s for s in splits if s is not None]
    if len(names) > 1:
        info["split_overlap"] = {
            f"{a}/{b}": text_overlap(splits[a], splits[b]) for i, a in enumerate(names) for b in names[i + 1 :]
        }
        if "train" in splits and "test" in splits:
            info["train_test_overlap"] = info["split_overlap"].get("train/test")
    return info


def hold_out_validation(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded random ``fraction`` of ``records`` held out for validation: ``(train, validation)``, each in
    input order. The one validation split of the recipes, so the systems compared train on the same records."""
    import numpy as np

    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {fraction}")
    n_val = max(1, round(len(records) * fraction))
    if len(records) - n_val < 1:
        raise ValueError(f"{len(records)} records are too few to hold out {fraction:.0%} for validation")
    held_out = set(np.random.default_rng(seed).permutation(len(records))[:n_val].tolist())
    return (
        [r for i, r in enumerate(records) if i not in held_out],
        [r for i, r in enumerate(records) if i in held_out],
    )
