"""All metrics, one code path for the recipes and the harness (scikit-learn / scipy, never ``evaluate``).

Predictions may be invalid (unparseable model output): a ``None`` prediction counts as wrong and is
reported as ``invalid_rate``. Every function returns plain JSON-serialisable values (``None`` where a
metric is undefined, never NaN).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
)

# One prediction per record, the same for every system (model runs and baselines).
INVALID = "invalid"  # name of the extra confusion-matrix column for invalid predictions
_INVALID_ID = -1
MCNEMAR_EXACT_BELOW = 25  # b + c below this: exact binomial test, else chi-square with continuity correction
# The metric each task's paired (McNemar) test and headline ranking use, and the per-example "correct".
PRIMARY_METRIC = {"sentiment": "accuracy", "sentiment5": "accuracy", "aspects": "exact_match", "regression": "mae"}
LOWER_IS_BETTER = frozenset({"mse", "mae", "ece", "invalid_rate"})
REGRESSION_TOLERANCE = 0.5  # a regression prediction is "correct" (for McNemar) within this distance


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _prf_table(y_true, y_pred, labels, names) -> dict[str, dict[str, float | int]]:
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(names)
    }


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int | None], label_names: Sequence[str], probs=None
) -> dict[str, Any]:
    """Single-label metrics; ``None`` predictions are invalid and count as wrong.

    Averages are over the real labels only: an invalid prediction lowers the recall of its true class
    but no class's precision, so ``micro_f1`` equals ``accuracy`` only when nothing is invalid.
    ``probs`` (``[n, K]``, rows may be ``None``) adds ``ece`` over the rows that have probabilities.
    """
    n = len(y_true)
    if len(y_pred) != n:
        raise ValueError(f"y_true has {n} items but y_pred has {len(y_pred)}")
    if n == 0:
        raise ValueError("no examples to score")
    labels = list(range(len(label_names)))
    yt = np.asarray(y_true, dtype=int)
    yp = _label_array(y_pred)
    if not set(yt.tolist()) <= set(labels):
        raise ValueError(f"y_true has labels outside 0..{len(labels) - 1}: {sorted(set(yt.tolist()) - set(labels))}")
    if not set(yp.tolist()) <= set(labels) | {_INVALID_ID}:
        raise ValueError(f"y_pred has labels outside 0..{len(labels) - 1}: {sorted(set(yp.tolist()) - set(labels))}")
    n_invalid = int((yp == _INVALID_ID).sum())
    averages = {}
    # Macro-F1 over the classes present in the gold labels or the predictions (the keyword tables' convention):
    # a class absent from both says nothing about the system.
    present = sorted((set(yt.tolist()) | set(yp.tolist())) - {_INVALID_ID})
    for avg in ("macro", "micro", "weighted"):
        average_over = present if avg == "macro" else labels
        _, _, f, _ = precision_recall_fscore_support(yt, yp, labels=average_over, average=avg, zero_division=0)
        averages[f"{avg}_f1"] = float(f)
    averages["macro_classes"] = len(present)
    cm_labels = labels + ([_INVALID_ID] if n_invalid else [])
    cm = confusion_matrix(yt, yp, labels=cm_labels)[: len(labels)]  # no true row is ever invalid
    out: dict[str, Any] = {
        "n": n,
        "accuracy": float(accuracy_score(yt, yp)),
        **averages,
        "invalid_rate": n_invalid / n,
        "per_class": _prf_table(yt, yp, labels, list(label_names)),
        "confusion_matrix": {
            "labels": list(label_names),
            "columns": list(label_names) + ([INVALID] if n_invalid else []),
            "matrix": cm.tolist(),
        },
    }
    if probs is not None:
        if len(probs) != n:
            raise ValueError(f"probs has {len(probs)} rows for {n} examples")
        keep = [i for i, p in enumerate(probs) if p is not None]
        out["ece"] = (
            expected_calibration_error(np.asarray([probs[i] for i in keep], dtype=float), yt[keep]) if keep else None
        )
    return out


def multilabel_metrics(Y_true, Y_pred, keywords: Sequence[str]) -> dict[str, Any]:
    """Multi-label (keyword detection) metrics from 0/1 arrays ``[n, K]``."""
    yt, yp = np.asarray(Y_true, dtype=int), np.asarray(Y_pred, dtype=int)
    if yt.shape != yp.shape or yt.ndim != 2 or yt.shape[1] != len(keywords):
        raise ValueError(f"Y_true {yt.shape} and Y_pred {yp.shape} must both be [n, {len(keywords)}]")
    if yt.shape[0] == 0:
        raise ValueError("no examples to score")
    out: dict[str, Any] = {"n": int(yt.shape[0])}
    # Macro averages over the keywords that occur in gold or predictions: a keyword absent from both
    # says nothing about the system, and counting it as 0 would tie macro-F1 to the keyword-list length.
    seen = [j for j in range(yt.shape[1]) if yt[:, j].any() or yp[:, j].any()]
    for avg, labels in (("micro", None), ("macro", seen)):
        if labels == []:
            p = r = f = 0.0
        else:
            p, r, f, _ = precision_recall_fscore_support(yt, yp, labels=labels, average=avg, zero_division=0)
        out.update({f"{avg}_precision": float(p), f"{avg}_recall": float(r), f"{avg}_f1": float(f)})
    out["macro_keywords"] = len(seen)
    out["exact_match"] = float(accuracy_score(yt, yp))  # subset accuracy: every keyword right
    out["per_keyword"] = _prf_table(yt, yp, list(range(len(keywords))), list(keywords))
    return out


def _aspect_map(aspects: list[dict] | None) -> dict[str, int]:
    return {a["keyword"]: int(a["polarity"]) for a in aspects or []}


def aspect_metrics(
    true_aspects: Sequence[list[dict]], pred_aspects: Sequence[list[dict] | None], keywords: Sequence[str]
) -> dict[str, Any]:
    """Aspect metrics: keyword detection (as :func:`multilabel_metrics`), polarity, exact match.

    An invalid prediction (``None``) detects no keyword and is never an exact match. Keys:
    ``micro_*``/``macro_*``/``per_keyword`` for detection, ``keyword_exact_match`` (keyword sets equal),
    ``polarity_accuracy`` over keywords both in gold and prediction (``None`` if there are none) with
    ``polarity_n`` such pairs, and ``exact_match`` of the whole set including polarities.
    """
    n = len(true_aspects)
    if len(pred_aspects) != n:
        raise ValueError(f"true_aspects has {n} items but pred_aspects has {len(pred_aspects)}")
    col = {k: j for j, k in enumerate(keywords)}
    Y_true = np.zeros((n, len(keywords)), dtype=int)
    Y_pred = np.zeros((n, len(keywords)), dtype=int)
    pol_hits = pol_n = exact = 0
    for i, (t, p) in enumerate(zip(true_aspects, pred_aspects, strict=True)):
        tm, pm = _aspect_map(t), _aspect_map(p)
        for k in tm:
            Y_true[i, col[k]] = 1
        for k in pm:
            Y_pred[i, col[k]] = 1
        for k in tm.keys() & pm.keys():
            pol_n += 1
            pol_hits += tm[k] == pm[k]
        exact += p is not None and tm == pm
    out = multilabel_metrics(Y_true, Y_pred, keywords)
    out["keyword_exact_match"] = out.pop("exact_match")
    n_invalid = sum(p is None for p in pred_aspects)
    out.update(
        {
            "invalid_rate": n_invalid / n,
            "polarity_accuracy": pol_hits / pol_n if pol_n else None,
            "polarity_n": pol_n,
            "exact_match": exact / n,
        }
    )
    return out


def regression_metrics(
    y_true: Sequence[float], y_pred: Sequence[float | None], invalid_as: float | None = None
) -> dict[str, Any]:
    """Pearson, Spearman, MSE, MAE, and ``invalid_rate`` for the ``None`` predictions.

    With ``invalid_as`` (the harness passes the training records' mean score) an invalid prediction is scored as
    that value, so the error metrics charge it; ``mae_valid`` / ``mse_valid`` are over the valid ones only.
    Without it every metric is over the ``n_valid`` valid predictions.
    """
    n = len(y_true)
    if len(y_pred) != n:
        raise ValueError(f"y_true has {n} items but y_pred has {len(y_pred)}")
    if n == 0:
        raise ValueError("no examples to score")
    valid = [i for i, p in enumerate(y_pred) if p is not None]
    out: dict[str, Any] = {"n": n, "n_valid": len(valid), "invalid_rate": (n - len(valid)) / n}
    if valid:
        yt_valid = np.asarray([y_true[i] for i in valid], dtype=float)
        yp_valid = np.asarray([y_pred[i] for i in valid], dtype=float)
        out["mae_valid"] = float(mean_absolute_error(yt_valid, yp_valid))
        out["mse_valid"] = float(mean_squared_error(yt_valid, yp_valid))
    if invalid_as is not None:
        out["invalid_scored_as"] = float(invalid_as)
        keep = list(range(n))
        filled = [invalid_as if p is None else p for p in y_pred]
    else:
        keep, filled = valid, y_pred
    yt = np.asarray([y_true[i] for i in keep], dtype=float)
    yp = np.asarray([filled[i] for i in keep], dtype=float)
    if len(keep) >= 2 and np.ptp(yt) > 0 and np.ptp(yp) > 0:
        out["pearson"] = _finite(stats.pearsonr(yt, yp).statistic)
        out["spearman"] = _finite(stats.spearmanr(yt, yp).statistic)
    else:  # correlation is undefined for fewer than 2 points or a constant series
        out["pearson"] = out["spearman"] = None
    out["mse"] = float(mean_squared_error(yt, yp)) if keep else None
    out["mae"] = float(mean_absolute_error(yt, yp)) if keep else None
    return out


def per_example_correct(
    task_name: str, true: Sequence[Any], pred: Sequence[Any], tolerance: float = REGRESSION_TOLERANCE
) -> list[bool]:
    """Per-example correctness for bootstrap / McNemar: label equal, aspect set equal (incl. polarities),
    or, for regression, ``|pred - true| <= tolerance``. ``None`` predictions are wrong."""
    if len(true) != len(pred):
        raise ValueError(f"true has {len(true)} items but pred has {len(pred)}")
    if task_name in ("sentiment", "sentiment5"):
        return [p is not None and int(p) == int(t) for t, p in zip(true, pred, strict=True)]
    if task_name == "aspects":
        return [p is not None and _aspect_map(t) == _aspect_map(p) for t, p in zip(true, pred, strict=True)]
    if task_name == "regression":
        return [p is not None and abs(float(p) - float(t)) <= tolerance for t, p in zip(true, pred, strict=True)]
    raise ValueError(f"unknown task {task_name!r}")


def _as_1d_array(values: Sequence[Any]) -> np.ndarray:
    """Numeric 1-D array where possible, else a 1-D object array (holding ``None`` or lists)."""
    try:
        arr = np.asarray(values)
        if arr.ndim == 1 and arr.dtype != object:
            return arr
    except ValueError:  # ragged lists
        pass
    arr = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        arr[i] = v
    return arr


def bootstrap_ci(
    values_or_fn: Sequence[float] | Callable[..., float],
    *data: Sequence[Any],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval (``scipy.stats.bootstrap``), seeded.

    - ``bootstrap_ci(correct)``: CI of the mean of per-example values (accuracy from correctness).
    - ``bootstrap_ci(fn, y_true, y_pred)``: CI of ``fn(y_true[idx], y_pred[idx])``, resampling the
      examples of all arrays together (e.g. macro-F1). Arrays may hold ``None`` (object dtype).
    """
    if callable(values_or_fn):
        fn, arrays = values_or_fn, [_as_1d_array(d) for d in data]
        if not arrays:
            raise ValueError("bootstrap_ci(fn, ...) needs at least one data array")
    else:
        if data:
            raise ValueError("pass either values, or a function followed by its data arrays")
        arrays = [np.asarray(values_or_fn, dtype=float)]
        fn = None
    n = len(arrays[0])
    if n == 0:
        raise ValueError("no examples to bootstrap")
    if any(len(a) != n for a in arrays):
        raise ValueError(f"data arrays differ in length: {[len(a) for a in arrays]}")
    if fn is None:
        values = arrays[0]
        if np.all(values == values[0]):  # every resample has the same mean
            return float(values[0]), float(values[0])

        def statistic(idx, axis=-1):
            return values[idx].mean(axis=axis)

        vectorized = True
    else:

        def statistic(idx):
            return float(fn(*(a[idx.astype(int)] for a in arrays)))

        vectorized = False
    # Resample example indices (not values): one draw serves every paired array and object arrays.
    res = stats.bootstrap(
        (np.arange(n),),
        statistic,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=vectorized,
        rng=np.random.default_rng(seed),
    )
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):  # degenerate resamples (constant statistic)
        point = float(statistic(np.arange(n)))
        return point, point
    return lo, hi


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, Any]:
    """McNemar's paired test on per-example correctness of two systems on the same examples.

    ``b``: A right, B wrong; ``c``: A wrong, B right. Exact two-sided binomial test when ``b + c < 25``
    (statistic ``min(b, c)``), else chi-square with continuity correction ``(|b - c| - 1)^2 / (b + c)``.
    """
    a, b_ = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"correct_a has {a.shape[0]} items but correct_b has {b_.shape[0]}")
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    if b + c < MCNEMAR_EXACT_BELOW:
        p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
        return {"b": b, "c": c, "statistic": float(min(b, c)), "p_value": min(p, 1.0), "method": "exact_binomial"}
    statistic = (abs(b - c) - 1) ** 2 / (b + c)
    return {
        "b": b,
        "c": c,
        "statistic": float(statistic),
        "p_value": float(stats.chi2.sf(statistic, df=1)),
        "method": "chi2_continuity",
    }


