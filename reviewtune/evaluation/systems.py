"""Run directories -> loaded systems: a generative run (base + adapter, NF4 as trained, or merged/), a
classifier, or the two-model aspect classifier, with what scoring and the cost table need to know."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reviewtune.atomic import read_json
from reviewtune.evaluation.keyword_attention import KEYWORD_ATTENTION, keyword_attention
from reviewtune.models.positions import usable_positions
from reviewtune.models.quantization import compute_dtype, load_pretrained, nf4_config
from reviewtune.tasks import TaskSpec
from reviewtune.training.thresholds import load_thresholds

logger = logging.getLogger(__name__)


SCORING_MODES = ("generate", "loglik", "constrained", "classifier")


LOGLIK_TASKS = ("sentiment", "sentiment5")  # closed label sets


ADAPTER_CONFIG = "adapter_config.json"




DEFAULT_MAX_INPUT_TOKENS = 512  # classifier input limit when the run recorded no max_length


@dataclass
class System:
    """A loaded run: a generative model, a single classifier, or the two-model aspect classifier."""

    run_dir: Path
    kind: str  # "generative" | "classifier"
    task: TaskSpec
    summary: dict
    model: Any = None  # None for the two-model aspect system (see ``components``)
    tokenizer: Any = None
    components: dict[str, System] = field(default_factory=dict)  # aspect classifier: keywords, keyword_sentiment
    thresholds: np.ndarray | None = None  # keywords / keyword-attention model: one decision threshold per keyword
    max_length: int | None = None  # longest input (tokens) the run trained on
    positions: int | None = None  # longest sequence the model can take at all
    weight_paths: list[Path] = field(default_factory=list)  # every file a deployment needs (size on disk)
    weights: str | None = None  # how the weights are held for scoring: nf4, nf4-dequantized, float32, ...

    @property
    def scoring_modes(self) -> tuple[str, ...]:
        if self.kind == "classifier":
            return ("classifier",)
        if self.task.name in LOGLIK_TASKS:
            return ("generate", "loglik", "constrained")
        return ("generate", "constrained")

    @property
    def max_input_tokens(self) -> int:
        """Classifier input limit: as trained (``max_length``), within the model's positions; longer is cut."""
        return min(x for x in (self.max_length, self.positions, DEFAULT_MAX_INPUT_TOKENS) if x)

    @classmethod
    def of_model(cls, run_dir: Path, kind: str, task: TaskSpec, summary: dict, model, tokenizer, **fields) -> System:
        """A system around one loaded model: its input limits read from the run summary and the model config."""
        return cls(run_dir=run_dir, kind=kind, task=task, summary=summary, model=model, tokenizer=tokenizer,
                   max_length=fields.pop("max_length", None) or _trained_length(summary),
                   positions=usable_positions(model.config), **fields)  # fmt: skip

    @property
    def keyword_attention(self) -> bool:
        """A keyword-attention aspect classifier: its token logits are pooled per keyword before scoring."""
        return self.kind == "classifier" and self.summary.get("head") == KEYWORD_ATTENTION

    def scored_logits(self, logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The classifier outputs scoring reads (``[B, num_labels]``): a keyword-attention model's token logits
        pooled per keyword (:func:`keyword_attention`), any other classifier's logits as they are."""
        if self.keyword_attention:
            return keyword_attention(logits, attention_mask, len(self.task.keywords))
        return logits

    def models(self) -> list[Any]:
        return [self.model] if self.model is not None else [c.model for c in self.components.values()]


def _read_summary(run_dir: Path) -> dict:
    path = run_dir / "run_summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no run_summary.json; is this a run directory written by a recipe?")
    summary = read_json(path)
    for key in ("kind", "task"):
        if key not in summary:
            raise ValueError(f"{path}: missing field {key!r}")
    if summary["kind"] not in ("generative", "classifier"):
        raise ValueError(f"{path}: field 'kind' is {summary['kind']!r}, expected 'generative' or 'classifier'")
    return summary


def _read_task(run_dir: Path) -> TaskSpec:
    path = run_dir / "task_spec.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no task_spec.json (scoring needs it to rebuild prompts and labels)")
    return TaskSpec.load(run_dir)


