"""Systems compared with each other: paired McNemar tests, the examples they disagree on, the recommendation."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from reviewtune.evaluation.metrics import (
    LOWER_IS_BETTER,
    PRIMARY_METRIC,
    gold_values,
    mcnemar,
    per_example_correct,
    predicted_values,
)
from reviewtune.report.schema import ALPHA, CORRECT_WHEN, INVALID_CHARGE, MAX_DISAGREEMENTS
from reviewtune.tasks import EMPTY_ASPECTS_ANSWER, TaskSpec


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


def recommendation(report: dict) -> str:
    """One sentence from the numbers: the best system on the primary metric (invalid outputs charged: wrong for a
    label, no keyword for aspects, the training mean for a score), its invalid share, and whether the paired test
    finds its lead over the next system significant in its favour."""
    task_name = report["task"]["name"]
    metric = PRIMARY_METRIC[task_name]
    scored = [s for s in report["systems"] if s["metrics"].get(metric) is not None]
    if not scored:
        return f"No system has a {metric} value; nothing to recommend."
    ranked = sorted(scored, key=lambda s: s["metrics"][metric], reverse=metric not in LOWER_IS_BETTER)
    best = ranked[0]
    invalid = best["metrics"].get("invalid_rate") or 0.0
    text = (
        f"**{best['name']}** has the best {metric} ({best['metrics'][metric]:.3f}; {invalid:.1%} invalid outputs, "
        f"{INVALID_CHARGE[task_name]})"
    )
    if len(ranked) == 1:
        return text + "."
    second = ranked[1]
    test = next(
        (p for p in report["pairwise"] if {p["system_a"], p["system_b"]} == {best["name"], second["name"]}), None
    )
    text += f"; the next is {second['name']} ({second['metrics'][metric]:.3f})"
    if test is None:
        return text + "."
    # b: system_a right where system_b is wrong; c: the reverse.
    only_best, only_second = (test["b"], test["c"]) if test["system_a"] == best["name"] else (test["c"], test["b"])
    if test["significant"] and only_best > only_second:
        return text + (
            f", and the difference is significant (McNemar p = {test['p_value']:.3g} < {ALPHA}; right where the "
            f"other is wrong: {only_best} vs {only_second} examples)."
        )
    if test["significant"]:
        return text + (
            f", but the paired test favours {second['name']} (right where {best['name']} is wrong on {only_second} "
            f"examples, the reverse on {only_best}; McNemar p = {test['p_value']:.3g}, correct when "
            f"{CORRECT_WHEN[task_name]}): no significant lead."
        )
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