def expected_calibration_error(probs, y_true: Sequence[int], n_bins: int = 15) -> float:
    """ECE of the top-label confidence over ``n_bins`` equal-width bins ``(lo, hi]`` (Guo et al., 2017).

    Written here because scikit-learn has reliability curves (``calibration_curve``) but no ECE.
    """
    p = np.asarray(probs, dtype=float)
    yt = np.asarray(y_true, dtype=int)
    if p.ndim != 2 or p.shape[0] != yt.shape[0] or p.shape[0] == 0:
        raise ValueError(f"probs must be [n, K] with n = len(y_true) > 0, got {p.shape} for {yt.shape[0]} labels")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == yt).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], conf, side="left")  # bin k holds (edges[k], edges[k+1]]
    ece = 0.0
    for k in range(n_bins):
        in_bin = bins == k
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def _label_array(y_pred: Sequence[int | None]) -> np.ndarray:
    """Predicted labels as ints, ``-1`` for invalid (``None``)."""
    if isinstance(y_pred, np.ndarray) and y_pred.dtype.kind in "iu":
        return y_pred
    return np.asarray([_INVALID_ID if p is None else p for p in y_pred], dtype=int)


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int | None], num_labels: int) -> float:
    """Macro-F1 over the labels of ``0..num_labels-1`` present in gold or predictions (``None`` = invalid), the
    statistic for bootstrap CIs.

    Same value as scikit-learn's ``f1_score(average="macro", labels=<present>, zero_division=0)`` (checked in
    the tests), computed from counts: sklearn's input validation costs milliseconds per call, which
    1000 resamples per system multiply into most of a report's run time.
    """
    yt = np.asarray(y_true, dtype=int)
    yp = _label_array(y_pred)
    tp = np.bincount(yt[yt == yp], minlength=num_labels)[:num_labels]
    n_true = np.bincount(yt, minlength=num_labels)[:num_labels]
    n_pred = np.bincount(yp[yp >= 0], minlength=num_labels)[:num_labels]
    denom = n_true + n_pred
    f1 = np.divide(2 * tp, denom, out=np.zeros(num_labels), where=denom > 0)  # F1 = 2TP / (2TP + FP + FN)
    present = denom > 0  # in gold or predictions
    return float(f1[present].mean()) if present.any() else 0.0


