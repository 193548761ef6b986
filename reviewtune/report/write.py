"""The head-to-head report: ``report.json``, ``report.md`` and a self-contained ``report.html``.

``write_report(out_dir, report, records, predictions_by_system)`` takes what the harness measured (one
``systems`` entry per (run, scoring mode) with ``metrics`` from :func:`reviewtune.metrics.task_metrics`
and ``cost`` under :data:`COST_KEYS`), adds McNemar tests between every two systems and the examples
where the systems disagree, checks the schema (:func:`validate_report_schema`) and writes the three
files atomically. ``render_markdown`` / ``render_html`` rebuild the documents from ``report.json`` alone.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

from reviewtune.atomic import atomic_write_json, atomic_write_text
from reviewtune.provenance import provenance
from reviewtune.report.comparisons import disagreement_examples, pairwise_tests
from reviewtune.report.html import render_html
from reviewtune.report.markdown import render_markdown
from reviewtune.report.schema import (
    MAX_DISAGREEMENTS,
    REPORT_SCHEMA_VERSION,
    json_safe,
    report_task,
    validate_report_schema,
)


def write_report(
    out_dir: str | Path,
    report: dict,
    records: Sequence[dict],
    predictions_by_system: dict[str, list[dict]],
    max_disagreements: int = MAX_DISAGREEMENTS,
) -> dict[str, Path]:
    """Complete ``report`` and write ``report.json``, ``report.md`` and ``report.html`` into ``out_dir``.

    ``report`` needs ``task`` (``TaskSpec`` or its dict), ``test_file``, ``subsample`` (``None`` or
    ``{"n", "seed", "total"}``) and ``systems``; ``pairwise``, ``disagreements``, ``n_examples``,
    ``provenance``, ``created_at`` and ``schema_version`` are filled in when absent. To show highlighted
    words, build ``disagreements`` first with :func:`disagreement_examples`, set each example's
    ``highlights`` and pass them (with ``n_disagreements``) in ``report``.
    ``predictions_by_system`` maps each system name to its prediction dicts, aligned with ``records``.
    Returns the three paths.
    """
    task = report_task(report)
    report = {**report, "task": task.to_dict()}
    names = [s["name"] for s in report.get("systems", [])]
    if sorted(names) != sorted(predictions_by_system):
        raise ValueError(f"systems {names} and predictions_by_system {list(predictions_by_system)} differ")
    for name, preds in predictions_by_system.items():
        if [str(p["id"]) for p in preds] != [str(r["id"]) for r in records]:
            raise ValueError(f"predictions of system {name!r} are not aligned with the records (ids differ)")
    ordered = {name: predictions_by_system[name] for name in names}
    report.setdefault("schema_version", REPORT_SCHEMA_VERSION)
    report.setdefault("created_at", datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    report.setdefault("n_examples", len(records))
    report.setdefault("pairwise", pairwise_tests(task, records, ordered))
    if "disagreements" not in report:
        models = [s["name"] for s in report["systems"] if s.get("kind") != "baseline"]
        examples, total = disagreement_examples(task, records, ordered, max_disagreements, first=models)
        report["disagreements"] = examples
        report["n_disagreements"] = total
    report.setdefault("provenance", provenance(data_files={"test_file": report.get("test_file")}))
    report = json_safe(report)
    validate_report_schema(report)
    out = Path(out_dir)
    paths = {
        "json": atomic_write_json(out / "report.json", report),
        "md": atomic_write_text(out / "report.md", render_markdown(report)),
        "html": atomic_write_text(out / "report.html", render_html(report)),
    }
    return paths