_SERVING_FILES = (
    "*.safetensors", "config.json", "generation_config.json", "adapter_config.json", "tokenizer*",
    "special_tokens_map.json", "vocab.*", "merges.txt", "*.model", "thresholds.json", "task_spec.json",
)  # fmt: skip


def _weight_files(directory: Path) -> list[Path]:
    """The files serving needs directly in ``directory``: weights, configs, tokenizer (no logs or checkpoints)."""
    return sorted({p for pattern in _SERVING_FILES for p in directory.glob(pattern) if p.is_file()})


def _nf4_config(summary: dict):
    """The NF4 config the run trained with: double quantisation as recorded, the SFT recipe's compute dtype."""
    double_quant = bool(_config(summary).get("use_bnb_nested_quant", True))
    return nf4_config(double_quant=double_quant, compute_dtype=compute_dtype())


def _config(summary: dict) -> dict:
    return summary.get("config") or {}


def _remote_code(summary: dict) -> bool:
    """``trust_remote_code`` as the run was trained with it (off unless the run asked for it)."""
    return bool(_config(summary).get("trust_remote_code", False))


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device_index() -> int | str:
    """``device_map`` target: bitsandbytes quantises while loading, straight onto this device."""
    return torch.cuda.current_device() if torch.cuda.is_available() else "cpu"


def _trained_length(summary: dict) -> int | None:
    """The ``max_length`` (tokens) the run trained with, if it recorded one."""
    value = summary.get("max_length") or (summary.get("config") or {}).get("max_length")
    return int(value) if value else None


@dataclass
class BaseModel:
    """An adapter's base model: what ``from_pretrained`` takes, and where its files are on this machine."""

    name_or_path: str  # a local directory or a hub id
    revision: str | None = None  # the hub commit the run trained on (hub ids only)
    local_dir: Path | None = None  # the directory, or the HF cache snapshot of a hub id

    def from_pretrained_kwargs(self, summary: dict) -> dict:
        return {"revision": self.revision, "trust_remote_code": _remote_code(summary)}


def _base_model(run_dir: Path, summary: dict, kind: str) -> BaseModel:
    """The adapter's base model, tried in order: the directory recorded in ``adapter_config.json`` /
    ``run_summary.json``; the embedded base of the same hash in this machine's cache (a run copied from
    elsewhere); the recorded hub id at the recorded commit, from the HF cache (offline) or the hub."""
    recorded = [read_json(run_dir / ADAPTER_CONFIG).get("base_model_name_or_path"), summary.get("base_model")]
    recorded = list(dict.fromkeys(str(p) for p in recorded if p))
    for name in recorded:
        if (Path(name) / "config.json").is_file():
            return BaseModel(name, local_dir=Path(name))
    tried = list(recorded)
    recorded_hash = summary.get("base_model_hash") or ""
    if recorded_hash and ":" not in recorded_hash:  # a directory's sha256: maybe the embedded base
        from reviewtune.base_models import base_model_dir  # imported only here: it loads the pre-training code

        cached = base_model_dir(kind, recorded_hash)
        if (cached / "config.json").is_file():
            return BaseModel(str(cached), local_dir=cached)
        tried.append(str(cached))
    revision = recorded_hash.removeprefix("hub:") if recorded_hash.startswith("hub:") else None
    revision = revision or _config(summary).get("model_revision")
    for name in recorded:
        if Path(name).is_absolute() or Path(name).exists():
            continue
        from huggingface_hub import hf_hub_download

        try:
            config_file = hf_hub_download(name, "config.json", revision=revision)
        except (OSError, ValueError) as e:  # not a repo id; offline and not cached; no such repo or revision
            tried.append(f"{name}@{revision or 'main'} ({type(e).__name__})")
            continue
        return BaseModel(name, revision=revision, local_dir=Path(config_file).parent)
    raise FileNotFoundError(
        f"{run_dir}: the adapter's base model was not found (tried {', '.join(tried)}); a hub model must be in the "
        "HF cache (HF_HOME) when offline, an embedded base is rebuilt by its recipe (cached under REVIEWTUNE_HOME), "
        "or score the run's merged/ model"
    )


