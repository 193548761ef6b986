"""Fine-tune RoBERTa-family sequence classifiers (LoRA or full) on review records.

The embedded default (bundled synthetic aspect reviews, the suite's own pre-trained small RoBERTa,
CPU when there is no GPU) trains the two-model aspect system:

    accelerate launch recipes/classify_roberta.py

A config plus command-line overrides (any data / classifier / TrainingArguments / ModelConfig field):

    accelerate launch recipes/classify_roberta.py --config recipes/configs/classify_klue_roberta_base_nsmc.yaml \
        --num_train_epochs 2 --use_peft false

Heads come from the task (``reviewtune.training.classifier_heads.heads_for_task``): ``sentiment`` / ``sentiment5``
(single-label), ``regression`` (the record's score) and ``aspects``: by default one token-classification model
read by keyword attention (each keyword's presence and, from the tokens that reveal it, its polarity:
``reviewtune.evaluation.keyword_attention``); with ``--aspect_model pair`` a multi-label ``keywords`` model and a
``keyword_sentiment`` model over (review, keyword) pairs, trained into ``output_dir/keywords/`` and
``output_dir/keyword_sentiment/`` with one top-level ``run_summary.json`` naming both.

Each model directory holds the complete model that ``transformers.pipeline("text-classification", model=DIR)``
loads with its label names (a LoRA run: the adapter merged into its base; the adapter itself in ``DIR/adapter/``),
the tokenizer, ``task_spec.json``, ``token_freqs.json``, ``classification_report.json``,
``run_summary.json`` and, for keywords, ``thresholds.json``. A keyword-attention model is an
``AutoModelForTokenClassification`` (with ``thresholds.json``), scored through ``reviewtune.evaluation.systems``.
Re-launching into the same ``output_dir`` resumes each model from its last checkpoint.
"""

from __future__ import annotations

import reviewtune  # noqa: F401  (first: its __init__ sets OpenMP and warning defaults before torch loads)

# isort: split

import dataclasses
import logging
import os
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from peft import get_peft_model
from transformers import (
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    set_seed,
)
from trl import ModelConfig

from reviewtune.atomic import atomic_write_json, read_json
from reviewtune.cli import run_cli
from reviewtune.evaluation.metrics import task_metrics
from reviewtune.provenance import provenance
from reviewtune.training import run_directory
from reviewtune.training.arguments import ClassifierArguments, DataArguments
from reviewtune.training.callbacks import EvaluationKeepsRng, TrainingClock
from reviewtune.training.classifier_heads import (
    ASPECT_COMPONENTS,
    KEYWORD_ATTENTION,
    Head,
    build_examples,
    class_weights,
    greater_is_better,
    head_metrics,
    head_model,
    headline,
    heads_for_task,
    lora_config,
    make_compute_metrics,
    model_max_length,
    probabilities,
    tokenize_examples,
)
from reviewtune.training.classifier_trainer import WeightedLossTrainer
from reviewtune.training.learning_curves import LearningCurves, combine_curves
from reviewtune.training.model_card import recipe_command, write_model_cards
from reviewtune.training.recipe_setup import (
    ClassifierTrainingArguments,
    ModelArguments,
    checkpoint_to_resume,
    load_recipe_data,
    load_tokenizer,
    parse_recipe_args,
    plan_training,
    resolve_base_model,
    setup_logging,
    task_from_args,
)
from reviewtune.training.serving import ADAPTER_DIR, push_run, save_merged_classifier
from reviewtune.training.thresholds import DEFAULT_THRESHOLD, save_thresholds, tune_thresholds

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


def parse_args(argv: list[str] | None = None):
    """(data, classifier, training, model) arguments; the embedded default YAML is the base without ``--config``."""
    dataclass_types = (DataArguments, ClassifierArguments, ClassifierTrainingArguments, ModelArguments)
    return parse_recipe_args(dataclass_types, DEFAULT_CONFIG, argv, lora_task_type="SEQ_CLS")


def check_model_args(model_args: ModelConfig) -> str:
    """The training method (``lora`` or ``full``); quantised models are refused."""
    if model_args.load_in_4bit or model_args.load_in_8bit:
        raise ValueError("classify_roberta trains 16/32-bit models: set load_in_4bit and load_in_8bit to false")
    if model_args.use_peft and model_args.lora_task_type not in ("SEQ_CLS", "CAUSAL_LM"):  # CAUSAL_LM: trl's default
        raise ValueError(f"lora_task_type must be SEQ_CLS for a classifier, got {model_args.lora_task_type!r}")
    return "lora" if model_args.use_peft else "full"


