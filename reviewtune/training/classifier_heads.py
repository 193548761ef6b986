"""Sequence-classifier heads derived from the tasks, their datasets, weighted losses and thresholds.

One ``Head`` per model the classifier recipe trains:

- ``sentiment`` / ``sentiment5``: single-label (softmax, cross-entropy), labels = the task's label names;
- ``regression``: one output, mean squared error on the record's ``score``;
- ``aspects`` (``aspect_model: keyword_attention``, the default): one token-classification model read by
  keyword attention (:func:`keyword_attention`): keyword presence (BCE per keyword, thresholds tuned on
  validation and saved as ``thresholds.json``) and each keyword's polarity ``-2..2`` from the tokens it attends to;
- ``aspects`` with ``aspect_model: pair``: two models, ``keywords`` (multi-label, sigmoid + BCE per keyword,
  thresholds as above) and ``keyword_sentiment`` (single-label over the polarities, one example per (review,
  keyword) pair, input ``reviewtune.prompts.keyword_input``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit, softmax

from reviewtune.evaluation.keyword_attention import KEYWORD_ATTENTION, aspects_from_pooled
from reviewtune.evaluation.metrics import aspect_metrics, classification_metrics, multilabel_metrics, regression_metrics
from reviewtune.models.positions import usable_positions
from reviewtune.prompts import keyword_input
from reviewtune.records import sort_aspects
from reviewtune.tasks import TaskSpec
from reviewtune.training.arguments import ASPECT_MODELS, CLASS_WEIGHT_MODES
from reviewtune.training.thresholds import DEFAULT_THRESHOLD

if TYPE_CHECKING:  # both imports cost seconds (they pull in peft), paid by every scoring process
    from peft import LoraConfig
    from transformers import EvalPrediction


logger = logging.getLogger(__name__)


SINGLE_LABEL = "single_label_classification"


MULTI_LABEL = "multi_label_classification"


REGRESSION = "regression"


ASPECT_COMPONENTS = ("keywords", "keyword_sentiment")


@dataclass(frozen=True)
class Head:
    """One model to train: its name (also its sub-directory for aspects), loss type and output labels."""

    name: str
    problem_type: str
    label_names: tuple[str, ...]
    polarities: tuple[int, ...] = ()  # keyword attention: its polarity classes

    @property
    def keywords(self) -> tuple[str, ...]:
        """The keywords with a presence score (and a tuned threshold): a keywords head's labels, a keyword-attention
        head's first labels; none for other heads."""
        if self.problem_type == KEYWORD_ATTENTION:
            return self.label_names[: self.num_labels // (1 + len(self.polarities))]
        return self.label_names if self.problem_type == MULTI_LABEL else ()

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}

    @property
    def default_metric(self) -> str:
        """Validation metric for early stopping when ``early_stopping_metric`` is ``auto``."""
        if self.problem_type == REGRESSION:
            return "mse"
        if self.problem_type == KEYWORD_ATTENTION:
            return "exact_match"
        return "micro_f1" if self.problem_type == MULTI_LABEL else "macro_f1"


