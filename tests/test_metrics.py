"""Metric code against values computed by hand (the hand computation is written next to each check)."""

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score

from reviewtune.evaluation.metrics import (
    aspect_metrics,
    bootstrap_ci,
    classification_metrics,
    expected_calibration_error,
    macro_f1,
    mcnemar,
    multilabel_metrics,
    per_example_correct,
    regression_metrics,
    task_metrics,
)
from reviewtune.tasks import get_task

approx = pytest.approx


def test_classification_metrics_by_hand():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, None, 2]  # one invalid output
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    # correct at positions 0, 2, 3, 5 -> 4/6; the invalid one counts wrong
    assert m["n"] == 6
    assert m["accuracy"] == approx(4 / 6)
    assert m["invalid_rate"] == approx(1 / 6)
    # a: predicted once (right) -> P 1, gold twice -> R 1/2, F1 2/3
    # b: predicted 3 times, 2 right -> P 2/3, gold twice both found -> R 1, F1 = 2*(2/3)/(5/3) = 0.8
    # c: predicted once (right) -> P 1, R 1/2 (the other c was invalid), F1 2/3
    assert m["per_class"]["a"] == approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert m["per_class"]["b"] == approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert m["per_class"]["c"] == approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert m["macro_f1"] == approx((2 / 3 + 0.8 + 2 / 3) / 3)
    assert m["weighted_f1"] == approx(m["macro_f1"])  # equal supports
    # micro over real labels: 2 TP / (predicted + gold) = 2*4 / (5 + 6) = 8/11 (the invalid one is in no column)
    assert m["micro_f1"] == approx(8 / 11)
    assert m["confusion_matrix"]["labels"] == ["a", "b", "c"]
    assert m["confusion_matrix"]["columns"] == ["a", "b", "c", "invalid"]
    assert m["confusion_matrix"]["matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1]]
    assert "ece" not in m


def test_classification_without_invalid_has_no_invalid_column_and_micro_equals_accuracy():
    m = classification_metrics([0, 1, 1], [0, 1, 0], ["neg", "pos"])
    assert m["confusion_matrix"]["columns"] == ["neg", "pos"]
    assert m["confusion_matrix"]["matrix"] == [[1, 0], [1, 1]]
    assert m["micro_f1"] == approx(m["accuracy"]) == approx(2 / 3)
    assert m["invalid_rate"] == 0.0


def test_classification_rejects_bad_input():
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 3], [0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="items"):
        classification_metrics([0, 1], [0], ["a", "b"])


