"""The head-to-head report: ``report.json``, ``report.md`` and a self-contained ``report.html``.

``write_report(out_dir, report, records, predictions_by_system)`` takes what the harness measured (one
``systems`` entry per (run, scoring mode) with ``metrics`` from :func:`reviewtune.metrics.task_metrics`
and ``cost`` under :data:`COST_KEYS`), adds McNemar tests between every two systems and the examples
where the systems disagree, checks the schema (:func:`validate_report_schema`) and writes the three
files atomically. ``render_markdown`` / ``render_html`` rebuild the documents from ``report.json`` alone.
"""

from __future__ import annotations

import base64
import datetime
import functools
import html
import io
import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reviewtune.atomic import atomic_write_json, atomic_write_text
from reviewtune.metrics import (
    LOWER_IS_BETTER,
    PRIMARY_METRIC,
    REGRESSION_TOLERANCE,
    gold_values,
    mcnemar,
    per_example_correct,
    predicted_values,
)
from reviewtune.provenance import provenance
from reviewtune.tasks import EMPTY_ASPECTS_ANSWER, TASKS, TaskSpec

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
# Which highlighted words are marked (here and in ``reviewtune.highlights``): those scoring at least this share
# of the top word's score, and none when the top score (a drop in probability) is under MIN_DROP.
SPAN_FRACTION = 0.5
MIN_DROP = 0.01
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
INVALID_NOTE = {
    "sentiment": "Invalid outputs count as wrong.",
    "sentiment5": "Invalid outputs count as wrong.",
    "aspects": "Invalid outputs count as detecting no keyword and are never an exact match. Keyword macro-F1 "
    "averages over the keywords present in the gold labels or the predictions.",
    "regression": "Invalid outputs are left out of MAE, MSE and the correlations (see the invalid rate) and "
    "count as wrong in the paired tests.",
}
ALPHA = 0.05  # significance level of the pairwise McNemar tests (uncorrected for multiple comparisons)
MAX_DISAGREEMENTS = 50


# --------------------------------------------------------------------------------------------- building


def _task(report_or_task: dict | TaskSpec) -> TaskSpec:
    task = report_or_task.get("task") if isinstance(report_or_task, dict) else report_or_task
    return task if isinstance(task, TaskSpec) else TaskSpec.from_dict(task)


def pairwise_tests(task: TaskSpec, records: Sequence[dict], predictions_by_system: dict[str, list[dict]]) -> list:
    """McNemar's test between every two systems on per-example correctness (same examples, same order)."""
    gold = gold_values(task.name, records)
    correct = {
        name: per_example_correct(task.name, gold, predicted_values(task.name, preds))
        for name, preds in predictions_by_system.items()
    }
    out = []
    for a, b in itertools.combinations(predictions_by_system, 2):
        test = mcnemar(correct[a], correct[b])
        out.append(
            {
                "system_a": a,
                "system_b": b,
                "correct_when": CORRECT_WHEN[task.name],
                "n": len(gold),
                "accuracy_a": float(np.mean(correct[a])) if gold else None,
                "accuracy_b": float(np.mean(correct[b])) if gold else None,
                **test,
                "significant": test["p_value"] < ALPHA,
            }
        )
    return out


def _display(task: TaskSpec, value: Any) -> str:
    """A gold or predicted value as answer text (``긍정``, ``배송1, 가격-1``, ``없음``, ``3.5``)."""
    if value is None:
        return "invalid"
    if task.name in ("sentiment", "sentiment5"):
        return task.label_names[int(value)]
    if task.name == "aspects":
        order = {k: i for i, k in enumerate(task.keywords)}
        items = sorted(value, key=lambda a: order.get(a["keyword"], len(order)))
        return ", ".join(f"{a['keyword']}{a['polarity']}" for a in items) or EMPTY_ASPECTS_ANSWER
    return f"{float(value):g}"