def head_model(head: Head, model_path: str, **from_pretrained):
    """A fresh model for ``head`` with its label names in the config (id2label): a token classifier for keyword
    attention, else a sequence classifier with the head's ``problem_type``."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    labels = dict(num_labels=head.num_labels, id2label=head.id2label, label2id=head.label2id)
    if head.problem_type == KEYWORD_ATTENTION:
        return AutoModelForTokenClassification.from_pretrained(model_path, **labels, **from_pretrained)
    return AutoModelForSequenceClassification.from_pretrained(
        model_path, **labels, problem_type=head.problem_type, **from_pretrained
    )


def keyword_attention_labels(task: TaskSpec) -> tuple[str, ...]:
    """Output labels of a keyword-attention model: one presence score per keyword, then per keyword one
    polarity logit per polarity, named as answer items (``배송``, ..., ``배송-2``, ..., ``배송2``)."""
    return (*task.keywords, *(f"{k}{p}" for k in task.keywords for p in task.polarities))


def heads_for_task(task: TaskSpec, aspect_model: str = KEYWORD_ATTENTION) -> list[Head]:
    """The models a task needs: one head, or for ``aspects`` with ``aspect_model: pair`` ``keywords`` +
    ``keyword_sentiment``."""
    if task.name in ("sentiment", "sentiment5"):
        return [Head(task.name, SINGLE_LABEL, tuple(task.label_names))]
    if task.name == "regression":
        return [Head("regression", REGRESSION, ("score",))]
    if task.name == "aspects":
        if not task.keywords:
            raise ValueError("task aspects needs a keyword list")
        if aspect_model not in ASPECT_MODELS:
            raise ValueError(f"aspect_model must be one of {', '.join(ASPECT_MODELS)}, got {aspect_model!r}")
        if aspect_model == KEYWORD_ATTENTION:
            return [Head("aspects", KEYWORD_ATTENTION, keyword_attention_labels(task), tuple(task.polarities))]
        return [
            Head("keywords", MULTI_LABEL, tuple(task.keywords)),
            Head("keyword_sentiment", SINGLE_LABEL, tuple(task.polarity_names)),
        ]
    raise ValueError(f"unknown task {task.name!r}")


def greater_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better (losses and errors are not)."""
    name = metric.removeprefix("eval_")
    return not (name.endswith("loss") or name in ("mse", "mae"))


def build_examples(records: list[dict], task: TaskSpec, head: Head) -> list[dict]:
    """Training examples ``{"text", "label"}`` (or ``{"text", "labels"}`` multi-hot for keywords) for ``head``.

    ``keyword_sentiment`` yields one example per (review, gold keyword) pair with the polarity's index.
    """
    if head.name == "keyword_sentiment":
        return [
            {"text": keyword_input(r["text"], a["keyword"], task), "label": task.polarities.index(a["polarity"])}
            for r in records
            for a in sort_aspects(r["aspects"], task)
        ]
    if head.problem_type == KEYWORD_ATTENTION:
        return [{"text": r["text"], "labels": aspect_label_row(r["aspects"], task)} for r in records]
    if head.name == "keywords":
        col = head.label2id
        examples = []
        for r in records:
            labels = [0.0] * head.num_labels
            for a in r["aspects"]:
                labels[col[a["keyword"]]] = 1.0
            examples.append({"text": r["text"], "labels": labels})
        return examples
    if head.problem_type == REGRESSION:
        return [{"text": r["text"], "label": float(r["score"])} for r in records]
    return [{"text": r["text"], "label": int(r["sentiment"])} for r in records]


def aspect_label_row(aspects: list[dict], task: TaskSpec) -> list[float]:
    """A keyword-attention model's labels for one review: K presence flags (0/1), then K polarity indices
    (``-100``, ignored by the loss, for an absent keyword)."""
    k = len(task.keywords)
    row = [0.0] * k + [-100.0] * k
    for a in aspects:
        j = task.keywords.index(a["keyword"])
        row[j], row[k + j] = 1.0, float(task.polarities.index(a["polarity"]))
    return row


def label_matrix(examples: list[dict], head: Head) -> np.ndarray:
    """Gold labels of ``examples``: ``[n]`` ints, ``[n]`` floats (regression), ``[n, K]`` 0/1 (keywords) or
    ``[n, 2K]`` (keyword attention: :func:`aspect_label_row`)."""
    if head.keywords:
        width = 2 * len(head.keywords) if head.problem_type == KEYWORD_ATTENTION else head.num_labels
        return np.asarray([e["labels"] for e in examples], dtype=float).reshape(len(examples), width)
    dtype = float if head.problem_type == REGRESSION else int
    return np.asarray([e["label"] for e in examples], dtype=dtype)


def model_max_length(config, requested: int) -> int:
    """``requested`` capped by the positions the model has."""
    limit = usable_positions(config)
    return min(requested, limit) if limit else requested


