"""The built-in baselines fit and predict on tiny constructed data, in the harness's prediction format."""

import itertools

import pytest

from reviewtune.evaluation.baselines import fit_baseline
from reviewtune.evaluation.metrics import task_metrics
from reviewtune.evaluation.prediction_schema import PREDICTION_KEYS
from reviewtune.records import make_record
from reviewtune.tasks import get_task

GOOD = ["정말 좋아요", "아주 좋아요", "너무 좋아요 최고", "좋아요 만족"]
BAD = ["정말 별로예요", "아주 별로예요", "너무 별로 실망", "별로예요 실망"]


def _sentiment_records():
    # 12 positive, 6 negative: the majority class is 1 (긍정) with prior 2/3
    texts = [(t, 1) for t in GOOD * 3] + [(t, 0) for t in BAD[:3] * 2]
    return [make_record(f"s{i}", t, sentiment=y) for i, (t, y) in enumerate(texts)]


def _check_format(preds, n):
    assert len(preds) == n
    for p in preds:
        assert set(PREDICTION_KEYS) <= set(p)
        assert p["invalid"] is False and p["invalid_reason"] is None


def test_majority_sentiment_predicts_prior():
    task = get_task("sentiment")
    base = fit_baseline("majority", task, _sentiment_records())
    preds = base.predict([make_record("t0", "아무 말"), make_record("t1", "정말 별로예요")])
    _check_format(preds, 2)
    assert [p["label"] for p in preds] == [1, 1]
    assert preds[0]["probs"] == pytest.approx([1 / 3, 2 / 3])
    assert base.parameter_count() == 0 and base.kind == "baseline"


def test_tfidf_lr_sentiment_learns_the_words():
    task = get_task("sentiment")
    records = _sentiment_records()
    records.append(make_record("bad", "", sentiment=1))  # empty text: dropped and counted
    records.append(make_record("nolabel", "좋아요"))
    base = fit_baseline("tfidf_lr", task, records)
    assert base.train_examples == 18 and base.dropped == {"empty_text": 1, "missing_label": 1}
    test = [make_record("a", "좋아요 좋아요", sentiment=1), make_record("b", "별로 실망이에요", sentiment=0)]
    preds = base.predict(test)
    _check_format(preds, 2)
    assert [p["label"] for p in preds] == [1, 0]
    for p in preds:
        assert sum(p["probs"]) == pytest.approx(1.0) and len(p["probs"]) == 2
    assert base.parameter_count() > 2  # coefficients per n-gram + intercept
    assert base.serialized_bytes() > 0 and base.train_runtime_s >= 0
    m = task_metrics(task, test, preds, n_resamples=50)
    assert m["accuracy"] == 1.0 and "ece" in m


def test_tfidf_lr_sentiment5_missing_class_gets_zero_probability():
    task = get_task("sentiment5")
    texts = [(t, 4) for t in GOOD * 2] + [(t, 0) for t in BAD * 2] + [("그냥 그래요 보통", 2), ("보통 그냥", 2)]
    base = fit_baseline("tfidf_lr", task, [make_record(str(i), t, sentiment=y) for i, (t, y) in enumerate(texts)])
    preds = base.predict([make_record("x", "너무 좋아요"), make_record("y", "별로예요")])
    assert [p["label"] for p in preds] == [4, 0]
    for p in preds:
        assert len(p["probs"]) == 5 and p["probs"][1] == 0.0 and p["probs"][3] == 0.0
        assert sum(p["probs"]) == pytest.approx(1.0)


def test_single_class_training_falls_back_to_constant():
    task = get_task("sentiment")
    base = fit_baseline("tfidf_lr", task, [make_record(str(i), t, sentiment=1) for i, t in enumerate(GOOD)])
    assert [p["label"] for p in base.predict([make_record("x", "별로예요")])] == [1]


def _aspect_records():
    phrases = {
        ("배송", 1): "배송 빨라요",
        ("배송", -1): "배송 느려요",
        ("가격", 1): "가격 저렴해요",
        ("가격", -2): "가격 너무 비싸요",
    }
    records = []
    for i, ((k1, p1), (k2, p2)) in enumerate(itertools.product(phrases, repeat=2)):
        if k1 == k2:
            continue
        else:
            aspects = [{"keyword": k1, "polarity": p1}, {"keyword": k2, "polarity": p2}]
            text = f"{phrases[(k1, p1)]} 그리고 {phrases[(k2, p2)]}"
        records.append(make_record(f"a{i}", text, aspects=aspects))
    for (k, p), text in phrases.items():  # each phrase alone, three times
        records += [make_record(f"{k}{p}_{j}", text, aspects=[{"keyword": k, "polarity": p}]) for j in range(3)]
    records += [make_record(f"n{i}", t, aspects=[]) for i, t in enumerate(["그냥 그래요", "보통이에요 그냥", "그냥"])]
    return records


def test_tfidf_lr_aspects_detects_keywords_and_polarity():
    task = get_task("aspects", keywords=["가격", "배송", "품질"])  # 품질 never occurs: never predicted
    records = _aspect_records()
    base = fit_baseline("tfidf_lr", task, records)
    test = [
        make_record("x", "가격 저렴해요", aspects=[{"keyword": "가격", "polarity": 1}]),
        make_record("y", "배송 느려요", aspects=[{"keyword": "배송", "polarity": -1}]),
        make_record("z", "그냥 그래요", aspects=[]),
    ]
    preds = base.predict(test)
    _check_format(preds, 3)
    assert [p["aspects"] for p in preds] == [t["aspects"] for t in test]
    m = task_metrics(task, test, preds, n_resamples=50)
    assert m["exact_match"] == 1.0 and m["polarity_accuracy"] == 1.0
    # training-set exact match: a linear model on these separable phrases should get nearly all
    assert task_metrics(task, records, base.predict(records), n_resamples=0)["exact_match"] >= 0.9
    # one review at a time, as the harness times latency: a review with no keyword is no polarity to predict
    assert base.predict([test[2]])[0]["aspects"] == []


def test_majority_aspects_predicts_most_frequent_set():
    task = get_task("aspects", keywords=["가격", "배송"])
    a = [{"keyword": "배송", "polarity": 1}]
    records = [make_record("1", "x", aspects=a), make_record("2", "y", aspects=a), make_record("3", "z", aspects=[])]
    preds = fit_baseline("majority", task, records).predict([make_record("t", "아무거나")])
    assert preds[0]["aspects"] == a and preds[0]["label"] is None


def test_regression_baselines():
    task = get_task("regression")
    records = [make_record(f"g{i}", t, score=5.0) for i, t in enumerate(GOOD * 2)]
    records += [make_record(f"b{i}", t, score=1.0) for i, t in enumerate(BAD * 2)]
    majority = fit_baseline("majority", task, records).predict([make_record("x", "좋아요")])
    assert majority[0]["score"] == pytest.approx(3.0)
    ridge = fit_baseline("tfidf_lr", task, records)
    good, bad = ridge.predict([make_record("x", "좋아요 만족"), make_record("y", "별로 실망")])
    assert good["score"] > 3.0 > bad["score"]


def test_bad_arguments():
    task = get_task("sentiment")
    with pytest.raises(ValueError, match="unknown baseline"):
        fit_baseline("bert", task, _sentiment_records())
    with pytest.raises(ValueError, match="no usable train records"):
        fit_baseline("majority", task, [make_record("1", "text")])
