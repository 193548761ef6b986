"""Sequence-classifier heads derived from the tasks, their datasets, weighted losses and thresholds.

One ``Head`` per model the classifier recipe trains:

- ``sentiment`` / ``sentiment5``: single-label (softmax, cross-entropy), labels = the task's label names;
- ``regression``: one output, mean squared error on the record's ``score``;
- ``aspects`` is two models: ``keywords`` (multi-label, sigmoid + BCE per keyword, decision thresholds
  tuned per keyword on validation and saved as ``thresholds.json``) and ``keyword_sentiment`` (single-label
  over the polarities ``-2..2``, one example per (review, keyword) pair, input
  ``reviewtune.prompts.keyword_input``).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from reviewtune.atomic import atomic_write_json, read_json
from reviewtune.metrics import classification_metrics, multilabel_metrics, regression_metrics
from reviewtune.prompts import keyword_input
from reviewtune.provenance import provenance
from reviewtune.records import drop_reason, read_records, sort_aspects
from reviewtune.tasks import TaskSpec

if TYPE_CHECKING:  # both imports cost seconds (they pull in peft), paid by every scoring process
    from peft import LoraConfig
    from transformers import EvalPrediction

logger = logging.getLogger(__name__)

SINGLE_LABEL = "single_label_classification"
MULTI_LABEL = "multi_label_classification"
REGRESSION = "regression"
ASPECT_COMPONENTS = ("keywords", "keyword_sentiment")
THRESHOLDS_FILE = "thresholds.json"
DEFAULT_THRESHOLD = 0.5
THRESHOLD_GRID = tuple(round(t, 2) for t in np.arange(0.05, 0.951, 0.05))
MIN_POSITIVES_TO_TUNE = 5  # fewer positive validation examples than this: keep the default threshold
CLASS_WEIGHT_MODES = ("none", "balanced")
# Model types whose position ids start after the padding index, so two positions are unusable.
_PADDING_OFFSET_MODEL_TYPES = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text")


@dataclass
class ClassifierArguments:
    """Options of ``recipes/classify_roberta.py`` beyond data, training and LoRA arguments."""

    max_length: int = field(
        default=256, metadata={"help": "Longest input in tokens (capped by the model's positions); longer is cut."}
    )
    class_weights: str = field(
        default="balanced",
        metadata={
            "help": "none, or balanced: cross-entropy class weights n / (K * count), BCE pos_weight neg / pos "
            "per keyword; both clipped to [1 / max_class_weight, max_class_weight].",
            "choices": list(CLASS_WEIGHT_MODES),
        },
    )
    max_class_weight: float = field(default=10.0, metadata={"help": "Upper bound of a class weight."})
    tune_thresholds: bool = field(
        default=True,
        metadata={"help": "Tune the keywords model's per-keyword threshold for F1 on validation (else 0.5)."},
    )
    early_stopping_patience: int | None = field(
        default=3, metadata={"help": "Evaluations without improvement before stopping (0 or null: never)."}
    )
    early_stopping_threshold: float = field(default=0.0, metadata={"help": "Smallest change that counts as better."})
    early_stopping_metric: str = field(
        default="auto",
        metadata={
            "help": "Validation metric for early stopping and the best checkpoint: auto (macro_f1 for single-label "
            "heads, micro_f1 for keywords, mse for regression), or a metric name such as accuracy or loss."
        },
    )
    num_sample_predictions: int = field(
        default=3, metadata={"help": "Test reviews whose predictions are printed at the end (0: none)."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run the model's own code from its repository (as SFTConfig's field of the same name)."},
    )

    def __post_init__(self) -> None:
        if self.class_weights not in CLASS_WEIGHT_MODES:
            raise ValueError(
                f"class_weights must be one of {', '.join(CLASS_WEIGHT_MODES)}, got {self.class_weights!r}"
            )
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {self.max_length}")
        if self.max_class_weight < 1:
            raise ValueError(f"max_class_weight must be >= 1, got {self.max_class_weight}")


# ------------------------------------------------------------------------------------------------ heads


@dataclass(frozen=True)
class Head:
    """One model to train: its name (also its sub-directory for aspects), loss type and output labels."""

    name: str
    problem_type: str
    label_names: tuple[str, ...]

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
        return "micro_f1" if self.problem_type == MULTI_LABEL else "macro_f1"


def heads_for_task(task: TaskSpec) -> list[Head]:
    """The models a task needs: one head, or ``keywords`` + ``keyword_sentiment`` for ``aspects``."""
    if task.name in ("sentiment", "sentiment5"):
        return [Head(task.name, SINGLE_LABEL, tuple(task.label_names))]
    if task.name == "regression":
        return [Head("regression", REGRESSION, ("score",))]
    if task.name == "aspects":
        if not task.keywords:
            raise ValueError("task aspects needs a keyword list")
        return [
            Head("keywords", MULTI_LABEL, tuple(task.keywords)),
            Head("keyword_sentiment", SINGLE_LABEL, tuple(task.polarity_names)),
        ]
    raise ValueError(f"unknown task {task.name!r}")


def greater_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better (losses and errors are not)."""
    name = metric.removeprefix("eval_")
    return not (name.endswith("loss") or name in ("mse", "mae"))