def tokenize_examples(examples: list[dict], tokenizer, max_length: int, desc: str):
    """A ``datasets.Dataset`` of ``input_ids``/``attention_mask``/label(s), unpadded (the collator pads).

    Returns ``(dataset, n_shortened, n_tokens)``: how many inputs were cut to ``max_length`` (on the
    tokenizer's ``truncation_side``) and the total number of tokens kept.
    """
    from datasets import Dataset

    def encode(batch):
        full = tokenizer(batch["text"], truncation=False)["input_ids"]
        enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
        enc["shortened"] = [len(ids) > max_length for ids in full]
        return enc

    ds = Dataset.from_list(examples).map(encode, batched=True, remove_columns=["text"], desc=desc)
    n_shortened = int(sum(ds["shortened"]))
    n_tokens = int(sum(len(ids) for ids in ds["input_ids"]))
    return ds.remove_columns("shortened"), n_shortened, n_tokens


def lora_config(model_args, head: Head | None = None) -> LoraConfig:
    """PEFT ``SEQ_CLS`` (``TOKEN_CLS`` for a keyword-attention ``head``) LoRA from trl's ``ModelConfig`` fields; the
    head is trained in full (``modules_to_save``).

    Target modules default to RoBERTa's attention ``query``/``value``; ``all-linear`` adapts every linear
    layer except the head.
    """
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.TOKEN_CLS if head and head.problem_type == KEYWORD_ATTENTION else TaskType.SEQ_CLS,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules or ["query", "value"],
        modules_to_save=model_args.lora_modules_to_save or ["classifier"],
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        bias="none",
    )


def class_weights(examples: list[dict], head: Head, mode: str, max_weight: float) -> list[float] | None:
    """Per-class loss weights from the training labels (``None`` for mode ``none`` and regression).

    Single-label: ``n / (K * count_c)`` (scikit-learn's "balanced"; 1 for a class absent from training).
    Keywords: BCE ``pos_weight = negatives / positives`` per keyword (1 for a keyword never present).
    Both clipped to ``[1 / max_weight, max_weight]`` so a rare class cannot dominate the loss.
    """
    if mode not in CLASS_WEIGHT_MODES:
        raise ValueError(f"class_weights must be one of {', '.join(CLASS_WEIGHT_MODES)}, got {mode!r}")
    if mode == "none" or head.problem_type == REGRESSION or not examples:
        return None
    y = label_matrix(examples, head)
    n = len(examples)
    if head.keywords:  # BCE pos_weight per keyword (keyword attention: its presence columns)
        y = y[:, : len(head.keywords)]
        pos = y.sum(axis=0)
        w = np.where(pos > 0, (n - pos) / np.maximum(pos, 1), 1.0)
    else:
        counts = np.bincount(y, minlength=head.num_labels).astype(float)
        w = np.where(counts > 0, n / (head.num_labels * np.maximum(counts, 1)), 1.0)
    return np.clip(w, 1.0 / max_weight, max_weight).round(6).tolist()


def loss_normaliser(labels: torch.Tensor, problem_type: str, weights: torch.Tensor | None) -> torch.Tensor:
    """What a batch's summed loss is divided by: the sum of its examples' class weights (weighted cross-entropy,
    as ``F.cross_entropy(weight=...)`` normalises), else the number of examples (or of example x keyword cells)."""
    if problem_type == SINGLE_LABEL and weights is not None:
        return weights.to(labels.device)[labels.long()].sum()
    if problem_type == KEYWORD_ATTENTION:  # per review
        return torch.tensor(float(len(labels)), device=labels.device)
    return torch.tensor(float(labels.numel()), device=labels.device)