def _load_generative(run_dir: Path, summary: dict, task: TaskSpec, merged: bool, dequantize_nf4: bool | None) -> System:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = _device()
    remote = {"trust_remote_code": _remote_code(summary)}
    if merged and not (run_dir / "merged" / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir}: no merged/ model (train with --merge, or score base + adapter)")
    if merged:
        weights_dir = run_dir / "merged"
        model = AutoModelForCausalLM.from_pretrained(weights_dir, dtype=compute_dtype(), **remote).to(device)
        weight_paths = _weight_files(weights_dir)
        tokenizer_dir = weights_dir
        weights = f"merged ({str(model.dtype).removeprefix('torch.')})"
    elif (run_dir / ADAPTER_CONFIG).is_file():
        from peft import PeftModel

        base = _base_model(run_dir, summary, "causal")
        base_kwargs = base.from_pretrained_kwargs(summary)
        if summary.get("quantization") == "nf4":
            # Scored the way it was trained: the base quantised to NF4 (same config) + the LoRA adapter.
            base_model = load_pretrained(
                AutoModelForCausalLM, base.name_or_path, quantization_config=_nf4_config(summary),
                dtype=compute_dtype(), device_map={"": _device_index()}, **base_kwargs,
            )  # fmt: skip
            if dequantize_nf4 is None:
                dequantize_nf4 = device.type == "cpu"
            if dequantize_nf4:
                # bitsandbytes' CPU path de-quantises every NF4 weight on every matmul (~10x the cost of the
                # matmul for small models); de-quantising once gives the same weights, dequant(W_nf4), and the
                # same logits, at fp32 speed and fp32 memory.
                base_model = base_model.dequantize()
                weights = "nf4-dequantized"
            else:
                weights = "nf4"
        else:
            base_model = AutoModelForCausalLM.from_pretrained(base.name_or_path, dtype=compute_dtype(), **base_kwargs)
            base_model = base_model.to(device)
            weights = str(base_model.dtype).removeprefix("torch.")
        model = PeftModel.from_pretrained(base_model, run_dir)
        weight_paths = _weight_files(run_dir) + _weight_files(base.local_dir)
        tokenizer_dir = run_dir if (run_dir / "tokenizer_config.json").is_file() else base.local_dir
    elif (run_dir / "config.json").is_file():  # full fine-tuning: the model itself
        model = AutoModelForCausalLM.from_pretrained(run_dir, dtype=compute_dtype(), **remote).to(device)
        weight_paths = _weight_files(run_dir)
        tokenizer_dir = run_dir
        weights = str(model.dtype).removeprefix("torch.")
    else:
        raise FileNotFoundError(f"{run_dir}: neither {ADAPTER_CONFIG}, config.json nor merged/ found")
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, **remote)
    return System.of_model(run_dir, "generative", task, summary, model, tokenizer, weight_paths=weight_paths,
                           weights=weights)  # fmt: skip


def _load_classifier_model(run_dir: Path, summary: dict):
    """One classifier: a full model dir, ``merged/``, or a PEFT adapter on its base. A sequence classifier, or a
    token classifier for a keyword-attention run (``head: keyword_attention``)."""
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    token_level = summary.get("head") == KEYWORD_ATTENTION
    model_class = AutoModelForTokenClassification if token_level else AutoModelForSequenceClassification
    device = _device()
    remote = {"trust_remote_code": _remote_code(summary)}
    # The run names the directory a pipeline loads (``.``; ``merged`` in older LoRA runs): scored as deployed.
    pipeline_model = summary.get("pipeline_model")
    if pipeline_model not in (None, ".") and (run_dir / pipeline_model / "config.json").is_file():
        weights_dir = run_dir / pipeline_model
        model = model_class.from_pretrained(weights_dir, dtype=compute_dtype(), **remote)
        paths = _weight_files(weights_dir)
        tokenizer_dir = weights_dir
    elif (run_dir / ADAPTER_CONFIG).is_file():
        from peft import PeftModel

        base = _base_model(run_dir, summary, "roberta")
        base_kwargs = base.from_pretrained_kwargs(summary)
        # The head's shape and label names come from the run's own config.json (saved with id2label).
        has_config = (run_dir / "config.json").is_file()
        config = AutoConfig.from_pretrained(run_dir, **remote) if has_config else None
        config = config or AutoConfig.from_pretrained(base.name_or_path, **base_kwargs)
        base_model = model_class.from_pretrained(
            base.name_or_path, config=config, dtype=compute_dtype(), **base_kwargs
        )
        model = PeftModel.from_pretrained(base_model, run_dir)
        paths = _weight_files(run_dir) + _weight_files(base.local_dir)
        tokenizer_dir = run_dir if (run_dir / "tokenizer_config.json").is_file() else base.local_dir
    elif (run_dir / "config.json").is_file():
        model = model_class.from_pretrained(run_dir, dtype=compute_dtype(), **remote)
        paths = _weight_files(run_dir)
        tokenizer_dir = run_dir
    else:
        raise FileNotFoundError(f"{run_dir}: neither {ADAPTER_CONFIG}, config.json nor merged/ found")
    model.to(device).eval()
    return model, AutoTokenizer.from_pretrained(tokenizer_dir, **remote), paths