def disagreement_examples(
    task: TaskSpec,
    records: Sequence[dict],
    predictions_by_system: dict[str, list[dict]],
    max_examples: int = MAX_DISAGREEMENTS,
    first: Sequence[str] = (),
) -> tuple[list[dict], int]:
    """Examples where the systems' predictions differ (at most ``max_examples``), and how many there are.

    Examples on which the systems named in ``first`` (e.g. the trained models, not the baselines)
    disagree among themselves come first; otherwise record order. Each example: ``id``, ``text``,
    ``gold``, ``predictions`` and ``correct`` per system, ``highlights`` (``None``; callers may set
    ``{system: [score per whitespace-separated word]}`` before writing the report).
    """
    gold = gold_values(task.name, records)
    shown = {
        name: [_display(task, v) for v in predicted_values(task.name, p)] for name, p in predictions_by_system.items()
    }
    correct = {
        name: per_example_correct(task.name, gold, predicted_values(task.name, p))
        for name, p in predictions_by_system.items()
    }
    reasons = {name: [p.get("invalid_reason") for p in preds] for name, preds in predictions_by_system.items()}
    first = [n for n in first if n in shown]
    differing = [i for i in range(len(records)) if len({shown[n][i] for n in shown}) > 1]
    differing.sort(key=lambda i: (len({shown[n][i] for n in first}) < 2, i))
    examples = []
    for i in differing[:max_examples]:
        examples.append(
            {
                "id": str(records[i]["id"]),
                "text": records[i]["text"],
                "gold": _display(task, gold[i]),
                "predictions": {
                    n: shown[n][i] + (f" ({reasons[n][i]})" if shown[n][i] == "invalid" and reasons[n][i] else "")
                    for n in shown
                },
                "correct": {n: bool(correct[n][i]) for n in shown},
                "highlights": None,
            }
        )
    return examples, len(differing)


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
    task = _task(report)
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
    report = _json_safe(report)
    validate_report_schema(report)
    out = Path(out_dir)
    paths = {
        "json": atomic_write_json(out / "report.json", report),
        "md": atomic_write_text(out / "report.md", render_markdown(report)),
        "html": atomic_write_text(out / "report.html", render_html(report)),
    }
    return paths