def test_ece_by_hand():
    # 4 examples at confidence 0.9 with 3 right: |0.75 - 0.9| = 0.15, weight 4/6
    # 2 examples at confidence 0.6 with 1 right: |0.5 - 0.6| = 0.10, weight 2/6
    probs = [[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 2
    y_true = [0, 0, 0, 1, 1, 0]
    assert expected_calibration_error(probs, y_true) == approx(4 / 6 * 0.15 + 2 / 6 * 0.10)
    # confidence 1.0 falls in the last bin (lo, 1.0]; always right -> perfectly calibrated
    assert expected_calibration_error([[1.0, 0.0], [0.0, 1.0]], [0, 1]) == approx(0.0)
    # through classification_metrics, rows without probabilities are left out
    m = classification_metrics([0, 1, 1], [0, 1, None], ["a", "b"], probs=[[1.0, 0.0], [0.0, 1.0], None])
    assert m["ece"] == approx(0.0)


def test_ece_bins_split_confidences():
    # 0.55 and 0.95 are in different bins of 15: gaps |1 - 0.55| and |0 - 0.95|, each weight 1/2
    probs = [[0.55, 0.45], [0.95, 0.05]]
    assert expected_calibration_error(probs, [0, 1]) == approx(0.5 * 0.45 + 0.5 * 0.95)
    # with one bin both share it: accuracy 1/2, mean confidence 0.75 -> 0.25
    assert expected_calibration_error(probs, [0, 1], n_bins=1) == approx(0.25)


def test_multilabel_metrics_by_hand():
    Y_true = [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]
    Y_pred = [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    m = multilabel_metrics(Y_true, Y_pred, ["x", "y", "z", "w"])
    # TP: (0,x), (1,y); FP: (1,z); FN: (1,x) -> micro P = R = F1 = 2/3
    assert (m["micro_precision"], m["micro_recall"], m["micro_f1"]) == approx((2 / 3, 2 / 3, 2 / 3))
    # x: P 1, R 1/2, F1 2/3; y: 1, 1, 1; z: 0, 0, 0; w never occurs -> left out of the macro average
    assert m["per_keyword"]["x"] == approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert m["per_keyword"]["z"] == approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0})
    assert m["macro_keywords"] == 3
    assert m["macro_precision"] == approx((1 + 1 + 0) / 3)
    assert m["macro_recall"] == approx((0.5 + 1 + 0) / 3)
    assert m["macro_f1"] == approx((2 / 3 + 1 + 0) / 3)
    assert m["exact_match"] == approx(2 / 3)  # rows 0 and 2


def test_aspect_metrics_by_hand():
    kws = ["가격", "배송", "품질"]
    true = [
        [{"keyword": "가격", "polarity": 1}, {"keyword": "배송", "polarity": -1}],
        [{"keyword": "품질", "polarity": 2}],
        [],
        [{"keyword": "배송", "polarity": 0}],
    ]
    pred = [
        [{"keyword": "가격", "polarity": 1}, {"keyword": "배송", "polarity": 1}],
        [{"keyword": "품질", "polarity": 2}],
        [],
        None,  # invalid output: detects nothing, never an exact match
    ]
    m = aspect_metrics(true, pred, kws)
    # detection: TP 가격, 배송 (ex 0), 품질 (ex 1); FN 배송 (ex 3) -> P 1, R 3/4, F1 = 2*3/(3+4) = 6/7
    assert (m["micro_precision"], m["micro_recall"], m["micro_f1"]) == approx((1.0, 0.75, 6 / 7))
    assert m["per_keyword"]["배송"] == approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    # polarity on the 3 detected pairs: 가격 1=1 yes, 배송 -1 vs 1 no, 품질 2=2 yes -> 2/3
    assert m["polarity_n"] == 3
    assert m["polarity_accuracy"] == approx(2 / 3)
    # exact match: ex 1 and ex 2 (empty = empty) -> 2/4; keyword sets: ex 0, 1, 2 -> 3/4
    assert m["exact_match"] == approx(0.5)
    assert m["keyword_exact_match"] == approx(0.75)
    assert m["invalid_rate"] == approx(0.25)
    assert m["n"] == 4


def test_aspect_metrics_polarity_undefined_without_detections():
    m = aspect_metrics([[{"keyword": "가격", "polarity": 1}]], [[]], ["가격"])
    assert m["polarity_accuracy"] is None and m["polarity_n"] == 0
    assert m["micro_f1"] == 0.0 and m["exact_match"] == 0.0


def test_regression_metrics_by_hand():
    # valid pairs (1, 1.5), (2, 2), (4, 3): errors 0.5, 0, 1 -> MAE 0.5, MSE (0.25 + 0 + 1)/3
    # the predictions are 0.5 * x + 1 exactly -> Pearson = Spearman = 1
    m = regression_metrics([1, 2, 3, 4], [1.5, 2, None, 3])
    assert m["n"] == 4 and m["n_valid"] == 3
    assert m["invalid_rate"] == approx(0.25)
    assert m["mae"] == approx(0.5)
    assert m["mse"] == approx(1.25 / 3)
    assert m["pearson"] == approx(1.0)
    assert m["spearman"] == approx(1.0)
    # a constant prediction has no correlation: None, never NaN
    const = regression_metrics([1, 2, 3], [2, 2, 2])
    assert const["pearson"] is None and const["spearman"] is None
    assert const["mae"] == approx(2 / 3)


def test_per_example_correct_every_task():
    assert per_example_correct("sentiment", [0, 1, 1], [0, 0, None]) == [True, False, False]
    a = [{"keyword": "가격", "polarity": 1}]
    assert per_example_correct("aspects", [a, a, []], [a, [], None]) == [True, False, False]
    assert per_example_correct("regression", [3.0, 3.0, 3.0], [3.4, 3.6, None]) == [True, False, False]
    with pytest.raises(ValueError, match="unknown task"):
        per_example_correct("nope", [1], [1])


def test_mcnemar_exact_on_known_table():
    # b = 2 (A right, B wrong), c = 8: exact two-sided p = 2 * P(X <= 2), X ~ Bin(10, 1/2)
    # = 2 * (1 + 10 + 45) / 1024 = 0.109375
    a = [True] * 2 + [False] * 8 + [True] * 5 + [False] * 3
    b = [False] * 2 + [True] * 8 + [True] * 5 + [False] * 3
    r = mcnemar(a, b)
    assert (r["b"], r["c"], r["method"]) == (2, 8, "exact_binomial")
    assert r["p_value"] == approx(112 / 1024)
    assert r["statistic"] == 2.0


def test_mcnemar_chi2_on_known_table():
    # b = 30, c = 10 (b + c >= 25): statistic (|30 - 10| - 1)^2 / 40 = 9.025,
    # p = P(chi2_1 > 9.025) = erfc(sqrt(9.025 / 2))
    a = [True] * 30 + [False] * 10 + [True] * 50
    b = [False] * 30 + [True] * 10 + [True] * 50
    r = mcnemar(a, b)
    assert (r["b"], r["c"], r["method"]) == (30, 10, "chi2_continuity")
    assert r["statistic"] == approx(9.025)
    assert r["p_value"] == approx(math.erfc(math.sqrt(9.025 / 2)))
    assert set(r) == {"b", "c", "statistic", "p_value", "method"}


def test_mcnemar_identical_systems():
    r = mcnemar([True, False, True], [True, False, True])
    assert (r["b"], r["c"], r["p_value"]) == (0, 0, 1.0)


def test_bootstrap_ci_accuracy_contains_point_and_is_seeded():
    rng = np.random.default_rng(1)
    correct = (rng.random(200) < 0.7).tolist()
    point = float(np.mean(correct))
    lo, hi = bootstrap_ci(correct, seed=3)
    assert lo < point < hi
    assert hi - lo < 0.2  # ~ 4 standard errors sqrt(0.7*0.3/200) = 0.032 each side
    assert bootstrap_ci(correct, seed=3) == (lo, hi)
    assert bootstrap_ci(correct, seed=4) != (lo, hi)
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)  # no variation, no interval


