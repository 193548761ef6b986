"""The two built-in baselines every comparison includes: majority class and TF-IDF + logistic regression.

``fit_baseline(name, task, train_records)`` trains on the same train records as the models and returns a
:class:`Baseline` whose ``predict(records)`` gives the harness's prediction dicts
(:mod:`reviewtune.evaluation.prediction_schema`, plus ``raw``).

- ``majority``: scikit-learn's ``DummyClassifier(strategy="prior")`` (predicts the most frequent label,
  probabilities = the training label frequencies) for ``sentiment``/``sentiment5``; the most frequent
  whole aspect set for ``aspects``; ``DummyRegressor`` (training mean) for ``regression``.
- ``tfidf_lr``: character n-grams (``char_wb`` 1-3, ``min_df=2``, sublinear tf) + ``LogisticRegression(C=2)``;
  for ``aspects``, one-vs-rest keyword detection plus a second model on ``keyword_input(review, keyword)``
  pairs for the polarity of each detected keyword; for ``regression``, the same features + ``Ridge``.
"""

from __future__ import annotations

import collections
import logging
import pickle
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline, make_pipeline

from reviewtune.evaluation.prediction_schema import new_prediction
from reviewtune.prompts import keyword_input
from reviewtune.records import keep_usable, sort_aspects
from reviewtune.tasks import TaskSpec

logger = logging.getLogger(__name__)

BASELINES = ("majority", "tfidf_lr")
TFIDF_PARAMS = dict(analyzer="char_wb", ngram_range=(1, 3), min_df=2, sublinear_tf=True)
LR_C = 2.0


def _tfidf() -> TfidfVectorizer:
    return TfidfVectorizer(**TFIDF_PARAMS)


def _logreg(seed: int) -> LogisticRegression:
    return LogisticRegression(C=LR_C, max_iter=1000, random_state=seed)


def _label_model(y: list[int], seed: int):
    """TF-IDF + logistic regression, or a constant model when training has a single class (LR cannot fit)."""
    if len(set(y)) < 2:
        logger.warning("only one class (%s) in the training labels: the TF-IDF baseline predicts it always", y[0])
        return DummyClassifier(strategy="prior")
    return make_pipeline(_tfidf(), _logreg(seed))


@dataclass
class Baseline:
    """A fitted baseline: ``predict(records)`` -> prediction dicts, plus what the cost table reports."""

    name: str
    task: TaskSpec
    models: dict[str, Any]  # "label" | "keywords" + "polarity" | "score" | "aspects" (majority set)
    train_examples: int
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count of unusable train records
    train_runtime_s: float = 0.0
    kind: str = "baseline"

    def predict(self, records: list[dict]) -> list[dict]:
        texts = [r["text"] for r in records]
        ids = [r["id"] for r in records]
        if not records:
            return []
        if self.task.name in ("sentiment", "sentiment5"):
            return self._predict_labels(ids, texts)
        if self.task.name == "aspects":
            return self._predict_aspects(ids, texts)
        scores = self.models["score"].predict(texts)
        return [new_prediction(i, score=float(s)) for i, s in zip(ids, scores, strict=True)]

    def _predict_labels(self, ids: list, texts: list[str]) -> list[dict]:
        model = self.models["label"]
        proba = model.predict_proba(texts)
        # Classes missing from the training data get probability 0: rows always span every label.
        full = np.zeros((len(texts), len(self.task.label_names)))
        full[:, model.classes_.astype(int)] = proba
        return [
            new_prediction(i, label=int(p.argmax()), probs=[float(x) for x in p])
            for i, p in zip(ids, full, strict=True)
        ]

    def _predict_aspects(self, ids: list, texts: list[str]) -> list[dict]:
        if self.name == "majority":
            aspects = self.models["aspects"]
            return [new_prediction(i, aspects=[dict(a) for a in aspects]) for i in ids]
        keywords = self.task.keywords
        detected = self.models["keywords"].predict(texts)
        pairs = [(row, keywords[j]) for row in range(len(texts)) for j in np.flatnonzero(detected[row])]
        pair_texts = [keyword_input(texts[r], k, self.task) for r, k in pairs]
        polarities = self.models["polarity"].predict(pair_texts) if pairs else []  # no keyword found: none to rate
        per_row: list[list[dict]] = [[] for _ in texts]
        for (row, kw), pol in zip(pairs, polarities, strict=True):
            per_row[row].append({"keyword": kw, "polarity": int(pol)})
        return [new_prediction(i, aspects=sort_aspects(a, self.task)) for i, a in zip(ids, per_row, strict=True)]

    def parameter_count(self) -> int:
        """Learned numbers: coefficients and intercepts of the linear models (0 for majority)."""
        total = 0
        for model in self.models.values():
            if not isinstance(model, Pipeline):
                continue
            est = model[-1]
            for sub in getattr(est, "estimators_", [est]):
                for attr in ("coef_", "intercept_"):
                    value = getattr(sub, attr, None)
                    total += int(np.size(value)) if value is not None else 0
        return total

    def serialized_bytes(self) -> int:
        """Size of the fitted models pickled (what saving them would take; baselines are not written)."""
        return len(pickle.dumps(self.models, protocol=pickle.HIGHEST_PROTOCOL))


