"""Fine-tune RoBERTa-family sequence classifiers (LoRA or full) on review records.

The embedded default (bundled synthetic aspect reviews, the suite's own pre-trained small RoBERTa,
CPU when there is no GPU) trains the two-model aspect system:

    accelerate launch recipes/classify_roberta.py

A config plus command-line overrides (any data / classifier / TrainingArguments / ModelConfig field):

    accelerate launch recipes/classify_roberta.py --config recipes/configs/classify_klue_roberta_base_nsmc.yaml \
        --num_train_epochs 2 --use_peft false

Heads come from the task (``reviewtune.classifier.heads_for_task``): ``sentiment`` / ``sentiment5``
(single-label), ``regression`` (the record's score) and ``aspects``: a multi-label ``keywords`` model
and a ``keyword_sentiment`` model over (review, keyword) pairs, trained into ``output_dir/keywords/``
and ``output_dir/keyword_sentiment/`` with one top-level ``run_summary.json`` naming both.

Each model directory holds the model (``use_peft: false``) or the LoRA adapter plus ``merged/`` (the
adapter merged into the base: ``transformers.pipeline("text-classification", model=DIR/merged)``
returns the label names; ``run_summary.json`` field ``pipeline_model`` names the directory to load),
the tokenizer, ``task_spec.json``, ``token_freqs.json``, ``classification_report.json``,
``run_summary.json`` and, for keywords, ``thresholds.json``. Re-launching into the same
``output_dir`` resumes each model from its last checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import sys
from pathlib import Path

import datasets
import torch
import transformers
from peft import get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig, TrlParser

from reviewtune import defaults
from reviewtune.atomic import atomic_write_json
from reviewtune.classifier import (
    ASPECT_COMPONENTS,
    MULTI_LABEL,
    ClassifierArguments,
    Head,
    build_examples,
    class_weights,
    greater_is_better,
    head_metrics,
    headline,
    heads_for_task,
    load_records,
    lora_config,
    make_compute_metrics,
    model_max_length,
    probabilities,
    save_thresholds,
    split_validation,
    tokenize_examples,
    tune_thresholds,
    weighted_loss,
)
from reviewtune.configs import DataArguments
from reviewtune.metrics import task_metrics
from reviewtune.provenance import model_hash, provenance
from reviewtune.rng import EvaluationKeepsRng
from reviewtune.run_summary import (
    already_complete,
    count_parameters,
    peak_memory_bytes,
    save_token_frequencies,
    write_run_summary,
)
from reviewtune.tasks import get_task

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "classify_roberta_default.yaml"
RECIPE = "classify_roberta"
# Per-model fields repeated in the aspect system's top-level run_summary.json.
COMPONENT_KEYS = (
    "train_examples",
    "eval_examples",
    "trainable_params",
    "train_runtime_s",
    "final_train_loss",
    "final_eval_loss",
    "metrics",
    "pipeline_model",
)


class WeightedLossTrainer(Trainer):
    """``Trainer`` whose loss carries class weights (the models' built-in losses take none).

    The loss is the mean over the batch, so the Trainer divides it by the gradient-accumulation steps.
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args, problem_type: str, class_weights: list[float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.problem_type = problem_type
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        weights = self.class_weights.to(outputs.logits.device) if self.class_weights is not None else None
        loss = weighted_loss(outputs.logits, labels, self.problem_type, weights)
        return (loss, outputs) if return_outputs else loss


def parse_args(argv: list[str] | None = None):
    """(data, classifier, training, model) arguments; the embedded default YAML is the base without ``--config``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv:
        argv = ["--config", str(DEFAULT_CONFIG), *argv]
    parser = TrlParser((DataArguments, ClassifierArguments, TrainingArguments, ModelConfig))
    # Hardware-dependent defaults (a config or the command line still overrides them), as in sft_qlora.py.
    on_gpu = torch.cuda.is_available()
    parser.set_defaults(use_cpu=not on_gpu, bf16=on_gpu and torch.cuda.is_bf16_supported(), lora_task_type="SEQ_CLS")
    config_path = argv[argv.index("--config") + 1]
    try:
        return parser.parse_args_and_config(argv)
    except ValueError as e:  # unknown keys: trl names them, we name the file they came from
        raise ValueError(f"{config_path}: {e}" if "config file" in str(e) else f"command line: {e}") from e


def check_model_args(model_args: ModelConfig) -> str:
    """The training method (``lora`` or ``full``); quantised models are refused."""
    if model_args.load_in_4bit or model_args.load_in_8bit:
        raise ValueError("classify_roberta trains 16/32-bit models: set load_in_4bit and load_in_8bit to false")
    if model_args.use_peft and model_args.lora_task_type not in ("SEQ_CLS", "CAUSAL_LM"):  # CAUSAL_LM: trl's default
        raise ValueError(f"lora_task_type must be SEQ_CLS for a classifier, got {model_args.lora_task_type!r}")
    return "lora" if model_args.use_peft else "full"


def summary_config(data_args, clf_args, training_args, model_args) -> dict:
    """The resolved configuration, flat like the YAML (the dataclasses' field names do not overlap)."""
    return {
        **dataclasses.asdict(data_args),
        **dataclasses.asdict(clf_args),
        **dataclasses.asdict(model_args),
        **training_args.to_dict(),
    }


def train_head(
    head: Head,
    task,
    records: dict,
    *,
    files: dict,
    data_report: dict,
    model_path: str,
    base_hash: str | None,
    method: str,
    data_args,
    clf_args,
    training_args,
    model_args,
) -> dict:
    """Train, save and evaluate one model into its directory; returns its run summary."""
    single = task.name != "aspects"
    output_dir = Path(training_args.output_dir) if single else Path(training_args.output_dir) / head.name
    metric = head.default_metric if clf_args.early_stopping_metric == "auto" else clf_args.early_stopping_metric
    training_args = dataclasses.replace(
        training_args,
        output_dir=str(output_dir),
        metric_for_best_model=metric,
        greater_is_better=greater_is_better(metric),
        label_names=["labels"],
    )
    logger.info("=== %s (%s, %d labels) -> %s", head.name, head.problem_type, head.num_labels, output_dir)

    # Checkpoint detection (an explicit resume_from_checkpoint applies to the model whose directory holds it)
    last_checkpoint = get_last_checkpoint(output_dir) if output_dir.is_dir() else None
    resume_from = training_args.resume_from_checkpoint
    if resume_from and not single and Path(resume_from).resolve().parent != output_dir.resolve():
        resume_from = None
    resume_from = resume_from or last_checkpoint
    if resume_from:
        logger.info("%s: resuming from %s", head.name, resume_from)

    # Tokenizer: keyword inputs are cut on the left so that "###키워드: {keyword}" at the end survives
    tokenizer = AutoTokenizer.from_pretrained(
        model_path,
        revision=model_args.model_revision,
        trust_remote_code=clf_args.trust_remote_code,
        truncation_side="left" if head.name == "keyword_sentiment" else "right",  # saved with the tokenizer
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    # Model: a fresh head with the label names in the config (id2label), LoRA SEQ_CLS with the head in full
    set_seed(training_args.seed)  # each model starts from the same seed, whatever was trained before it
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path,
        num_labels=head.num_labels,
        id2label=head.id2label,
        label2id=head.label2id,
        problem_type=head.problem_type,
        revision=model_args.model_revision,
        trust_remote_code=clf_args.trust_remote_code,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    max_length = model_max_length(model.config, clf_args.max_length)
    if method == "lora":
        model = get_peft_model(model, lora_config(model_args))
    trainable_params, total_params = count_parameters(model)
    share = 100 * trainable_params / total_params
    logger.info("%s: trainable params %d / total %d (%.2f%%)", head.name, trainable_params, total_params, share)

    # Data: examples per head, class weights from the training labels, tokenised without padding
    examples = {split: build_examples(recs, task, head) for split, recs in records.items()}
    for split in ("train", "validation"):
        if not examples[split]:
            raise ValueError(f"{head.name}: no {split} examples (check the {split} records' labels)")
    weights = class_weights(examples["train"], head, clf_args.class_weights, clf_args.max_class_weight)
    logger.info("%s: class weights %s", head.name, weights)
    with training_args.main_process_first(desc=f"tokenising {head.name}"):
        tokenized = {
            split: tokenize_examples(ex, tokenizer, max_length, desc=f"Tokenising {head.name} {split}")
            for split, ex in examples.items()
        }
    train_dataset, n_shortened, n_train_tokens = tokenized["train"]
    eval_dataset = tokenized["validation"][0]

    # Trainer: weighted loss, dynamic padding, length-grouped batches (config), early stopping on the metric
    callbacks = [EvaluationKeepsRng()]
    if clf_args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(clf_args.early_stopping_patience, clf_args.early_stopping_threshold))
    trainer = WeightedLossTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if torch.cuda.is_available() else None),
        compute_metrics=make_compute_metrics(head),
        callbacks=callbacks,
        problem_type=head.problem_type,
        class_weights=weights,
    )

    # Train (the best checkpoint is loaded at the end when load_best_model_at_end)
    train_result = trainer.train(resume_from_checkpoint=resume_from)
    if finished := already_complete(output_dir, resume_from, trainer.state.global_step):
        logger.warning("%s was already complete: no step left to train, run_summary.json kept", resume_from)
        return finished
    runtime = train_result.metrics["train_runtime"]
    epochs = trainer.state.epoch or 0.0
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)

    # Save: adapter (+ config.json with id2label) or full model, tokenizer; merged model for LoRA
    trainer.save_model(str(output_dir))
    trainer.save_state()
    pipeline_model = "."
    if trainer.is_world_process_zero():
        task.save(output_dir)
        save_token_frequencies(output_dir, (e["text"] for e in examples["train"]), tokenizer)
        if method == "lora":
            unwrapped = trainer.accelerator.unwrap_model(trainer.model)
            unwrapped.get_base_model().config.save_pretrained(output_dir)
            merged = copy.deepcopy(unwrapped).merge_and_unload()
            merged.save_pretrained(output_dir / "merged")
            tokenizer.save_pretrained(output_dir / "merged")
            task.save(output_dir / "merged")
            pipeline_model = "merged"
            del merged

    # Evaluate: validation (+ test) with the best model; keyword thresholds tuned on validation
    predictions = {
        split: trainer.predict(tokenized[split][0], metric_key_prefix=split)
        for split in ("validation", "test")
        if split in tokenized
    }
    eval_loss = predictions["validation"].metrics.get("validation_loss")
    # Gold labels come with the predictions: with train_sampling_strategy group_by_length the Trainer also
    # orders evaluation batches by length, so predictions are not in dataset order.
    gold = {split: p.label_ids for split, p in predictions.items()}
    thresholds = None
    report = {}
    if head.problem_type == MULTI_LABEL:
        val_probs = probabilities(predictions["validation"].predictions, head)
        tuned = clf_args.tune_thresholds
        by_keyword = tune_thresholds(val_probs, gold["validation"], list(head.label_names)) if tuned else {}
        thresholds = [by_keyword.get(k, 0.5) for k in head.label_names]
        for split in predictions:
            report[f"{split}_threshold_0.5"] = head_metrics(head, predictions[split].predictions, gold[split])
    for split in predictions:
        report[split] = head_metrics(head, predictions[split].predictions, gold[split], thresholds)

    summary = {
        "recipe": RECIPE,
        "kind": "classifier",
        "task": task.name,
        "component": None if single else head.name,
        "head": head.problem_type,
        "label_names": list(head.label_names),
        "base_model": model_path,
        "base_model_hash": base_hash,
        "quantization": "none",
        "method": method,
        "train_examples": len(train_dataset),
        "eval_examples": len(eval_dataset),
        "shortened_examples": n_shortened,
        "trainable_params": trainable_params,
        "total_params": total_params,
        "train_runtime_s": runtime,
        "train_tokens_per_s": n_train_tokens * epochs / runtime if runtime and epochs else None,
        "peak_memory_bytes": peak_memory_bytes(),
        "final_train_loss": losses[-1][1] if losses else train_result.training_loss,
        "final_eval_loss": eval_loss,
        "config": {**summary_config(data_args, clf_args, training_args, model_args), "max_length": max_length},
        "provenance": provenance(seed=training_args.seed, data_files=files, base_model_hash=base_hash),
        # Beyond the common keys
        "metrics": {split: headline(m) for split, m in report.items()},
        "pipeline_model": pipeline_model,
        "best_metric": {"name": metric, "value": trainer.state.best_metric},
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "class_weights": weights,
        "max_length": max_length,
        "global_step": trainer.state.global_step,
        "resumed_from": resume_from,
        "train_loss_history": losses,
        "records": data_report,
        "examples": {split: len(ex) for split, ex in examples.items()},
        "shortened": {split: n for split, (_, n, _) in tokenized.items()},
    }
    if trainer.is_world_process_zero():
        if thresholds is not None:
            by_keyword = dict(zip(head.label_names, thresholds, strict=True))
            for directory in [output_dir] + ([output_dir / "merged"] if method == "lora" else []):
                save_thresholds(directory, by_keyword, tuned=clf_args.tune_thresholds, tuned_on="validation")
        atomic_write_json(
            output_dir / "classification_report.json",
            {"component": head.name, **report, "provenance": summary["provenance"]},
        )
        write_run_summary(output_dir, summary)
    logger.info("%s: %s", head.name, {split: headline(m) for split, m in report.items()})
    return summary