def test_bootstrap_ci_macro_f1_resamples_pairs():
    rng = np.random.default_rng(2)
    y_true = rng.integers(0, 3, 300).tolist()
    y_pred = [t if rng.random() < 0.6 else (None if rng.random() < 0.2 else int(rng.integers(0, 3))) for t in y_true]
    point = macro_f1(y_true, y_pred, 3)
    lo, hi = bootstrap_ci(lambda t, p: macro_f1(t, p, 3), y_true, y_pred, n_resamples=300, seed=0)
    assert lo < point < hi
    assert bootstrap_ci(lambda t, p: macro_f1(t, p, 3), y_true, y_pred, n_resamples=300, seed=0) == (lo, hi)
    with pytest.raises(ValueError, match="length"):
        bootstrap_ci(lambda t, p: 0.0, [1, 2], [1])


def test_macro_f1_matches_sklearn():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 500)
    y_pred = [None if rng.random() < 0.1 else int(rng.integers(0, 5)) for _ in y_true]
    y_pred[:50] = y_true[:50].tolist()
    expected = f1_score(
        y_true, [-1 if p is None else p for p in y_pred], labels=range(5), average="macro", zero_division=0
    )
    assert macro_f1(y_true.tolist(), y_pred, 5) == approx(expected)
    assert classification_metrics(y_true.tolist(), y_pred, list("abcde"))["macro_f1"] == approx(expected)


def _pred(i, **kw):
    return {"id": str(i), "label": None, "probs": None, "aspects": None, "score": None, "invalid": False} | kw


def test_task_metrics_dispatch_ci_and_invalid_reasons():
    task = get_task("sentiment")
    records = [{"id": str(i), "sentiment": i % 2} for i in range(40)]
    preds = [_pred(i, label=i % 2, probs=[0.2, 0.8] if i % 2 else [0.8, 0.2]) for i in range(30)]
    preds += [_pred(i, invalid=True, invalid_reason="unknown_label") for i in range(30, 40)]
    m = task_metrics(task, records, preds, n_resamples=200)
    assert m["accuracy"] == approx(0.75) and m["invalid_rate"] == approx(0.25)
    assert m["invalid_reasons"] == {"unknown_label": 10}
    assert m["accuracy_ci"][0] < 0.75 < m["accuracy_ci"][1]
    assert m["macro_f1_ci"][0] <= m["macro_f1"] <= m["macro_f1_ci"][1]
    assert m["ece"] == approx(0.2)  # every valid-prob row: confidence 0.8, always right
    assert m["primary_metric"] == "accuracy"
    with pytest.raises(ValueError, match="order differs"):
        task_metrics(task, records, list(reversed(preds)))


def test_task_metrics_aspects_and_regression():
    a = [{"keyword": "배송", "polarity": 1}]
    b = [{"keyword": "배송", "polarity": -1}]
    task = get_task("aspects")
    records = [{"id": str(i), "aspects": a} for i in range(20)]
    preds = [_pred(i, aspects=a if i < 15 else b) for i in range(20)]
    m = task_metrics(task, records, preds, n_resamples=100)
    assert m["exact_match"] == approx(0.75) and m["micro_f1"] == approx(1.0) and m["micro_f1_ci"] == [1.0, 1.0]
    assert m["exact_match_ci"][0] < 0.75 < m["exact_match_ci"][1]
    task = get_task("regression")
    records = [{"id": str(i), "score": float(i % 5)} for i in range(20)]
    preds = [_pred(i, score=float(i % 5) + (0.5 if i % 2 else 0.0)) for i in range(20)]
    m = task_metrics(task, records, preds, n_resamples=100)
    assert m["mae"] == approx(0.25)
    assert m["mae_ci"][0] < 0.25 < m["mae_ci"][1]


def test_macro_f1_averages_over_classes_present_in_gold_or_predictions():
    """One convention for single-label and keyword macro-F1: a class absent from both says nothing."""
    m = classification_metrics([0, 0, 1, 1], [0, 0, 1, 1], ["a", "b", "c"])  # "c" never occurs
    assert m["macro_f1"] == 1.0 and m["macro_classes"] == 2
    assert macro_f1([0, 0, 1, 1], [0, 0, 1, 1], 3) == 1.0
    m = classification_metrics([0, 0, 1, 1], [0, 2, 1, 1], ["a", "b", "c"])  # a wrong "c" counts: F1 0 for c
    assert m["macro_f1"] == approx((2 / 3 + 1 + 0) / 3) and m["macro_classes"] == 3
    assert macro_f1([0, 0, 1, 1], [0, 2, 1, 1], 3) == approx(m["macro_f1"])
