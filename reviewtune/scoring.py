"""Load any run directory and predict: generative runs (``generate`` / ``loglik`` / ``constrained``) and classifiers.

One prediction dict per record, the same for every kind of system (baselines included)::

    {"id", "label": int|None, "probs": list[float]|None, "aspects": list|None, "score": float|None,
     "invalid": bool, "invalid_reason": str|None, "raw": str|None}

A generated answer the parser cannot read is ``invalid`` with the parser's reason, never an exception.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from reviewtune.atomic import read_json
from reviewtune.classifier import load_thresholds
from reviewtune.constrained_decoding import constrained_answers, task_language
from reviewtune.generation import answer_end_ids, generate_answers, label_loglik, loglik_probs
from reviewtune.prompts import build_prompt, keyword_input, parse_answer
from reviewtune.quantization import compute_dtype, load_pretrained, nf4_config
from reviewtune.tasks import EMPTY_ASPECTS_ANSWER, TaskSpec

logger = logging.getLogger(__name__)

SCORING_MODES = ("generate", "loglik", "constrained", "classifier")
LOGLIK_TASKS = ("sentiment", "sentiment5")  # closed label sets
ADAPTER_CONFIG = "adapter_config.json"
_PADDING_OFFSET_MODEL_TYPES = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text")
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
    thresholds: np.ndarray | None = None  # keywords model: one decision threshold per keyword
    max_length: int | None = None  # longest input (tokens) the run trained on
    positions: int | None = None  # longest sequence the model can take at all
    weight_paths: list[Path] = field(default_factory=list)  # every file a deployment needs (size on disk)
    weights: str | None = None  # how the weights are held for scoring: nf4, nf4-dequantized, float32, ...

    @property
    def scoring_modes(self) -> tuple[str, ...]:
        if self.kind == "classifier":
            return ("classifier",)
        return ("generate", "loglik", "constrained") if self.task.name in LOGLIK_TASKS else ("generate", "constrained")

    @property
    def max_input_tokens(self) -> int:
        """Classifier input limit: as trained (``max_length``), within the model's positions; longer is cut."""
        return min(x for x in (self.max_length, self.positions, DEFAULT_MAX_INPUT_TOKENS) if x)

    def models(self) -> list[Any]:
        return [self.model] if self.model is not None else [c.model for c in self.components.values()]


def empty_prediction(record_id: str) -> dict:
    return {
        "id": str(record_id),
        "label": None,
        "probs": None,
        "aspects": None,
        "score": None,
        "invalid": False,
        "invalid_reason": None,
        "raw": None,
    }


# ---------------------------------------------------------------------------------------------- loading


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


def _positions(model) -> int | None:
    """Longest sequence the model can take: RoBERTa-style position ids start after the padding index."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None)
    if limit and config.model_type in _PADDING_OFFSET_MODEL_TYPES:
        limit -= (config.pad_token_id or 0) + 1
    return limit


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
    return System(
        run_dir=run_dir,
        kind="generative",
        task=task,
        summary=summary,
        model=model,
        tokenizer=tokenizer,
        max_length=_trained_length(summary),
        positions=_positions(model),
        weight_paths=weight_paths,
        weights=weights,
    )


def _load_classifier_model(run_dir: Path, summary: dict):
    """One sequence classifier: a full model dir, ``merged/``, or a PEFT ``SEQ_CLS`` adapter on its base."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    device = _device()
    remote = {"trust_remote_code": _remote_code(summary)}
    # The run names the directory a pipeline loads (``merged`` for LoRA runs): scored as deployed.
    pipeline_model = summary.get("pipeline_model")
    if pipeline_model not in (None, ".") and (run_dir / pipeline_model / "config.json").is_file():
        weights_dir = run_dir / pipeline_model
        model = AutoModelForSequenceClassification.from_pretrained(weights_dir, dtype=compute_dtype(), **remote)
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
        base_model = AutoModelForSequenceClassification.from_pretrained(
            base.name_or_path, config=config, dtype=compute_dtype(), **base_kwargs
        )
        model = PeftModel.from_pretrained(base_model, run_dir)
        paths = _weight_files(run_dir) + _weight_files(base.local_dir)
        tokenizer_dir = run_dir if (run_dir / "tokenizer_config.json").is_file() else base.local_dir
    elif (run_dir / "config.json").is_file():
        model = AutoModelForSequenceClassification.from_pretrained(run_dir, dtype=compute_dtype(), **remote)
        paths = _weight_files(run_dir)
        tokenizer_dir = run_dir
    else:
        raise FileNotFoundError(f"{run_dir}: neither {ADAPTER_CONFIG}, config.json nor merged/ found")
    model.to(device).eval()
    return model, AutoTokenizer.from_pretrained(tokenizer_dir, **remote), paths


def _id2label(model) -> list[str]:
    config = model.config
    return [str(config.id2label[i]) for i in range(config.num_labels)]