def _micro_f1_counts(tp: np.ndarray, n_gold: np.ndarray, n_pred: np.ndarray) -> float:
    denom = int(n_gold.sum() + n_pred.sum())
    return 2 * float(tp.sum()) / denom if denom else 0.0


def gold_values(task_name: str, records: Sequence[dict]) -> list[Any]:
    """The gold target of each record for ``task_name`` (label, aspect list or score)."""
    key = {"sentiment": "sentiment", "sentiment5": "sentiment", "aspects": "aspects", "regression": "score"}
    if task_name not in key:
        raise ValueError(f"unknown task {task_name!r}")
    return [r[key[task_name]] for r in records]


def predicted_values(task_name: str, predictions: Sequence[dict]) -> list[Any]:
    """The predicted value of each prediction dict (``None`` when invalid)."""
    key = {"sentiment": "label", "sentiment5": "label", "aspects": "aspects", "regression": "score"}
    if task_name not in key:
        raise ValueError(f"unknown task {task_name!r}")
    return [None if p.get("invalid") else p.get(key[task_name]) for p in predictions]


def task_metrics(
    task,
    records: Sequence[dict],
    predictions: Sequence[dict],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    invalid_score: float | None = None,
) -> dict[str, Any]:
    """Every metric of ``task`` (a ``TaskSpec``) for prediction dicts aligned with ``records``, plus 95% CIs.

    Prediction dicts: ``{"id", "label", "probs", "aspects", "score", "invalid", "invalid_reason"}``.
    Adds ``<metric>_ci: [low, high]`` for the headline metrics (``n_resamples=0`` skips them),
    ``invalid_reasons`` (reason -> count), and ``primary_metric``. Invalid predictions are wrong for the
    classification metrics; for regression they are scored as ``invalid_score`` when it is given.
    """
    if len(records) != len(predictions):
        raise ValueError(f"{len(records)} records but {len(predictions)} predictions")
    for i, (r, p) in enumerate(zip(records, predictions, strict=True)):
        if str(r["id"]) != str(p["id"]):
            raise ValueError(f"prediction {i} has id {p['id']!r} but record {i} has id {r['id']!r}: order differs")
    true, pred = gold_values(task.name, records), predicted_values(task.name, predictions)
    # Headline metrics with a 95% CI: per-example values (CI of their mean) or a statistic of (true, pred).
    ci: dict[str, list[float] | Callable[..., float]] = {}
    ci_data: dict[str, tuple] = {}
    if task.name in ("sentiment", "sentiment5"):
        probs = [p.get("probs") for p in predictions]
        out = classification_metrics(true, pred, task.label_names, probs if any(probs) else None)
        k = len(task.label_names)
        ci = {"accuracy": per_example_correct(task.name, true, pred), "macro_f1": lambda t, q: macro_f1(t, q, k)}
        ci_data = {"macro_f1": (np.asarray(true, dtype=int), _label_array(pred))}  # int arrays: fast resampling
    elif task.name == "aspects":
        out = aspect_metrics(true, pred, task.keywords)
        # Micro-F1 = 2 sum(TP) / (sum(gold) + sum(predicted)): resample per-example keyword counts.
        tp, n_gold, n_pred = (
            np.array([len(_aspect_map(t).keys() & _aspect_map(q).keys()) for t, q in zip(true, pred, strict=True)]),
            np.array([len(_aspect_map(t)) for t in true]),
            np.array([len(_aspect_map(q)) for q in pred]),
        )
        ci = {"exact_match": per_example_correct(task.name, true, pred), "micro_f1": _micro_f1_counts}
        ci_data = {"micro_f1": (tp, n_gold, n_pred)}
    elif task.name == "regression":
        out = regression_metrics(true, pred, invalid_as=invalid_score)
        filled = pred if invalid_score is None else [invalid_score if q is None else q for q in pred]
        abs_err = [abs(float(q) - float(t)) for t, q in zip(true, filled, strict=True) if q is not None]
        ci = {"mae": abs_err} if abs_err else {}
    else:
        raise ValueError(f"unknown task {task.name!r}")
    for name, values_or_fn in ci.items() if n_resamples else ():
        data = ci_data.get(name, (true, pred)) if callable(values_or_fn) else ()
        out[f"{name}_ci"] = list(bootstrap_ci(values_or_fn, *data, n_resamples=n_resamples, seed=seed))
    reasons: dict[str, int] = {}
    for p in predictions:
        if p.get("invalid"):
            reason = p.get("invalid_reason") or "unknown"
            reasons[reason] = reasons.get(reason, 0) + 1
    out["invalid_reasons"] = reasons
    out["shortened_inputs"] = sum(bool(p.get("shortened")) for p in predictions)  # reviews cut to the input limit
    out["primary_metric"] = PRIMARY_METRIC[task.name]
    return out