def main(argv: list[str] | None = None) -> dict:
    data_args, clf_args, training_args, model_args = parse_args(argv)

    # Seed, logging, and the method (lora / full)
    set_seed(training_args.seed)
    setup_logging(training_args, logger)
    method = check_model_args(model_args)

    # Data: records per split, unusable ones dropped and counted; the recipes' one validation split if none is given
    task = task_from_args(data_args)
    data = load_recipe_data(data_args, task, training_args)

    # Base model: the suite's embedded RoBERTa pre-trained on this train file, or a named checkpoint
    model_path, base_hash = resolve_base_model("roberta", model_args, data.files["train"])

    # Train each head (one, or keywords + keyword_sentiment for aspect_model: pair)
    args = dict(data_args=data_args, clf_args=clf_args, training_args=training_args, model_args=model_args)
    heads = heads_for_task(task, clf_args.aspect_model)
    components = {
        head.name: train_head(head, task, data, model_path=model_path, base_hash=base_hash, method=method,
                              single=len(heads) == 1, **args)  # fmt: skip
        for head in heads
    }
    out = Path(training_args.output_dir)
    all_kept = all([c.pop("kept", False) for c in components.values()])  # every model already complete
    if len(heads) == 1:
        summary = components[heads[0].name]
    elif training_args.process_index != 0:
        PartialState().wait_for_everyone()  # every process leaves together, after rank 0's writes
        return {}
    elif all_kept and (out / "run_summary.json").is_file():
        summary = read_json(out / "run_summary.json")
    else:
        summary = aspect_system_summary(out, task, components, data, **args)

    if training_args.process_index == 0:
        write_model_cards(out, recipe_command(__file__, argv))  # README.md: what was trained, how to load it
        push_run(out, training_args)
        print_samples(out, task, data.test_or_validation, clf_args.num_sample_predictions)
        print(f"\nRun directory: {out}\nRun summary:   {out / 'run_summary.json'}")
        print(f"Report:        {out / 'classification_report.json'}")
        for head, s in zip(heads, components.values(), strict=True):
            where = out if len(heads) == 1 else out / head.name
            if head.problem_type != KEYWORD_ATTENTION:
                print(f"{head.name}: pipeline('text-classification', model='{where / s['pipeline_model']}')")
        print(f"Metrics: {summary['metrics']}")
    PartialState().wait_for_everyone()
    return summary