def _load_classifier(run_dir: Path, summary: dict, task: TaskSpec) -> System:
    components = summary.get("components")
    if task.name == "aspects":
        if not components or set(components) != {"keywords", "keyword_sentiment"}:
            raise ValueError(
                f"{run_dir}/run_summary.json: an aspects classifier needs field 'components' naming the "
                f"'keywords' and 'keyword_sentiment' sub-runs, got {components!r}"
            )
        parts = {}
        for name, sub in components.items():
            sub_dir = run_dir / sub
            sub_summary = read_json(sub_dir / "run_summary.json") if (sub_dir / "run_summary.json").is_file() else {}
            model, tokenizer, paths = _load_classifier_model(sub_dir, {**summary, **sub_summary})
            parts[name] = System(
                run_dir=sub_dir,
                kind="classifier",
                task=task,
                summary=sub_summary,
                model=model,
                tokenizer=tokenizer,
                max_length=_trained_length(sub_summary) or _trained_length(summary),
                positions=_positions(model),
                weight_paths=paths,
            )
        kw = parts["keywords"]
        names = _id2label(kw.model)
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
    return System(
        run_dir=run_dir,
        kind="classifier",
        task=task,
        summary=summary,
        model=model,
        tokenizer=tokenizer,
        max_length=_trained_length(summary),
        positions=_positions(model),
        weight_paths=paths,
    )


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


# ------------------------------------------------------------------------------------------- prediction


def fit_prompt(review: str, task: TaskSpec, tokenizer, max_prompt_tokens: int | None) -> str:
    """``build_prompt``, with the review (never the template) cut when the prompt exceeds the token budget."""
    prompt = build_prompt(review, task)
    if max_prompt_tokens is None:
        return prompt
    n = len(tokenizer(prompt)["input_ids"])
    if n <= max_prompt_tokens:
        return prompt
    review_ids = tokenizer(review, add_special_tokens=False)["input_ids"]
    budget = max(0, len(review_ids) - (n - max_prompt_tokens))
    while True:  # decode + re-tokenise can differ by a token; shrink until it fits
        prompt = build_prompt(tokenizer.decode(review_ids[:budget], skip_special_tokens=True), task)
        if budget == 0 or len(tokenizer(prompt)["input_ids"]) <= max_prompt_tokens:
            return prompt
        budget -= 1


def answer_token_budget(task: TaskSpec, tokenizer) -> int:
    """``max_new_tokens`` for ``generate``: the longest valid answer of the task, plus EOS and slack."""
    if task.name in LOGLIK_TASKS:
        longest = [" " + name for name in task.label_names]
    elif task.name == "aspects":
        worst = min(task.polarities, key=lambda p: -len(str(p)))
        full = ", ".join(f"{k}{worst}" for k in task.keywords)
        longest = [" " + full, " " + EMPTY_ASPECTS_ANSWER]
    else:
        longest = [" -0.000123456", " 12345.6"]
    return max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in longest) + 4


def _prompt_budget(system: System, answer_tokens: int) -> int | None:
    """Most prompt tokens: the trained ``max_length``, and room for the answer within the model's positions."""
    limits = [system.max_length, system.positions - answer_tokens if system.positions else None]
    limits = [x for x in limits if x]
    return max(8, min(limits)) if limits else None


def _predict_generate(
    system: System, records: list[dict], batch_size: int, progress: bool, constrained: bool = False
) -> list[dict]:
    task, tok = system.task, system.tokenizer
    max_new = answer_token_budget(task, tok)
    budget = _prompt_budget(system, max_new)
    prompts = [fit_prompt(r["text"], task, tok, budget) for r in records]
    if constrained:  # greedy, restricted to the task's answer language: valid by construction
        answers = constrained_answers(system.model, tok, prompts, task_language(task), max_new_tokens=max_new,
                                      batch_size=batch_size, progress=progress)  # fmt: skip
    else:
        answers = generate_answers(system.model, tok, prompts, max_new_tokens=max_new, batch_size=batch_size,
                                   progress=progress)  # fmt: skip
    out = []
    for r, answer in zip(records, answers, strict=True):
        pred = empty_prediction(r["id"])
        pred["raw"] = answer
        parsed = parse_answer(answer, task)
        if parsed.valid:
            pred.update(label=parsed.label, aspects=parsed.aspects, score=parsed.score)
        else:
            pred.update(invalid=True, invalid_reason=parsed.reason)
        out.append(pred)
    return out