def id2label(model) -> list[str]:
    config = model.config
    return [str(config.id2label[i]) for i in range(config.num_labels)]


def _load_classifier(run_dir: Path, summary: dict, task: TaskSpec) -> System:
    components = summary.get("components")
    if task.name == "aspects" and summary.get("head") != KEYWORD_ATTENTION:
        if not components or set(components) != {"keywords", "keyword_sentiment"}:
            raise ValueError(
                f"{run_dir}/run_summary.json: an aspects classifier needs field 'head' set to "
                f"'{KEYWORD_ATTENTION}', or field 'components' naming the 'keywords' and 'keyword_sentiment' "
                f"sub-runs, got {components!r}"
            )
        parts = {}
        for name, sub in components.items():
            sub_dir = run_dir / sub
            sub_summary = read_json(sub_dir / "run_summary.json") if (sub_dir / "run_summary.json").is_file() else {}
            model, tokenizer, paths = _load_classifier_model(sub_dir, {**summary, **sub_summary})
            parts[name] = System.of_model(sub_dir, "classifier", task, sub_summary, model, tokenizer,
                                          max_length=_trained_length(sub_summary) or _trained_length(summary),
                                          weight_paths=paths)  # fmt: skip
        kw = parts["keywords"]
        names = id2label(kw.model)
        if sorted(names) != sorted(task.keywords):
            raise ValueError(f"{kw.run_dir}: model labels {names} differ from the task's keywords {task.keywords}")
        kw.thresholds = load_thresholds(kw.run_dir, names)
        return System(
            run_dir=run_dir,
            kind="classifier",
            task=task,
            summary=summary,
            components=parts,
            weight_paths=sorted({p for c in parts.values() for p in c.weight_paths}),
        )
    model, tokenizer, paths = _load_classifier_model(run_dir, summary)
    system = System.of_model(run_dir, "classifier", task, summary, model, tokenizer, weight_paths=paths)
    if system.keyword_attention:
        if list(id2label(model)[: len(task.keywords)]) != list(task.keywords):
            raise ValueError(f"{run_dir}: model labels {id2label(model)} do not start with the task's keywords")
        system.thresholds = load_thresholds(run_dir, task.keywords)
    return system


def load_system(run_dir: str | Path, merged: bool = False, dequantize_nf4: bool | None = None) -> System:
    """Load a run directory written by ``recipes/sft_qlora.py`` or ``recipes/classify_roberta.py``.

    Generative runs load the base the way it was trained (quantised to NF4 when ``quantization == "nf4"``)
    plus the PEFT adapter, or ``merged/`` with ``merged=True``. ``dequantize_nf4`` (default: on the CPU
    only) then replaces the 4-bit layers by their de-quantised weights: identical outputs, without
    bitsandbytes' per-call de-quantisation on the CPU. Classifiers load one model, or the ``keywords`` +
    ``keyword_sentiment`` pair named by ``components`` for aspects.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    summary = _read_summary(run_dir)
    task = _read_task(run_dir)
    if summary["task"] != task.name:
        raise ValueError(f"{run_dir}: run_summary.json says task {summary['task']!r}, task_spec.json {task.name!r}")
    if summary["kind"] == "generative":
        return _load_generative(run_dir, summary, task, merged, dequantize_nf4)
    return _load_classifier(run_dir, summary, task)