def main(argv: list[str] | None = None) -> dict:
    data_args, clf_args, training_args, model_args = parse_args(argv)

    # Seed and logging
    set_seed(training_args.seed)
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    for lib_logger in (logger, logging.getLogger("reviewtune")):
        lib_logger.setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    method = check_model_args(model_args)

    # Data: records per split, unusable ones dropped and counted; a seeded validation slice if none is given
    task = get_task(
        data_args.task,
        instruction=data_args.instruction,
        label_names=data_args.task_label_names,
        keywords=data_args.keywords,
    )
    with training_args.main_process_first(desc="embedded default data"):
        embedded = data_args.train_file is None
        files = {
            "train": data_args.train_file or defaults.default_file("train"),
            "validation": data_args.validation_file or (defaults.default_file("validation") if embedded else None),
            "test": data_args.test_file or (defaults.default_file("test") if embedded else None),
        }
    records, data_report = {}, {}
    for split, path in files.items():
        if path:
            records[split], data_report[split] = load_records(path, task)
    if "validation" not in records:
        records["train"], records["validation"] = split_validation(
            records["train"], data_args.validation_fraction, training_args.seed
        )
        data_report["validation"] = {"from": "train", "fraction": data_args.validation_fraction}
    records["train"] = records["train"][: data_args.max_train_samples]
    records["validation"] = records["validation"][: data_args.max_eval_samples]
    logger.info("records: %s", {split: len(r) for split, r in records.items()})

    # Base model: the suite's embedded RoBERTa pre-trained on this train file, or a named checkpoint
    if model_args.model_name_or_path in (None, defaults.EMBEDDED):
        from reviewtune.base_models import ensure_base_model

        model_path, base_hash = ensure_base_model("roberta", files["train"])
        model_path = str(model_path)
    else:
        model_path = model_args.model_name_or_path
        base_hash = model_hash(model_path, model_args.model_revision)

    # Train each head (one, or keywords + keyword_sentiment for aspects)
    args = dict(data_args=data_args, clf_args=clf_args, training_args=training_args, model_args=model_args)
    components = {
        head.name: train_head(
            head,
            task,
            records,
            files=files,
            data_report=data_report,
            model_path=model_path,
            base_hash=base_hash,
            method=method,
            **args,
        )
        for head in heads_for_task(task)
    }
    out = Path(training_args.output_dir)
    if task.name != "aspects":
        summary = components[task.name]
    elif training_args.process_index == 0:
        summary = aspect_system_summary(out, task, components, records, **args)
    else:
        return {}

    if training_args.process_index == 0:
        print_samples(out, task, records.get("test") or records["validation"], clf_args.num_sample_predictions)
        print(f"\nRun directory: {out}\nRun summary:   {out / 'run_summary.json'}")
        print(f"Report:        {out / 'classification_report.json'}")
        for name, s in components.items():
            where = out if task.name != "aspects" else out / name
            print(f"{name}: pipeline('text-classification', model='{where / s['pipeline_model']}')")
        print(f"Metrics: {summary['metrics']}")
    return summary