def train_head(head: Head, task, data, *, model_path: str, base_hash: str | None, method: str, single: bool,
               data_args, clf_args, training_args, model_args) -> dict:  # fmt: skip
    """Train, save and evaluate one model into its directory (``output_dir`` itself when ``single``); returns its
    run summary."""
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
    resume_from = training_args.resume_from_checkpoint
    if resume_from and not single and Path(resume_from).resolve().parent != output_dir.resolve():
        resume_from = None
    resume_from = checkpoint_to_resume(output_dir, resume_from)

    # Tokenizer: keyword inputs are cut on the left so that "###키워드: {keyword}" at the end survives
    side = "left" if head.name == "keyword_sentiment" else "right"  # saved with the tokenizer
    tokenizer = load_tokenizer(model_path, model_args, clf_args.trust_remote_code, truncation_side=side)

    # Model: a fresh head with the label names in the config (id2label), LoRA SEQ_CLS / TOKEN_CLS with the head in full
    set_seed(training_args.seed)  # each model starts from the same seed, whatever was trained before it
    model = head_model(
        head,
        model_path,
        revision=model_args.model_revision,
        trust_remote_code=clf_args.trust_remote_code,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    max_length = model_max_length(model.config, clf_args.max_length)
    if method == "lora":
        model = get_peft_model(model, lora_config(model_args, head))
    trainable_params, total_params = run_directory.count_parameters(model)
    logger.info("%s: trainable params %d / total %d", head.name, trainable_params, total_params)

    # Data: examples per head, class weights from the training labels, tokenised without padding
    examples = {split: build_examples(recs, task, head) for split, recs in data.records.items()}
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

    # Trainer: weighted loss, dynamic padding, length-grouped batches (config), early stopping on the metric
    callbacks = [EvaluationKeepsRng(), clock := TrainingClock(), LearningCurves(title=head.name)]
    if clf_args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(clf_args.early_stopping_patience, clf_args.early_stopping_threshold))
    trainer = WeightedLossTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"][0],
        eval_dataset=tokenized["validation"][0],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if torch.cuda.is_available() else None),
        compute_metrics=make_compute_metrics(head),
        callbacks=callbacks,
        problem_type=head.problem_type,
        class_weights=weights,
    )

    # Train (the best checkpoint is loaded at the end when load_best_model_at_end; a complete run is kept)
    resume_from, kept = plan_training(trainer, output_dir, resume_from)
    if kept is not None:
        return {**kept, "kept": True}
    train_result = trainer.train(resume_from_checkpoint=resume_from)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)

    # Save: the model with id2label and the tokenizer in output_dir (LoRA: merged; the adapter in adapter/)
    trainer.save_model(str(output_dir / ADAPTER_DIR) if method == "lora" else str(output_dir))
    trainer.save_state()
    pipeline_model = save_pipeline_model(trainer, output_dir, task, method, tokenizer, examples["train"])

    # Evaluate: validation (+ test) with the best model; keyword thresholds tuned on validation
    report, thresholds, eval_loss = evaluate_head(trainer, head, tokenized, clf_args)
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
        **training_facts(trainer, train_result, clock, tokenized),
        "trainable_params": trainable_params,
        "total_params": total_params,
        "peak_memory_bytes": run_directory.peak_memory_bytes(),
        "final_eval_loss": eval_loss,
        "config": {**run_directory.resolved_config(data_args, clf_args, model_args, training_args=training_args),
                   "max_length": max_length},  # fmt: skip
        "provenance": provenance(seed=training_args.seed, data_files=data.files, base_model_hash=base_hash),
        # Beyond the common keys
        "metrics": {split: headline(m) for split, m in report.items()},
        "pipeline_model": pipeline_model,
        "best_metric": {"name": metric, "value": trainer.state.best_metric},
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "class_weights": weights,
        "max_length": max_length,
        "resumed_from": resume_from,
        "records": data.reports,
        "split": data.split,
        "examples": {split: len(ex) for split, ex in examples.items()},
        "shortened": {split: n for split, (_, n, _) in tokenized.items()},
    }
    if trainer.is_world_process_zero():
        if thresholds is not None:
            by_keyword = dict(zip(head.keywords, thresholds, strict=True))
            save_thresholds(output_dir, by_keyword, tuned=clf_args.tune_thresholds, tuned_on="validation")
        atomic_write_json(
            output_dir / "classification_report.json",
            {"component": head.name, **report, "provenance": summary["provenance"]},
        )
        run_directory.write_run_summary(output_dir, summary)
    logger.info("%s: %s", head.name, {split: headline(m) for split, m in report.items()})
    return summary


def training_facts(trainer, train_result, clock, tokenized) -> dict:
    """Examples, time, tokens/s, losses and steps of one trained model (summary fields)."""
    train_dataset, n_shortened, n_train_tokens = tokenized["train"]
    runtime, epochs = clock.seconds, trainer.state.epoch or 0.0  # resumed parts of the run included
    losses = run_directory.loss_history(trainer)
    return {
        "train_examples": len(train_dataset),
        "eval_examples": len(tokenized["validation"][0]),
        "shortened_examples": n_shortened,
        "train_runtime_s": runtime,
        "train_tokens_per_s": n_train_tokens * epochs / runtime if runtime and epochs else None,
        "final_train_loss": losses[-1][1] if losses else train_result.training_loss,
        "global_step": trainer.state.global_step,
        "train_loss_history": losses,
    }


def save_pipeline_model(trainer, output_dir: Path, task, method: str, tokenizer, train_examples: list[dict]) -> str:
    """Task spec and token counts beside the model; for LoRA the adapter merged into the base, written into
    ``output_dir`` itself (config.json with id2label: what ``pipeline("text-classification")`` loads). Returns the
    directory to load, relative to ``output_dir``."""
    if trainer.is_world_process_zero():
        task.save(output_dir)
        run_directory.save_token_frequencies(output_dir, (e["text"] for e in train_examples), tokenizer)
        if method == "lora":
            save_merged_classifier(trainer.accelerator.unwrap_model(trainer.model), output_dir, tokenizer)
    return "."