# ------------------------------------------------------------------------------------------------- data


def load_records(path: str | Path, task: TaskSpec) -> tuple[list[dict], dict[str, Any]]:
    """Records of ``path`` usable for ``task``, and a report ``{"path", "read", "kept", "dropped": {reason: n}}``.

    Records the task cannot use (empty text, missing or unknown label, ...) are dropped and counted by
    reason, so that read = kept + sum(dropped).
    """
    kept, dropped = [], Counter()
    records = read_records(path)
    for record in records:
        reason = drop_reason(record, task)
        if reason is None:
            kept.append(record)
        else:
            dropped[reason] += 1
    report = {"path": str(path), "read": len(records), "kept": len(kept), "dropped": dict(sorted(dropped.items()))}
    assert report["read"] == report["kept"] + sum(dropped.values())
    if not kept:
        raise ValueError(f"{path}: none of {len(records)} records is usable for task {task.name} (dropped: {dropped})")
    if dropped:
        logger.warning("%s: dropped %d of %d records: %s", path, sum(dropped.values()), len(records), dict(dropped))
    return kept, report


def split_validation(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded random ``fraction`` of ``records`` held out for validation: ``(train, validation)``."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {fraction}")
    n_val = max(1, round(len(records) * fraction))
    if len(records) - n_val < 1:
        raise ValueError(f"{len(records)} records are too few to hold out {fraction:.0%} for validation")
    order = np.random.default_rng(seed).permutation(len(records))
    val_idx = set(order[:n_val].tolist())
    return (
        [r for i, r in enumerate(records) if i not in val_idx],
        [r for i, r in enumerate(records) if i in val_idx],
    )


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


def label_matrix(examples: list[dict], head: Head) -> np.ndarray:
    """Gold labels of ``examples``: ``[n]`` ints, ``[n]`` floats (regression) or ``[n, K]`` 0/1 (keywords)."""
    if head.problem_type == MULTI_LABEL:
        return np.asarray([e["labels"] for e in examples], dtype=float).reshape(len(examples), head.num_labels)
    dtype = float if head.problem_type == REGRESSION else int
    return np.asarray([e["label"] for e in examples], dtype=dtype)


