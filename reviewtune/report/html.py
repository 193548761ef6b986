"""``report.html``: the tables of ``report.md`` plus embedded plots and the disagreement examples with
highlighted words, in one self-contained page."""

from __future__ import annotations

import html
from collections.abc import Sequence

from reviewtune.report.comparisons import recommendation
from reviewtune.report.plots import plot_confusion_matrix, plot_f1_bars, plot_quality_vs_throughput
from reviewtune.report.schema import CORRECT_WHEN
from reviewtune.report.tables import (
    failed_systems,
    fmt,
    pairwise_rows,
    quality_note,
    subsample_statement,
    summary_table,
)

# Which highlighted words are marked (here and in ``reviewtune.analysis.highlights``): those scoring at least this share
# of the top word's score, and none when the top score (a drop in probability) is under MIN_DROP.
SPAN_FRACTION = 0.5


MIN_DROP = 0.01


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
        f"<p class='note'>{esc(quality_note(report)).replace('`', '')}</p>",
        *[f"<p class='failed'>Not scored: <b>{esc(f['name'])}</b> ({esc(f['kind'])}, {esc(f['scoring'])}): "
          f"{esc(f['error'])}</p>" for f in failed_systems(report)],
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
        h, r = pairwise_rows(report)
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
                        [esc(k), fmt(v["precision"]), fmt(v["recall"]), fmt(v["f1"]), str(v["support"])]
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
