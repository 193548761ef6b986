"""Every recipe's own argument dataclasses, parsed with ``trl.TrlParser`` (YAML + command-line overrides) beside
trl's ``SFTConfig`` / ``ModelConfig`` and transformers' ``TrainingArguments``, which they complement: no field
repeats one of those (``trust_remote_code`` is ``SFTConfig``'s in the SFT recipe and ``ClassifierArguments``'
in the classifier recipe, since ``TrainingArguments`` has none).

- ``DataArguments``: which records, which task (both fine-tuning recipes);
- ``SFTScriptArguments``: ``recipes/sft_qlora.py``'s merge, sample predictions and prompt format;
- ``ClassifierArguments``: ``recipes/classify_roberta.py``'s heads, losses, thresholds, early stopping;
- ``PretrainArguments``: ``recipes/pretrain.py`` and the embedded base models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from reviewtune.tasks import TASKS

KINDS = ("causal", "roberta")  # base models the suite pre-trains
TRAINED_MODULES = ("all", "embeddings")  # what pre-training trains
CLASS_WEIGHT_MODES = ("none", "balanced")
ASPECT_MODELS = ("keyword_attention", "pair")  # classifier_heads.heads_for_task


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


@dataclass
class SFTScriptArguments:
    """Options of ``recipes/sft_qlora.py`` that neither the data, SFTConfig nor ModelConfig cover."""

    merge: bool = field(
        default=False,
        metadata={"help": "After training, write output_dir/merged: the adapter merged into the de-quantised base."},
    )
    num_sample_predictions: int = field(
        default=8, metadata={"help": "Test reviews answered before and after training (sample_predictions.json)."}
    )
    generation_batch_size: int = field(
        default=16,
        metadata={"help": "Batch size for the sample predictions (answered as eval/compare.py's generate scoring)."},
    )
    curve_samples: int = field(
        default=100,
        metadata={
            "help": "Validation reviews answered at each evaluation (and after the last step) for the task metric "
            "of learning_curves.json/png; 0: losses only."
        },
    )
    use_chat_template: bool = field(
        default=False,
        metadata={
            "help": "Train on the tokenizer's chat template (the instruction as the user turn, the answer as the "
            "assistant turn; trl's conversational format) instead of the plain ###입력 text. Instruct models "
            "then answer through chat APIs and pipeline(messages) as trained; task_spec.json records it."
        },
    )


@dataclass
class ClassifierArguments:
    """Options of ``recipes/classify_roberta.py`` beyond data, training and LoRA arguments."""

    aspect_model: str = field(
        default="keyword_attention",
        metadata={
            "help": "Task aspects: keyword_attention (one token-classification model, each keyword's presence and "
            "polarity read from the tokens that reveal it) or pair (a keywords model + a keyword_sentiment model "
            "over (review, keyword) pairs).",
            "choices": list(ASPECT_MODELS),
        },
    )
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
            "heads, micro_f1 for keywords, exact_match for keyword attention, mse for regression), or a metric "
            "name such as accuracy or loss."
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
        if self.aspect_model not in ASPECT_MODELS:
            raise ValueError(f"aspect_model must be one of {', '.join(ASPECT_MODELS)}, got {self.aspect_model!r}")
        if self.class_weights not in CLASS_WEIGHT_MODES:
            raise ValueError(
                f"class_weights must be one of {', '.join(CLASS_WEIGHT_MODES)}, got {self.class_weights!r}"
            )
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {self.max_length}")
        if self.max_class_weight < 1:
            raise ValueError(f"max_class_weight must be >= 1, got {self.max_class_weight}")


@dataclass
class PretrainArguments:
    """Tokenizer, architecture and budget of one pre-training run (YAML keys map 1:1 onto these fields)."""

    # Data
    kind: str = field(default="causal", metadata={"help": "causal (small Llama or Qwen2, CLM) or roberta (MLM)."})
    corpus_file: str | None = field(
        default=None,
        metadata={"help": "records.jsonl ('text' field), .txt or .txt.gz (one text per line), or NSMC TSV."},
    )
    max_corpus_texts: int | None = field(default=None, metadata={"help": "Use at most this many texts (first N)."})
    output_dir: str | None = field(default=None, metadata={"help": "Where the model directory is written."})
    # Tokenizer
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Adapt this (local) tokenizer with train_new_from_iterator instead of a new byte-level BPE."},
    )
    vocab_size: int = field(default=8000, metadata={"help": "Target vocabulary size (smaller if the corpus is small)."})
    min_frequency: int = field(default=2, metadata={"help": "Minimum pair frequency for a BPE merge."})
    task_vocabulary: str | None = field(
        default=None,
        metadata={
            "help": "A task (aspects, sentiment, ...) whose prompt template and answers the tokenizer also learns "
            "(the model still pre-trains on the corpus only): without it, template and answer words never seen in "
            "the corpus become runs of byte tokens."
        },
    )
    # Model
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 704
    trained_modules: str = field(
        default="all",
        metadata={
            "help": "What pre-training trains: all, or embeddings (token and position embeddings; the transformer "
            "blocks keep their random initialisation). docs/learning.md says why the embedded bases train "
            "embeddings only.",
            "choices": list(TRAINED_MODULES),
        },
    )
    sliding_window_layers: int = field(
        default=0,
        metadata={
            "help": "causal kind: how many bottom layers attend to a sliding window of recent tokens (the model is "
            "then a Qwen2, whose config has such layers, instead of a Llama); the layers above attend to the whole "
            "sequence. docs/learning.md says why the embedded causal base has two."
        },
    )
    sliding_window: int = field(
        default=6, metadata={"help": "Tokens a sliding-window layer attends to (the token itself and those before)."}
    )
    max_seq_length: int = field(
        default=128, metadata={"help": "Length of the packed training blocks (tokens); unpacked texts are cut to it."}
    )
    packing: bool = field(
        default=True, metadata={"help": "Pack texts into full blocks; else one padded sequence per text."}
    )
    max_position_embeddings: int = field(
        default=512, metadata={"help": "Longest input the model accepts later (fine-tuning prompts)."}
    )
    mlm_probability: float = field(default=0.15, metadata={"help": "Masking rate for the roberta kind."})
    dropout: float = field(
        default=0.0,
        metadata={
            "help": "Dropout while pre-training (none suits short runs); saved configs get 0.1 (roberta), 0 (causal)."
        },
    )
    # Training
    max_steps: int = field(default=200, metadata={"help": "Optimizer steps (upper bound)."})
    max_minutes: float | None = field(
        default=None, metadata={"help": "Wall-clock budget for the training loop; stops early when reached."}
    )
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    per_device_train_batch_size: int = 32
    eval_blocks: int = field(
        default=32, metadata={"help": "Held out to measure the loss before/after: this many blocks' worth of tokens."}
    )
    logging_steps: int = 5
    seed: int = 42

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.trained_modules not in TRAINED_MODULES:
            choices = ", ".join(TRAINED_MODULES)
            raise ValueError(f"trained_modules must be one of {choices}, got {self.trained_modules!r}")
        if self.task_vocabulary is not None and self.task_vocabulary not in TASKS:
            raise ValueError(f"task_vocabulary must be one of {', '.join(TASKS)}, got {self.task_vocabulary!r}")
        if not 0 <= self.sliding_window_layers <= self.num_layers:
            raise ValueError(f"sliding_window_layers must be in 0..{self.num_layers}, got {self.sliding_window_layers}")
        if self.sliding_window_layers and self.kind != "causal":
            raise ValueError(f"sliding_window_layers applies to the causal kind only, got kind {self.kind!r}")
        if self.sliding_window < 1:
            raise ValueError(f"sliding_window must be at least 1 token, got {self.sliding_window}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.max_seq_length > self.max_position_embeddings:
            raise ValueError(
                f"max_seq_length {self.max_seq_length} exceeds max_position_embeddings {self.max_position_embeddings}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
