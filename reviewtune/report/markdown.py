"""``report.md``: the head-to-head table, recommendation, paired tests and per-class detail."""

from __future__ import annotations

from reviewtune.evaluation.metrics import (
    PRIMARY_METRIC,
)
from reviewtune.report.comparisons import recommendation
from reviewtune.report.schema import CORRECT_WHEN
from reviewtune.report.tables import (
    failed_systems,
    fmt,
    pairwise_rows,
    quality_note,
    subsample_statement,
    summary_table,
)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(x: str) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


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
        md_table(header, rows),
        "",
        f"Recommendation: {recommendation(report)}",
        "",
        *[f"Not scored: **{f['name']}** ({f['kind']}, {f['scoring']}): {f['error']}\n" for f in failed_systems(report)],
        f"Quality: point estimate [95% percentile bootstrap interval]. {quality_note(report)} "
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
        lines += [md_table(*pairwise_rows(report)), ""]
    else:
        lines += ["(one system: nothing to compare)", ""]
    lines += ["## Per-class detail", ""]
    for s in report["systems"]:
        lines += [f"### {s['name']} ({s['kind']}, {s['scoring']})", ""]
        for part in detail_tables(report, s):
            lines += [part, ""]
        if task_name == "aspects":
            m = s["metrics"]
            lines += [
                f"Polarity accuracy on {m.get('polarity_n', '?')} correctly detected keywords: "
                f"{fmt(m['polarity_accuracy'])}; keyword-set exact match: {fmt(m.get('keyword_exact_match'))}.",
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


def detail_tables(report: dict, s: dict) -> list[str]:
    """Per-class (or per-keyword) tables, confusion matrix and invalid reasons of one system, as Markdown."""
    m = s["metrics"]
    parts = []
    table = m.get("per_class") or m.get("per_keyword")
    if table:
        header = ["Class" if "per_class" in m else "Keyword", "Precision", "Recall", "F1", "Support"]
        rows = [[k, fmt(v["precision"]), fmt(v["recall"]), fmt(v["f1"]), str(v["support"])] for k, v in table.items()]
        parts.append(md_table(header, rows))
    cm = m.get("confusion_matrix")
    if cm:
        header = ["true \\ predicted", *cm["columns"]]
        rows = [[label, *map(str, row)] for label, row in zip(cm["labels"], cm["matrix"], strict=True)]
        parts.append("Confusion matrix (rows: true, columns: predicted)\n\n" + md_table(header, rows))
    if "n_valid" in m:
        parts.append(f"{m['n_valid']} of {m['n']} predictions are valid numbers.")
    if m.get("invalid_reasons"):
        parts.append("Invalid outputs: " + ", ".join(f"{k}: {v}" for k, v in m["invalid_reasons"].items()))
    return parts
