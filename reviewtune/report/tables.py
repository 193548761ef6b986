"""The report's tables as rows of text (shared by Markdown and HTML) and the number formats they use."""

from __future__ import annotations

from typing import Any

from reviewtune.report.schema import ALPHA, INVALID_NOTE, QUALITY_COLUMNS


def fmt(x: Any, digits: int = 3) -> str:
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
        throughput = fmt(c["throughput_per_s"], 1)
        if c["throughput_per_s"] is not None and c["batch_size"] is not None:
            throughput += f" (batch {c['batch_size']})"
        rows.append(
            [
                s["name"],
                s["kind"],
                s["scoring"],
                *(_with_ci(m, k) for k, _ in quality),
                f"{m['invalid_rate']:.1%}",
                fmt(c["latency_p50_ms"], 2),
                fmt(c["latency_p95_ms"], 2),
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


def pairwise_rows(report: dict) -> tuple[list[str], list[list[str]]]:
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
            fmt(p["accuracy_a"]),
            fmt(p["accuracy_b"]),
            str(p["b"]),
            str(p["c"]),
            f"{p['p_value']:.3g}",
            p["method"],
            "yes" if p["significant"] else "no",
        ]
        for p in report["pairwise"]
    ]
    return header, rows


def failed_systems(report: dict) -> list[dict]:
    """Systems the harness could not load or score (named in the report with their error)."""
    return report.get("failed_systems") or []


def quality_note(report: dict) -> str:
    """How invalid outputs are charged and how macro averages are taken, with the regression fallback's value."""
    note = INVALID_NOTE[report["task"]["name"]]
    fallback = report.get("invalid_score")
    if fallback:
        note += f" Here that score is {fallback['value']:g}, the mean of the {fallback['from']} records."
    return note