def weighted_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    problem_type: str,
    weights: torch.Tensor | None,
    normaliser: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class-weighted cross-entropy, BCE with ``pos_weight``, or MSE: summed over the batch and divided by
    ``normaliser`` (default: this batch's own, :func:`loss_normaliser`). Divided by the normaliser of every
    micro-batch of an accumulated batch, the micro-batches' losses add up to the whole batch's loss."""
    if problem_type == REGRESSION:
        total = F.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction="sum")
    elif problem_type == MULTI_LABEL:
        total = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=weights, reduction="sum")
    elif problem_type == KEYWORD_ATTENTION:  # per review: mean presence BCE + summed polarity CE of its keywords
        k = labels.shape[1] // 2
        presence, polarity = logits[:, :k].float(), logits[:, k:].float().reshape(len(logits) * k, -1)
        total = F.binary_cross_entropy_with_logits(presence, labels[:, :k].float(), pos_weight=weights,
                                                   reduction="sum") / k  # fmt: skip
        total = total + F.cross_entropy(polarity, labels[:, k:].long().flatten(), ignore_index=-100, reduction="sum")
    else:
        total = F.cross_entropy(logits.float(), labels.long(), weight=weights, reduction="sum")
    return total / (loss_normaliser(labels, problem_type, weights) if normaliser is None else normaliser)


def probabilities(logits: np.ndarray, head: Head) -> np.ndarray:
    """Softmax (single-label), sigmoid (keywords; keyword attention: its presence logits, ``[n, K]``) or the raw
    score (regression, ``[n]``)."""
    logits = np.asarray(logits, dtype=np.float64)
    if head.problem_type == REGRESSION:
        return logits.reshape(len(logits), -1)[:, 0]
    if head.problem_type == KEYWORD_ATTENTION:
        return expit(logits[:, : len(head.keywords)])
    if head.problem_type == MULTI_LABEL:
        return expit(logits)
    return softmax(logits, axis=-1)


def head_metrics(head: Head, logits: np.ndarray, labels: np.ndarray, thresholds: np.ndarray | None = None) -> dict:
    """Full metrics of one head from ``reviewtune.evaluation.metrics`` (the harness's code).

    Keywords are decided by ``prob >= threshold`` per keyword (``thresholds`` in label order, default 0.5).
    """
    if head.problem_type == KEYWORD_ATTENTION:
        return keyword_attention_metrics(head, logits, labels, thresholds)
    probs = probabilities(logits, head)
    if head.problem_type == REGRESSION:
        return regression_metrics(np.asarray(labels, dtype=float).tolist(), probs.tolist())
    if head.problem_type == MULTI_LABEL:
        t = np.full(head.num_labels, DEFAULT_THRESHOLD) if thresholds is None else np.asarray(thresholds)
        y_pred = (probs >= t[None, :]).astype(int)
        return multilabel_metrics(np.asarray(labels).round().astype(int), y_pred, list(head.label_names))
    return classification_metrics(
        np.asarray(labels, dtype=int).tolist(), probs.argmax(axis=-1).tolist(), list(head.label_names), probs.tolist()
    )


def keyword_attention_metrics(head: Head, pooled: np.ndarray, labels: np.ndarray, thresholds=None) -> dict:
    """The harness's aspect metrics (keyword detection, polarity, exact match) of a keyword-attention model's pooled
    outputs against label rows (:func:`aspect_label_row`), keywords decided as the harness decides them."""
    keywords, polarities = head.keywords, head.polarities
    k = len(keywords)
    t = np.full(k, DEFAULT_THRESHOLD) if thresholds is None else np.asarray(thresholds)
    gold = [[{"keyword": keywords[j], "polarity": polarities[int(row[k + j])]} for j in np.flatnonzero(row[:k] > 0.5)]
            for row in np.asarray(labels)]  # fmt: skip
    return aspect_metrics(gold, aspects_from_pooled(pooled, t, keywords, polarities), keywords)


def headline(metrics: dict) -> dict:
    """The scalar entries of a metrics dict (no per-class tables or confusion matrices)."""
    return {k: v for k, v in metrics.items() if v is None or isinstance(v, int | float)}


def make_compute_metrics(head: Head):
    """``compute_metrics`` for the Trainer: scalar metrics of ``head`` at the default threshold.

    ``None`` (an undefined correlation) is logged as NaN, which never counts as the best checkpoint.
    """

    def compute_metrics(pred: EvalPrediction) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        metrics = headline(head_metrics(head, logits, pred.label_ids))
        metrics.pop("n", None)
        return {k: float("nan") if v is None else float(v) for k, v in metrics.items()}

    return compute_metrics