def fit_baseline(name: str, task: TaskSpec, train_records: list[dict], seed: int = 0) -> Baseline:
    """Fit baseline ``name`` (``majority`` | ``tfidf_lr``) for ``task`` on the usable train records.

    Records unusable for the task are dropped and counted by reason (``Baseline.dropped``).
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    kept, dropped = keep_usable(train_records, task)
    if not kept:
        raise ValueError(
            f"no usable train records for task {task.name} ({len(train_records)} given, dropped: {dict(dropped)})"
        )
    if dropped:
        n_dropped = sum(dropped.values())
        logger.warning(
            "baseline %s: dropped %d of %d train records: %s", name, n_dropped, len(train_records), dict(dropped)
        )
    texts = [r["text"] for r in kept]
    start = time.perf_counter()
    if task.name in ("sentiment", "sentiment5"):
        y = [int(r["sentiment"]) for r in kept]
        model = DummyClassifier(strategy="prior") if name == "majority" else _label_model(y, seed)
        models = {"label": model.fit(texts, y)}  # DummyClassifier ignores the texts
    elif task.name == "aspects":
        models = _fit_aspects(name, task, kept, texts, seed)
    elif task.name == "regression":
        y_score = [float(r["score"]) for r in kept]
        model = DummyRegressor(strategy="mean") if name == "majority" else make_pipeline(_tfidf(), Ridge())
        models = {"score": model.fit(texts, y_score)}
    else:
        raise ValueError(f"unknown task {task.name!r}")
    return Baseline(
        name=name,
        task=task,
        models=models,
        train_examples=len(kept),
        dropped=dict(dropped),
        train_runtime_s=time.perf_counter() - start,
    )


def _fit_aspects(name: str, task: TaskSpec, kept: list[dict], texts: list[str], seed: int) -> dict[str, Any]:
    if name == "majority":
        # The most frequent whole aspect set (ties: the first seen) - the constant answer most often right.
        sets = [tuple((a["keyword"], a["polarity"]) for a in sort_aspects(r["aspects"], task)) for r in kept]
        best = collections.Counter(sets).most_common(1)[0][0]
        return {"aspects": [{"keyword": k, "polarity": p} for k, p in best]}
    col = {k: j for j, k in enumerate(task.keywords)}
    Y = np.zeros((len(kept), len(task.keywords)), dtype=int)
    pair_texts, pair_pol = [], []
    for i, r in enumerate(kept):
        for a in r["aspects"]:
            Y[i, col[a["keyword"]]] = 1
            pair_texts.append(keyword_input(r["text"], a["keyword"], task))
            pair_pol.append(int(a["polarity"]))
    # One-vs-rest: one binary LR per keyword; a keyword never seen in training is predicted absent.
    keywords = make_pipeline(
        _tfidf(), OneVsRestClassifier(LogisticRegression(C=LR_C, max_iter=1000, random_state=seed))
    )
    with warnings.catch_warnings():  # sklearn warns for each keyword absent from (or in every) train record
        warnings.filterwarnings("ignore", message="Label .* is present in all training examples")
        keywords.fit(texts, Y)
    if not pair_texts:
        raise ValueError("no aspects in the train records: the polarity model has nothing to learn from")
    return {"keywords": keywords, "polarity": _label_model(pair_pol, seed).fit(pair_texts, pair_pol)}
