"""What a report holds: its keys and per-task metric columns, and the check that a report has them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from reviewtune.evaluation.metrics import (
    REGRESSION_TOLERANCE,
)
from reviewtune.tasks import TASKS, TaskSpec

REPORT_SCHEMA_VERSION = 1


SYSTEM_KINDS = ("generative", "classifier", "baseline")


REPORT_KEYS = (
    "schema_version", "created_at", "task", "test_file", "n_examples", "subsample", "systems", "pairwise",
    "disagreements", "provenance",
)  # fmt: skip


SYSTEM_KEYS = ("name", "kind", "scoring", "run_dir", "metrics", "cost")


COST_KEYS = (
    "latency_p50_ms", "latency_p95_ms", "throughput_per_s", "batch_size", "peak_memory_bytes",
    "trainable_params", "total_params", "size_on_disk_bytes", "train_runtime_s",
)  # fmt: skip


PAIRWISE_KEYS = ("system_a", "system_b", "correct_when", "n", "accuracy_a", "accuracy_b", "b", "c", "statistic",
                 "p_value", "method", "significant")  # fmt: skip


SUBSAMPLE_KEYS = ("n", "seed", "total")


DISAGREEMENT_KEYS = ("id", "text", "gold", "predictions", "correct", "highlights")


# Metric keys every system's ``metrics`` must have, per task (what the tables and plots read).
REQUIRED_METRICS = {
    "sentiment": ("n", "accuracy", "macro_f1", "invalid_rate", "per_class", "confusion_matrix"),
    "sentiment5": ("n", "accuracy", "macro_f1", "invalid_rate", "per_class", "confusion_matrix"),
    "aspects": ("n", "micro_f1", "macro_f1", "polarity_accuracy", "exact_match", "invalid_rate", "per_keyword"),
    "regression": ("n", "mae", "mse", "pearson", "spearman", "invalid_rate"),
}


# Quality columns of the head-to-head table: (metric key, header); a ``<key>_ci`` entry adds the interval.
QUALITY_COLUMNS = {
    "sentiment": (("accuracy", "Accuracy"), ("macro_f1", "Macro-F1"), ("ece", "ECE")),
    "sentiment5": (("accuracy", "Accuracy"), ("macro_f1", "Macro-F1"), ("ece", "ECE")),
    "aspects": (
        ("micro_f1", "Keyword micro-F1"),
        ("macro_f1", "Keyword macro-F1"),
        ("polarity_accuracy", "Polarity acc."),
        ("exact_match", "Exact match"),
    ),
    "regression": (("mae", "MAE"), ("mse", "MSE"), ("pearson", "Pearson"), ("spearman", "Spearman")),
}


CORRECT_WHEN = {
    "sentiment": "predicted label = gold label",
    "sentiment5": "predicted label = gold label",
    "aspects": "predicted aspect set = gold set (keywords and polarities)",
    "regression": f"|predicted - gold| <= {REGRESSION_TOLERANCE:g}",
}


MACRO_NOTE = "Macro-F1 averages over the classes (keywords) present in the gold labels or the predictions."
INVALID_NOTE = {
    "sentiment": f"Invalid outputs count as wrong. {MACRO_NOTE}",
    "sentiment5": f"Invalid outputs count as wrong. {MACRO_NOTE}",
    "aspects": f"Invalid outputs count as detecting no keyword and are never an exact match. {MACRO_NOTE}",
    "regression": "Invalid outputs are scored as the training records' mean score (each system's "
    "`invalid_scored_as`) in MAE, MSE and the correlations, and count as wrong in the paired tests; `mae_valid` "
    "is the MAE of the valid outputs alone.",
}
# How the recommendation says an invalid output was charged for, per task.
INVALID_CHARGE = {
    "sentiment": "counted as wrong",
    "sentiment5": "counted as wrong",
    "aspects": "counted as detecting no keyword",
    "regression": "scored as the training mean",
}


ALPHA = 0.05  # significance level of the pairwise McNemar tests (uncorrected for multiple comparisons)


MAX_DISAGREEMENTS = 50


def report_task(report_or_task: dict | TaskSpec) -> TaskSpec:
    task = report_or_task.get("task") if isinstance(report_or_task, dict) else report_or_task
    return task if isinstance(task, TaskSpec) else TaskSpec.from_dict(task)


def json_safe(obj: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays converted, tuples as lists."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _number_or_none(x: Any) -> bool:
    return x is None or (isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x))


def _non_finite_paths(obj: Any, path: str = "") -> list[str]:
    if isinstance(obj, float) and not math.isfinite(obj):
        return [path or "."]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _non_finite_paths(v, f"{path}.{k}")]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _non_finite_paths(v, f"{path}[{i}]")]
    return []


def validate_report_schema(report: dict) -> None:
    """Raise ``ValueError`` listing every way ``report`` departs from the ``report.json`` schema."""
    problems = [f"missing top-level key {k!r}" for k in REPORT_KEYS if k not in report]
    if problems:
        raise ValueError("report.json schema: " + "; ".join(problems))
    task_name = (report["task"] or {}).get("name") if isinstance(report["task"], dict) else None
    if task_name not in TASKS:
        problems.append(f"task.name is {task_name!r}, expected one of {TASKS}")
    if not isinstance(report["n_examples"], int) or report["n_examples"] < 1:
        problems.append(f"n_examples must be a positive integer, got {report['n_examples']!r}")
    sub = report["subsample"]
    if sub is not None and (not isinstance(sub, dict) or any(not isinstance(sub.get(k), int) for k in SUBSAMPLE_KEYS)):
        problems.append(f"subsample must be null or {{{', '.join(SUBSAMPLE_KEYS)}}} with integer values, got {sub!r}")
    systems = report["systems"]
    if not isinstance(systems, list) or not systems:
        problems.append("systems must be a non-empty list")
        systems = []
    names = set()
    for i, s in enumerate(systems):
        where = f"systems[{i}] ({s.get('name', '?') if isinstance(s, dict) else '?'})"
        if not isinstance(s, dict):
            problems.append(f"{where}: not an object")
            continue
        problems += [f"{where}: missing key {k!r}" for k in SYSTEM_KEYS if k not in s]
        if not isinstance(s.get("name"), str) or not s.get("name"):
            problems.append(f"{where}: name must be a non-empty string")
        elif s["name"] in names:
            problems.append(f"{where}: duplicate name")
        names.add(s.get("name"))
        if s.get("kind") not in SYSTEM_KINDS:
            problems.append(f"{where}: kind is {s.get('kind')!r}, expected one of {SYSTEM_KINDS}")
        if not isinstance(s.get("scoring"), str) or not s.get("scoring"):
            problems.append(f"{where}: scoring must be a non-empty string")
        metrics, cost = s.get("metrics"), s.get("cost")
        if not isinstance(metrics, dict):
            problems.append(f"{where}: metrics must be an object")
        else:
            problems += [
                f"{where}: metrics missing {k!r}" for k in REQUIRED_METRICS.get(task_name, ()) if k not in metrics
            ]
            if metrics.get("n") != report["n_examples"]:
                problems.append(f"{where}: metrics.n is {metrics.get('n')!r} but n_examples is {report['n_examples']}")
        if not isinstance(cost, dict):
            problems.append(f"{where}: cost must be an object")
        else:
            problems += [f"{where}: cost missing {k!r}" for k in COST_KEYS if k not in cost]
            problems += [
                f"{where}: cost.{k} is not a number or null" for k in COST_KEYS if not _number_or_none(cost.get(k))
            ]
    if not isinstance(report["pairwise"], list):
        problems.append("pairwise must be a list")
    else:
        for j, p in enumerate(report["pairwise"]):
            problems += [f"pairwise[{j}]: missing key {k!r}" for k in PAIRWISE_KEYS if k not in p]
            for side in ("system_a", "system_b"):
                if p.get(side) not in names:
                    problems.append(f"pairwise[{j}]: {side} {p.get(side)!r} is not a system")
        expected = len(names) * (len(names) - 1) // 2
        if len(report["pairwise"]) != expected:
            problems.append(f"pairwise has {len(report['pairwise'])} tests, expected {expected} (every pair)")
    if not isinstance(report["disagreements"], list):
        problems.append("disagreements must be a list")
    else:
        for j, d in enumerate(report["disagreements"]):
            problems += [f"disagreements[{j}]: missing key {k!r}" for k in DISAGREEMENT_KEYS if k not in d]
            marks = d.get("highlights")
            if marks is not None and not (
                isinstance(marks, dict)
                and all(
                    isinstance(v, list) and all(x is not None and _number_or_none(x) for x in v) for v in marks.values()
                )
            ):
                problems.append(f"disagreements[{j}]: highlights must be null or {{system: [score per word]}}")
    problems += [f"non-finite number at {p}" for p in _non_finite_paths(report)]
    if problems:
        raise ValueError("report.json schema: " + "; ".join(problems))