def aspect_system_summary(out: Path, task, components, records, data_args, clf_args, training_args, model_args):
    """Top-level outputs of the two-model aspect system, scored as one system by the harness's own code."""
    from reviewtune.scoring import load_system, predict

    first = components["keywords"]
    common = {
        "recipe": RECIPE,
        "kind": "classifier",
        "task": task.name,
        "components": {name: name for name in ASPECT_COMPONENTS},
        "base_model": first["base_model"],
        "base_model_hash": first["base_model_hash"],
        "quantization": "none",
        "method": first["method"],
        "train_examples": len(records["train"]),
        "eval_examples": len(records["validation"]),
        "shortened_examples": sum(c["shortened_examples"] for c in components.values()),
        "trainable_params": sum(c["trainable_params"] for c in components.values()),
        "total_params": sum(c["total_params"] for c in components.values()),
        "train_runtime_s": sum(c["train_runtime_s"] for c in components.values()),
        "train_tokens_per_s": None,
        "peak_memory_bytes": peak_memory_bytes(),
        "final_train_loss": None,  # two models: see components_summary
        "final_eval_loss": None,
        "config": {**summary_config(data_args, clf_args, training_args, model_args), "max_length": first["max_length"]},
        "provenance": first["provenance"],
        "components_summary": {name: {k: c[k] for k in COMPONENT_KEYS} for name, c in components.items()},
        "records": first["records"],
    }
    tokens = [c["train_tokens_per_s"] * c["train_runtime_s"] for c in components.values() if c["train_tokens_per_s"]]
    if tokens and common["train_runtime_s"]:
        common["train_tokens_per_s"] = sum(tokens) / common["train_runtime_s"]
    task.save(out)
    write_run_summary(out, {**common, "metrics": {}})  # the harness's loader reads it below

    # System metrics: the saved run loaded and scored exactly as eval/compare.py does
    system = load_system(out)
    batch = training_args.per_device_eval_batch_size
    report = {}
    for split in ("validation", "test"):
        if split in records:
            preds = predict(system, records[split], batch_size=batch, progress=True)
            report[split] = task_metrics(task, records[split], preds, n_resamples=0)
    tokenizer = system.components["keywords"].tokenizer
    save_token_frequencies(out, (r["text"] for r in records["train"]), tokenizer)
    note = "keyword thresholds were tuned on validation, so validation scores are optimistic; test is not"
    atomic_write_json(
        out / "classification_report.json", {"system": report, "note": note, "provenance": common["provenance"]}
    )
    summary = {**common, "metrics": {split: headline(m) for split, m in report.items()}}
    write_run_summary(out, summary)
    return summary


def print_samples(out: Path, task, records: list[dict], n: int) -> None:
    """Predictions of the saved run (loaded as the harness loads it) on a few reviews."""
    if n <= 0:
        return
    from reviewtune.scoring import load_system, predict

    samples = records[:n]
    preds = predict(load_system(out), samples, batch_size=n, progress=False)
    key = {"aspects": "aspects", "regression": "score"}.get(task.name, "label")
    gold_key = {"aspects": "aspects", "regression": "score"}.get(task.name, "sentiment")
    print("\nSample predictions (gold -> predicted):")
    for r, p in zip(samples, preds, strict=True):
        gold, pred = r[gold_key], p[key]
        if task.name in ("sentiment", "sentiment5"):
            gold, pred = task.label_names[gold], task.label_names[pred]
        print(f"  {r['text'][:60]!r}\n    {gold} -> {pred}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