def evaluate_head(trainer, head: Head, tokenized: dict, clf_args) -> tuple[dict, list[float] | None, float | None]:
    """Metrics of validation (+ test) with the trained model, the keyword thresholds tuned on validation, and the
    validation loss."""
    predictions = {
        split: trainer.predict(tokenized[split][0], metric_key_prefix=split)
        for split in ("validation", "test")
        if split in tokenized
    }
    # Gold labels come with the predictions: with train_sampling_strategy group_by_length the Trainer also
    # orders evaluation batches by length, so predictions are not in dataset order.
    gold = {split: p.label_ids for split, p in predictions.items()}
    thresholds, report = None, {}
    if head.keywords:  # keyword presence: per-keyword thresholds
        keywords = list(head.keywords)
        val_probs = probabilities(predictions["validation"].predictions, head)
        val_gold = gold["validation"][:, : len(keywords)]
        by_keyword = tune_thresholds(val_probs, val_gold, keywords) if clf_args.tune_thresholds else {}
        thresholds = [by_keyword.get(k, DEFAULT_THRESHOLD) for k in keywords]
        for split in predictions:
            report[f"{split}_threshold_0.5"] = head_metrics(head, predictions[split].predictions, gold[split])
    for split in predictions:
        report[split] = head_metrics(head, predictions[split].predictions, gold[split], thresholds)
    return report, thresholds, predictions["validation"].metrics.get("validation_loss")


def aspect_system_summary(out: Path, task, components, data, data_args, clf_args, training_args, model_args):
    """Top-level outputs of the two-model aspect system, scored as one system by the harness's own code."""
    from reviewtune.evaluation.predict import predict
    from reviewtune.evaluation.systems import load_system

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
        "train_examples": len(data.records["train"]),
        "eval_examples": len(data.records["validation"]),
        "shortened_examples": sum(c["shortened_examples"] for c in components.values()),
        "trainable_params": sum(c["trainable_params"] for c in components.values()),
        "total_params": sum(c["total_params"] for c in components.values()),
        "train_runtime_s": sum(c["train_runtime_s"] for c in components.values()),
        "train_tokens_per_s": None,
        "peak_memory_bytes": run_directory.peak_memory_bytes(),
        "final_train_loss": None,  # two models: see components_summary
        "final_eval_loss": None,
        "config": {
            **run_directory.resolved_config(data_args, clf_args, model_args, training_args=training_args),
            "max_length": first["max_length"],
        },
        "provenance": first["provenance"],
        "components_summary": {name: {k: c[k] for k in COMPONENT_KEYS} for name, c in components.items()},
        "records": first["records"],
        "split": data.split,
    }
    tokens = [c["train_tokens_per_s"] * c["train_runtime_s"] for c in components.values() if c["train_tokens_per_s"]]
    if tokens and common["train_runtime_s"]:
        common["train_tokens_per_s"] = sum(tokens) / common["train_runtime_s"]
    task.save(out)
    combine_curves(out, {name: out / name for name in ASPECT_COMPONENTS})  # both models' curves in one plot
    run_directory.write_run_summary(out, {**common, "metrics": {}})  # the harness's loader reads it below

    # System metrics: the saved run loaded and scored exactly as eval/compare.py does
    system = load_system(out)
    batch = training_args.per_device_eval_batch_size
    report = {}
    for split in ("validation", "test"):
        if split in data.records:
            preds = predict(system, data.records[split], batch_size=batch, progress=True)
            report[split] = task_metrics(task, data.records[split], preds, n_resamples=0)
    tokenizer = system.components["keywords"].tokenizer
    run_directory.save_token_frequencies(out, (r["text"] for r in data.records["train"]), tokenizer)
    note = "keyword thresholds were tuned on validation, so validation scores are optimistic; test is not"
    atomic_write_json(
        out / "classification_report.json", {"system": report, "note": note, "provenance": common["provenance"]}
    )
    summary = {**common, "metrics": {split: headline(m) for split, m in report.items()}}
    run_directory.write_run_summary(out, summary)
    return summary


def print_samples(out: Path, task, records: list[dict], n: int) -> None:
    """Predictions of the saved run (loaded as the harness loads it) on a few reviews."""
    if n <= 0:
        return
    from reviewtune.evaluation.predict import predict
    from reviewtune.evaluation.systems import load_system

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
    sys.exit(run_cli(main))