def _predict_loglik(system: System, records: list[dict], batch_size: int, progress: bool) -> list[dict]:
    task, tok = system.task, system.tokenizer
    if task.name not in LOGLIK_TASKS:
        raise ValueError(f"scoring 'loglik' needs a closed label set ({', '.join(LOGLIK_TASKS)}), not {task.name!r}")
    completions = [" " + name for name in task.label_names]
    end_ids = answer_end_ids(tok)  # each label is scored with the end token training puts after it
    longest = max(len(tok(c, add_special_tokens=False)["input_ids"]) for c in completions) + len(end_ids)
    budget = _prompt_budget(system, longest)
    prompts = [fit_prompt(r["text"], task, tok, budget) for r in records]
    scores = label_loglik(system.model, tok, prompts, completions, end_ids=end_ids, batch_size=batch_size,
                          progress=progress)  # fmt: skip
    probs = loglik_probs(scores)
    out = []
    for r, row in zip(records, probs, strict=True):
        pred = empty_prediction(r["id"])
        pred.update(label=int(row.argmax()), probs=[float(p) for p in row])
        out.append(pred)
    return out


@torch.inference_mode()
def _classifier_outputs(system: System, texts: list[str], batch_size: int, progress: bool, desc: str) -> np.ndarray:
    """Raw logits ``[n, num_labels]`` of one classifier, batched by length (dynamic padding)."""
    model, tok = system.model, system.tokenizer
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    logits = np.zeros((len(texts), model.config.num_labels), dtype=np.float64)
    bar = tqdm(total=len(texts), desc=desc, unit="input", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tok([texts[i] for i in idx], truncation=True, max_length=system.max_input_tokens, padding=True,
                  return_tensors="pt")  # fmt: skip
        out = model(**{k: v.to(device) for k, v in enc.items()}).logits.float().cpu().numpy()
        logits[idx] = out
        bar.update(len(idx))
    bar.close()
    return logits


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _label_order(model_labels: list[str], wanted: list[str], what: str) -> list[int]:
    """Column of each wanted label in the model's output; the model's own order when it has generic names."""
    if sorted(model_labels) == sorted(wanted):
        return [model_labels.index(w) for w in wanted]
    if len(model_labels) == len(wanted):
        return list(range(len(wanted)))  # e.g. LABEL_0, LABEL_1: trained in the task's order
    raise ValueError(f"{what}: model has labels {model_labels}, the task needs {wanted}")


def _predict_classifier(system: System, records: list[dict], batch_size: int, progress: bool) -> list[dict]:
    task = system.task
    texts = [r["text"] for r in records]
    out = [empty_prediction(r["id"]) for r in records]
    if task.name == "regression":
        logits = _classifier_outputs(system, texts, batch_size, progress, "Classifying")
        for pred, row in zip(out, logits, strict=True):
            pred["score"] = float(row[0])
        return out
    if task.name in LOGLIK_TASKS:
        cols = _label_order(_id2label(system.model), task.label_names, str(system.run_dir))
        probs = _softmax(_classifier_outputs(system, texts, batch_size, progress, "Classifying"))[:, cols]
        for pred, row in zip(out, probs, strict=True):
            pred.update(label=int(row.argmax()), probs=[float(p) for p in row])
        return out
    # aspects: detect keywords (sigmoid >= per-keyword threshold), then one polarity per detected keyword.
    kw, pol = system.components["keywords"], system.components["keyword_sentiment"]
    kw_names = _id2label(kw.model)
    detected = 1 / (1 + np.exp(-_classifier_outputs(kw, texts, batch_size, progress, "Detecting keywords")))
    hits = detected >= kw.thresholds[None, :]
    pairs = [(i, kw_names[j]) for i in range(len(records)) for j in np.flatnonzero(hits[i])]
    pol_labels = _id2label(pol.model)
    pol_cols = _label_order(pol_labels, task.polarity_names, str(pol.run_dir))
    aspects: list[list[dict]] = [[] for _ in records]
    if pairs:
        pair_texts = [keyword_input(records[i]["text"], k, task) for i, k in pairs]
        pol_logits = _classifier_outputs(pol, pair_texts, batch_size, progress, "Keyword polarity")[:, pol_cols]
        for (i, k), row in zip(pairs, pol_logits, strict=True):
            aspects[i].append({"keyword": k, "polarity": int(task.polarities[int(row.argmax())])})
    order = {k: n for n, k in enumerate(task.keywords)}
    for pred, a in zip(out, aspects, strict=True):
        pred["aspects"] = sorted(a, key=lambda x: order[x["keyword"]])
    return out


def predict(
    system: System,
    records: list[dict],
    scoring: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> list[dict]:
    """One prediction dict per record, in order. ``scoring``: ``generate``/``loglik``/``constrained`` (generative
    runs), ``classifier`` (or ``None``: the system's first mode)."""
    scoring = scoring or system.scoring_modes[0]
    if scoring not in system.scoring_modes:
        raise ValueError(
            f"{system.run_dir}: scoring {scoring!r} is not available for a {system.kind} run on task "
            f"{system.task.name!r}; choose one of {', '.join(system.scoring_modes)}"
        )
    if not records:
        return []
    if scoring in ("generate", "constrained"):
        return _predict_generate(system, records, batch_size, progress, constrained=scoring == "constrained")
    if scoring == "loglik":
        return _predict_loglik(system, records, batch_size, progress)
    return _predict_classifier(system, records, batch_size, progress)
