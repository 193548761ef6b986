"""Argument dataclasses shared by the recipes, parsed with ``trl.TrlParser`` (YAML + CLI overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataArguments:
    """Which records to train and evaluate on, and how the task is defined.

    With no ``train_file`` the recipes use the embedded default: the bundled synthetic shopping
    reviews (``reviewtune.defaults.default_data_dir``).
    """

    task: str = field(default="aspects", metadata={"help": "sentiment, sentiment5, aspects or regression."})
    train_file: str | None = field(default=None, metadata={"help": "records.jsonl to train on (default: embedded)."})
    validation_file: str | None = field(
        default=None, metadata={"help": "records.jsonl for evaluation; default: a seeded slice of train."}
    )
    test_file: str | None = field(default=None, metadata={"help": "records.jsonl for sample predictions."})
    validation_fraction: float = field(
        default=0.1, metadata={"help": "Share of train held out when no validation_file is given."}
    )
    instruction: str | None = field(default=None, metadata={"help": "Override the task's default instruction."})
    keywords: list[str] | None = field(
        default=None, metadata={"help": "Aspect keyword list (default: the 14 fashion keywords)."}
    )
    task_label_names: list[str] | None = field(
        default=None, metadata={"help": "Override the label names of the task (e.g. your own five level names)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training records."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many validation records."})