def _json_safe(obj: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays converted, tuples as lists."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ------------------------------------------------------------------------------------------------ schema


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


# ---------------------------------------------------------------------------------------------- numbers


def _f(x: Any, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _with_ci(metrics: dict, key: str) -> str:
    value, ci = metrics.get(key), metrics.get(f"{key}_ci")
    if value is None:
        return "—"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def _bytes(n: Any) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "—"


def _count(n: Any) -> str:
    if n is None:
        return "—"
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}"
    return str(int(n))


def _seconds(s: Any) -> str:
    if s is None:
        return "—"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def summary_table(report: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the head-to-head table (shared by Markdown and HTML)."""
    task_name = report["task"]["name"]
    quality = QUALITY_COLUMNS[task_name]
    has_ci = {k for k, _ in quality if any(f"{k}_ci" in s["metrics"] for s in report["systems"])}
    header = [
        "System",
        "Kind",
        "Scoring",
        *(h + (" [95% CI]" if k in has_ci else "") for k, h in quality),
        "Invalid",
        "Latency p50 (ms)",
        "Latency p95 (ms)",
        "Throughput (/s)",
        "Peak memory",
        "Params (trainable / total)",
        "Size on disk",
        "Train time",
    ]
    rows = []
    for s in report["systems"]:
        m, c = s["metrics"], s["cost"]
        throughput = _f(c["throughput_per_s"], 1)
        if c["throughput_per_s"] is not None and c["batch_size"] is not None:
            throughput += f" (batch {c['batch_size']})"
        rows.append(
            [
                s["name"],
                s["kind"],
                s["scoring"],
                *(_with_ci(m, k) for k, _ in quality),
                f"{m['invalid_rate']:.1%}",
                _f(c["latency_p50_ms"], 2),
                _f(c["latency_p95_ms"], 2),
                throughput,
                _bytes(c["peak_memory_bytes"]),
                f"{_count(c['trainable_params'])} / {_count(c['total_params'])}",
                _bytes(c["size_on_disk_bytes"]),
                _seconds(c["train_runtime_s"]),
            ]
        )
    return header, rows


def subsample_statement(report: dict) -> str:
    sub = report["subsample"]
    if sub is None:
        return f"All {report['n_examples']} examples of `{report['test_file']}`, every system on the same examples."
    return (
        f"A seeded random subsample of {sub['n']} of the {sub['total']} examples of `{report['test_file']}` "
        f"(seed {sub['seed']}), every system on the same examples in the same order."
    )


def recommendation(report: dict) -> str:
    """One sentence from the numbers: the best system on the primary metric, and whether its lead is significant."""
    task_name = report["task"]["name"]
    metric = PRIMARY_METRIC[task_name]
    scored = [s for s in report["systems"] if s["metrics"].get(metric) is not None]
    if not scored:
        return f"No system has a {metric} value; nothing to recommend."
    ranked = sorted(scored, key=lambda s: s["metrics"][metric], reverse=metric not in LOWER_IS_BETTER)
    best = ranked[0]
    text = f"**{best['name']}** has the best {metric} ({best['metrics'][metric]:.3f}"
    invalid = best["metrics"].get("invalid_rate") or 0.0
    text += f", with {invalid:.1%} invalid outputs)" if invalid else ")"
    if len(ranked) == 1:
        return text + "."
    second = ranked[1]
    test = next(
        (p for p in report["pairwise"] if {p["system_a"], p["system_b"]} == {best["name"], second["name"]}), None
    )
    text += f"; the next is {second['name']} ({second['metrics'][metric]:.3f})"
    if test is None:
        return text + "."
    if test["significant"]:
        return text + f", and the difference is significant (McNemar p = {test['p_value']:.3g} < {ALPHA})."
    faster = _faster(best, second)
    tail = ""
    if faster:
        slower = second if faster is best else best
        tail = (
            f"; {faster['name']} is the faster of the two ({faster['cost']['throughput_per_s']:.1f} vs "
            f"{slower['cost']['throughput_per_s']:.1f} reviews/s)"
        )
    return text + f", but the difference is not significant (McNemar p = {test['p_value']:.3g}){tail}."


def _faster(a: dict, b: dict) -> dict | None:
    ta, tb = a["cost"]["throughput_per_s"], b["cost"]["throughput_per_s"]
    if ta is None or tb is None or ta == tb:
        return None
    return a if ta > tb else b


# --------------------------------------------------------------------------------------------- markdown


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(x: str) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pairwise_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    header = [
        "System A",
        "System B",
        "A correct",
        "B correct",
        "b (A only)",
        "c (B only)",
        "p-value",
        "Test",
        f"Significant (p < {ALPHA})",
    ]
    rows = [
        [
            p["system_a"],
            p["system_b"],
            _f(p["accuracy_a"]),
            _f(p["accuracy_b"]),
            str(p["b"]),
            str(p["c"]),
            f"{p['p_value']:.3g}",
            p["method"],
            "yes" if p["significant"] else "no",
        ]
        for p in report["pairwise"]
    ]
    return header, rows


def _detail_tables(report: dict, s: dict) -> list[str]:
    """Per-class (or per-keyword) tables, confusion matrix and invalid reasons of one system, as Markdown."""
    m = s["metrics"]
    parts = []
    table = m.get("per_class") or m.get("per_keyword")
    if table:
        header = ["Class" if "per_class" in m else "Keyword", "Precision", "Recall", "F1", "Support"]
        rows = [[k, _f(v["precision"]), _f(v["recall"]), _f(v["f1"]), str(v["support"])] for k, v in table.items()]
        parts.append(_md_table(header, rows))
    cm = m.get("confusion_matrix")
    if cm:
        header = ["true \\ predicted", *cm["columns"]]
        rows = [[label, *map(str, row)] for label, row in zip(cm["labels"], cm["matrix"], strict=True)]
        parts.append("Confusion matrix (rows: true, columns: predicted)\n\n" + _md_table(header, rows))
    if "n_valid" in m:
        parts.append(f"{m['n_valid']} of {m['n']} predictions are valid numbers.")
    if m.get("invalid_reasons"):
        parts.append("Invalid outputs: " + ", ".join(f"{k}: {v}" for k, v in m["invalid_reasons"].items()))
    return parts


def _failed(report: dict) -> list[dict]:
    """Systems the harness could not load or score (named in the report with their error)."""
    return report.get("failed_systems") or []


def render_markdown(report: dict) -> str:
    task_name = report["task"]["name"]
    header, rows = summary_table(report)
    prov = report.get("provenance") or {}
    lines = [
        f"# reviewtune head-to-head: task `{task_name}`",
        "",
        subsample_statement(report),
        "",
        "## Head-to-head",
        "",
        _md_table(header, rows),
        "",
        f"Recommendation: {recommendation(report)}",
        "",
        *[f"Not scored: **{f['name']}** ({f['kind']}, {f['scoring']}): {f['error']}\n" for f in _failed(report)],
        f"Quality: point estimate [95% percentile bootstrap interval]. {INVALID_NOTE[task_name]} "
        f"Latency: per review at batch 1; throughput at the batch size shown. Primary metric: "
        f"`{PRIMARY_METRIC[task_name]}`.",
        "",
        "## Paired tests (McNemar)",
        "",
        f"Correct when {CORRECT_WHEN[task_name]}. b: A right and B wrong; c: A wrong and B right. Exact binomial "
        f"test when b + c < 25, else chi-square with continuity correction; p-values are not corrected for "
        f"multiple comparisons.",
        "",
    ]
    if report["pairwise"]:
        lines += [_md_table(*_pairwise_rows(report)), ""]
    else:
        lines += ["(one system: nothing to compare)", ""]
    lines += ["## Per-class detail", ""]
    for s in report["systems"]:
        lines += [f"### {s['name']} ({s['kind']}, {s['scoring']})", ""]
        for part in _detail_tables(report, s):
            lines += [part, ""]
        if task_name == "aspects":
            m = s["metrics"]
            lines += [
                f"Polarity accuracy on {m.get('polarity_n', '?')} correctly detected keywords: "
                f"{_f(m['polarity_accuracy'])}; keyword-set exact match: {_f(m.get('keyword_exact_match'))}.",
                "",
            ]
    n_dis = report.get("n_disagreements", len(report["disagreements"]))
    lines += [
        "## Disagreements",
        "",
        f"{n_dis} examples where the systems' predictions differ; the first {len(report['disagreements'])} "
        f"are listed in report.html.",
        "",
        "## Provenance",
        "",
        f"Created {report['created_at']}; git commit `{prov.get('git_commit')}`; "
        f"versions: {', '.join(f'{k} {v}' for k, v in (prov.get('versions') or {}).items() if v)}.",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- plots


@functools.cache
def _hangul_font() -> str | None:
    """Name of an installed font with Hangul glyphs, or ``None`` (matplotlib's default DejaVu has none)."""
    import importlib.util

    from matplotlib import font_manager, ft2font

    # NanumGothic ships in the koreanize-matplotlib wheel (a dependency). Register the file directly:
    # importing that package runs code that needs distutils, which Python 3.12 removed.
    spec = importlib.util.find_spec("koreanize_matplotlib")
    if spec and spec.submodule_search_locations:
        nanum = Path(spec.submodule_search_locations[0]) / "fonts" / "NanumGothic.ttf"
        if nanum.is_file():
            font_manager.fontManager.addfont(str(nanum))
            return "NanumGothic"
    for entry in font_manager.fontManager.ttflist:
        if "last resort" in entry.name.lower():  # maps every code point to a placeholder box
            continue
        try:
            if 0xAC00 in ft2font.FT2Font(entry.fname).get_charmap():
                return entry.name
        except (OSError, RuntimeError, ValueError):
            continue
    return None


def _plot_labels(names: Sequence[str], prefix: str) -> tuple[list[str], dict[str, str]]:
    """Labels the plot can draw: the names themselves, or ``prefix1..`` with a key when glyphs are missing."""
    if _hangul_font() or all(n.isascii() for n in names):
        return list(names), {}
    short = [n if n.isascii() else f"{prefix}{i}" for i, n in enumerate(names, 1)]
    return short, {s: n for s, n in zip(short, names, strict=True) if s != n}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas, safe in any process

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _with_font(plot):
    """Run a plot function with a Hangul-capable font when one is installed (without changing global rcParams)."""

    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        import matplotlib

        font = _hangul_font()
        with matplotlib.rc_context({"font.family": [font, "DejaVu Sans"]} if font else {}):
            return plot(*args, **kwargs)

    return wrapper


def _png_base64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


@_with_font
def plot_confusion_matrix(system: dict) -> tuple[str, dict[str, str]] | None:
    """Base64 PNG of one system's confusion matrix (rows normalised for colour, counts written)."""
    cm = system["metrics"].get("confusion_matrix")
    if not cm:
        return None
    rows, cols = cm["labels"], cm["columns"]
    labels, key = _plot_labels(list(dict.fromkeys(rows + cols)), "c")
    lookup = dict(zip(list(dict.fromkeys(rows + cols)), labels, strict=True))
    matrix = np.asarray(cm["matrix"], dtype=float)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig = _figure(1.2 + 0.7 * len(cols), 1.0 + 0.6 * len(rows))
    ax = fig.add_subplot()
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, f"{int(v)}", ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(cols)), [lookup[c] for c in cols], rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [lookup[r] for r in rows])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(_plot_labels([system["name"]], "system ")[0][0], fontsize=9)
    return _png_base64(fig), key


@_with_font
def plot_f1_bars(report: dict) -> tuple[str, dict[str, str]] | None:
    """Base64 PNG of per-class (per-keyword for aspects) F1, one bar per system."""
    systems = [s for s in report["systems"] if s["metrics"].get("per_class") or s["metrics"].get("per_keyword")]
    if not systems:
        return None
    field = "per_class" if systems[0]["metrics"].get("per_class") else "per_keyword"
    classes = list(systems[0]["metrics"][field])
    labels, key = _plot_labels(classes, "k" if field == "per_keyword" else "c")
    width = 0.8 / len(systems)
    fig = _figure(max(5.0, 0.5 * len(classes) * max(1, len(systems) / 2) + 2), 3.6)
    ax = fig.add_subplot()
    x = np.arange(len(classes))
    for i, s in enumerate(systems):
        f1 = [s["metrics"][field].get(c, {}).get("f1", 0.0) for c in classes]
        ax.bar(x + (i - (len(systems) - 1) / 2) * width, f1, width, label=_plot_labels([s["name"]], "system ")[0][0])
    ax.set_xticks(x, labels, rotation=45 if len(classes) > 6 else 0, ha="right" if len(classes) > 6 else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _png_base64(fig), key


@_with_font
def plot_quality_vs_throughput(report: dict) -> str | None:
    """Base64 PNG: primary metric against throughput (log scale), one labelled point per system."""
    metric = PRIMARY_METRIC[report["task"]["name"]]
    points = [
        (s["cost"]["throughput_per_s"], s["metrics"][metric], s["name"])
        for s in report["systems"]
        if s["cost"].get("throughput_per_s") and s["metrics"].get(metric) is not None
    ]
    if not points:
        return None
    names, _ = _plot_labels([p[2] for p in points], "system ")
    fig = _figure(5.5, 3.8)
    ax = fig.add_subplot()
    for (tput, quality, _), name in zip(points, names, strict=True):
        ax.scatter(tput, quality, s=40)
        ax.annotate(name, (tput, quality), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.margins(0.15)
    ax.set_xlabel("throughput (reviews / s, log scale)")
    ax.set_ylabel(metric + (" (lower is better)" if metric in LOWER_IS_BETTER else ""))
    ax.grid(True, alpha=0.3)
    return _png_base64(fig)


# -------------------------------------------------------------------------------------------------- html

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.ok { background: #e8f5e9; } td.bad { background: #ffebee; }
mark { background: rgba(255, 193, 7, var(--w, 0.6)); padding: 0 2px; border-radius: 2px; }
img { max-width: 100%; } .figs { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.key { font-size: 0.85em; color: #555; }
"""


def _html_table(header: list[str], rows: list[list[str]], classes: list[list[str]] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, cell in enumerate(row):
            cls = classes[i][j] if classes else ""
            cells.append(f'<td class="{cls}">{cell}</td>' if cls else f"<td>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def marked_words(scores: Sequence[float]) -> list[bool]:
    """Which words a highlight marks: those scoring at least ``SPAN_FRACTION`` of the top score, none when the
    top score is under ``MIN_DROP`` (the rule of both ``report.html`` and ``eval/highlight.py``)."""
    top = max(scores, default=0.0)
    return [top >= MIN_DROP and s >= SPAN_FRACTION * top for s in scores]


def highlight_html(text: str, scores: Sequence[float] | None) -> str:
    """The review with its decisive words marked: ``scores`` holds one value per whitespace-separated word;
    the words :func:`marked_words` picks are wrapped in ``<mark>`` (stronger = darker)."""
    words = text.split()
    if not scores or len(scores) != len(words):
        return html.escape(text)
    top = max(scores)
    out = []
    for word, score, marked in zip(words, scores, marked_words(scores), strict=True):
        if marked:
            out.append(f'<mark style="--w:{0.3 + 0.7 * score / top:.2f}">{html.escape(word)}</mark>')
        else:
            out.append(html.escape(word))
    return " ".join(out)


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _key_html(key: dict[str, str]) -> str:
    if not key:
        return ""
    return '<p class="key">' + ", ".join(f"{html.escape(k)} = {html.escape(v)}" for k, v in key.items()) + "</p>"


def render_html(report: dict) -> str:
    """A self-contained HTML page: the tables of ``report.md`` plus embedded PNG plots and disagreements."""
    task_name = report["task"]["name"]
    esc = html.escape
    header, rows = summary_table(report)
    parts = [
        f"<!DOCTYPE html><html lang='ko'><head><meta charset='utf-8'><title>reviewtune report: {esc(task_name)}</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>reviewtune head-to-head: task <code>{esc(task_name)}</code></h1>",
        f"<p>{esc(subsample_statement(report))}</p>",
        "<h2>Head-to-head</h2>",
        _html_table(header, [[esc(c) for c in row] for row in rows]),
        f"<p>Recommendation: {esc(recommendation(report)).replace('**', '')}</p>",
        *[f"<p class='failed'>Not scored: <b>{esc(f['name'])}</b> ({esc(f['kind'])}, {esc(f['scoring'])}): "
          f"{esc(f['error'])}</p>" for f in _failed(report)],
        "<h2>Quality versus throughput</h2>",
    ]
    scatter = plot_quality_vs_throughput(report)
    parts.append(_img(scatter, "quality versus throughput") if scatter else "<p>No throughput measured.</p>")
    bars = plot_f1_bars(report)
    if bars:
        parts += ["<h2>Per-class F1</h2>", _img(bars[0], "per-class F1"), _key_html(bars[1])]
    matrices = [(s, plot_confusion_matrix(s)) for s in report["systems"]]
    if any(m for _, m in matrices):
        parts.append("<h2>Confusion matrices</h2><div class='figs'>")
        for s, m in matrices:
            if m:
                parts.append(f"<div>{_img(m[0], 'confusion matrix ' + s['name'])}{_key_html(m[1])}</div>")
        parts.append("</div>")
    parts.append("<h2>Paired tests (McNemar)</h2>")
    parts.append(f"<p>Correct when {esc(CORRECT_WHEN[task_name])}; p-values uncorrected for multiple comparisons.</p>")
    if report["pairwise"]:
        h, r = _pairwise_rows(report)
        parts.append(_html_table(h, [[esc(c) for c in row] for row in r]))
    parts.append("<h2>Per-class detail</h2>")
    for s in report["systems"]:
        parts.append(f"<h3>{esc(s['name'])} ({esc(s['kind'])}, {esc(s['scoring'])})</h3>")
        m = s["metrics"]
        table = m.get("per_class") or m.get("per_keyword")
        if table:
            parts.append(
                _html_table(
                    ["Class" if "per_class" in m else "Keyword", "Precision", "Recall", "F1", "Support"],
                    [
                        [esc(k), _f(v["precision"]), _f(v["recall"]), _f(v["f1"]), str(v["support"])]
                        for k, v in table.items()
                    ],
                )
            )
        if m.get("invalid_reasons"):
            parts.append("<p>Invalid outputs: " + esc(", ".join(f"{k}: {v}" for k, v in m["invalid_reasons"].items())))
    parts.append(_disagreements_html(report))
    prov = report.get("provenance") or {}
    parts.append(
        f"<h2>Provenance</h2><p>Created {esc(report['created_at'])}; "
        f"git commit <code>{esc(str(prov.get('git_commit')))}</code>.</p>"
        f"<pre>{esc(_provenance_text(prov))}</pre></body></html>"
    )
    return "\n".join(parts)


def _provenance_text(prov: dict) -> str:
    import json

    return json.dumps(prov, ensure_ascii=False, indent=2, default=str)


def _disagreements_html(report: dict) -> str:
    esc = html.escape
    examples = report["disagreements"]
    names = [s["name"] for s in report["systems"]]
    n_dis = report.get("n_disagreements", len(examples))
    out = [
        f"<h2>Where the systems disagree</h2><p>{n_dis} examples; the first {len(examples)} shown. "
        "Green: correct, red: wrong. Marked words: the words that decided a system's prediction.</p>"
    ]
    if not examples:
        return out[0]
    rows, classes = [], []
    for ex in examples:
        highlights = ex.get("highlights") or {}
        text = esc(ex["text"])
        if highlights:
            text = "<br>".join(
                f"<b>{esc(name)}:</b> {highlight_html(ex['text'], scores)}" for name, scores in highlights.items()
            )
        rows.append([esc(ex["id"]), text, esc(ex["gold"]), *(esc(ex["predictions"].get(n, "")) for n in names)])
        classes.append(["", "", "", *("ok" if ex["correct"].get(n) else "bad" for n in names)])
    out.append(_html_table(["id", "review", "gold", *names], rows, classes))
    return "\n".join(out)
