"""The report's plots as base64 PNGs (matplotlib, Hangul-capable font): confusion matrices, per-class F1,
quality versus throughput."""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reviewtune.evaluation.metrics import (
    LOWER_IS_BETTER,
    PRIMARY_METRIC,
)


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