def model_max_length(config, requested: int) -> int:
    """``requested`` capped by the positions the model has (RoBERTa-style models lose two to the padding offset)."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit and getattr(config, "model_type", None) in _PADDING_OFFSET_MODEL_TYPES:
        limit -= (config.pad_token_id or 0) + 1
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


# ------------------------------------------------------------------------------------------------ model


def lora_config(model_args) -> LoraConfig:
    """PEFT ``SEQ_CLS`` LoRA from trl's ``ModelConfig`` fields; the head is trained in full (``modules_to_save``).

    Target modules default to RoBERTa's attention ``query``/``value``; ``all-linear`` adapts every linear
    layer except the head.
    """
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules or ["query", "value"],
        modules_to_save=model_args.lora_modules_to_save or ["classifier"],
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        bias="none",
    )


# ------------------------------------------------------------------------------------------------- loss


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
    if head.problem_type == MULTI_LABEL:
        pos = y.sum(axis=0)
        w = np.where(pos > 0, (n - pos) / np.maximum(pos, 1), 1.0)
    else:
        counts = np.bincount(y, minlength=head.num_labels).astype(float)
        w = np.where(counts > 0, n / (head.num_labels * np.maximum(counts, 1)), 1.0)
    return np.clip(w, 1.0 / max_weight, max_weight).round(6).tolist()


def weighted_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str, weights: torch.Tensor | None):
    """Mean loss of a batch: weighted cross-entropy, BCE with ``pos_weight``, or MSE."""
    if problem_type == REGRESSION:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    if problem_type == MULTI_LABEL:
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=weights)
    return F.cross_entropy(logits.float(), labels.long(), weight=weights)


# ------------------------------------------------------------------------------------- predictions, metrics


def probabilities(logits: np.ndarray, head: Head) -> np.ndarray:
    """Softmax (single-label), sigmoid (keywords) or the raw score (regression, ``[n]``)."""
    logits = np.asarray(logits, dtype=np.float64)
    if head.problem_type == REGRESSION:
        return logits.reshape(len(logits), -1)[:, 0]
    if head.problem_type == MULTI_LABEL:
        return 1.0 / (1.0 + np.exp(-logits))
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def head_metrics(head: Head, logits: np.ndarray, labels: np.ndarray, thresholds: np.ndarray | None = None) -> dict:
    """Full metrics of one head from ``reviewtune.metrics`` (the harness's code).

    Keywords are decided by ``prob >= threshold`` per keyword (``thresholds`` in label order, default 0.5).
    """
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


# ----------------------------------------------------------------------------------------- thresholds


def tune_thresholds(
    probs: np.ndarray,
    labels: np.ndarray,
    keywords: list[str],
    grid: tuple[float, ...] = THRESHOLD_GRID,
    min_positives: int = MIN_POSITIVES_TO_TUNE,
) -> dict[str, float]:
    """Per-keyword decision threshold maximising F1 on validation (``prob >= threshold`` is a hit).

    Ties go to the threshold closest to 0.5; a keyword with fewer than ``min_positives`` positive
    validation examples keeps 0.5 (too little evidence to move it).
    """
    from sklearn.metrics import f1_score

    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels).round().astype(int)
    if probs.shape != labels.shape or probs.shape[1] != len(keywords):
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} must both be [n, {len(keywords)}]")
    out = {}
    for j, keyword in enumerate(keywords):
        if labels[:, j].sum() < min_positives:
            out[keyword] = DEFAULT_THRESHOLD
            continue
        scores = [f1_score(labels[:, j], probs[:, j] >= t, zero_division=0) for t in grid]
        best = [t for t, s in zip(grid, scores, strict=True) if s == max(scores)]
        out[keyword] = float(min(best, key=lambda t: abs(t - DEFAULT_THRESHOLD)))
    return out


def save_thresholds(directory: str | Path, thresholds: dict[str, float], tuned: bool, **extra) -> Path:
    """``thresholds.json``: ``{"thresholds": {keyword: threshold}, "tuned": bool, "rule": ..., ...}``."""
    rule = "keyword detected when sigmoid(logit) >= threshold"
    return atomic_write_json(
        Path(directory) / THRESHOLDS_FILE,
        {"thresholds": thresholds, "tuned": tuned, "rule": rule, **extra, "provenance": provenance()},
    )


def load_thresholds(directory: str | Path, keywords: list[str]) -> np.ndarray:
    """Thresholds in ``keywords`` order from ``thresholds.json`` (0.5 for a missing file or keyword)."""
    path = Path(directory) / THRESHOLDS_FILE
    if not path.is_file():
        return np.full(len(keywords), DEFAULT_THRESHOLD)
    data = read_json(path)
    data = data.get("thresholds") if isinstance(data, dict) else None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected field 'thresholds' mapping keyword -> threshold")
    unknown = set(data) - set(keywords)
    if unknown:
        raise ValueError(f"{path}: thresholds for unknown keywords {sorted(unknown)}")
    return np.asarray([float(data.get(k, DEFAULT_THRESHOLD)) for k in keywords])
