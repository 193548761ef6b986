"""QLoRA (NF4) instruction fine-tuning of a causal LM on review data with trl's SFTTrainer.

The embedded default (bundled synthetic aspect reviews, the suite's own pre-trained base, 4-bit NF4,
CPU when there is no GPU):

    accelerate launch recipes/sft_qlora.py

A config plus command-line overrides (any SFTConfig / ModelConfig / data field):

    accelerate launch recipes/sft_qlora.py --config recipes/configs/sft_qlora_nsmc_small_instruct.yaml \
        --num_train_epochs 2 --merge

Several GPUs (DeepSpeed ZeRO-3 + QLoRA):

    accelerate launch --config_file accelerate_configs/deepspeed_zero3_qlora.yaml recipes/sft_qlora.py \
        --config recipes/configs/sft_qlora_8b_zero3.yaml

The same recipe runs 16/32-bit LoRA (``--load_in_4bit false``) and full fine-tuning
(``--load_in_4bit false --use_peft false``); ``--use_chat_template true`` trains instruct models through their
tokenizer's chat template. Re-launching into the same ``output_dir`` resumes from its last checkpoint;
``--resume_from_checkpoint DIR`` names one. The run directory's ``README.md`` (model card) says how to load
what was scored.
"""

from __future__ import annotations

import reviewtune  # noqa: F401  (first: its __init__ sets OpenMP and warning defaults before torch loads)

# isort: split

import functools
import logging
import sys
from pathlib import Path

from transformers import set_seed
from trl import SFTTrainer

from reviewtune.cli import run_cli
from reviewtune.evaluation.as_scored import harness_generation_config
from reviewtune.models.loading import (
    adapters_follow_compute_dtype,
    check_configuration,
    distributed_mode,
    is_sharded,
    load_causal_lm,
    load_trained_for_generation,
    merge_adapter,
    outside_zero3,
    peft_config_for,
    training_method,
)
from reviewtune.prompt_format import with_prompt_format
from reviewtune.provenance import provenance
from reviewtune.training import run_directory
from reviewtune.training.arguments import DataArguments, SFTScriptArguments
from reviewtune.training.callbacks import EvaluationKeepsRng, TrainingClock, rng_preserved
from reviewtune.training.learning_curves import LearningCurves, generative_metric
from reviewtune.training.model_card import recipe_command, write_model_cards
from reviewtune.training.recipe_setup import (
    ModelArguments,
    SFTTrainingConfig,
    checkpoint_to_resume,
    load_recipe_data,
    load_tokenizer,
    parse_recipe_args,
    plan_training,
    resolve_base_model,
    setup_logging,
    task_from_args,
)
from reviewtune.training.sample_predictions import answer_samples, print_sample_predictions, write_sample_predictions
from reviewtune.training.serving import push_run, save_generation_config
from reviewtune.training.sft_examples import check_packing, instruction_dataset

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "sft_qlora_default.yaml"


def parse_args(argv: list[str] | None = None):
    """(data, script, training, model) arguments; the embedded default YAML is the base without ``--config``."""
    dataclass_types = (DataArguments, SFTScriptArguments, SFTTrainingConfig, ModelArguments)
    return parse_recipe_args(dataclass_types, DEFAULT_CONFIG, argv, lora_target_modules="all-linear")


def main(argv: list[str] | None = None) -> dict:
    data_args, script_args, training_args, model_args = parse_args(argv)

    # Seed, logging, and the method (qlora / lora / full) checked against the distributed mode
    set_seed(training_args.seed)
    setup_logging(training_args, logger)
    mode = distributed_mode(training_args)
    method = check_configuration(model_args, training_args, merge=script_args.merge)
    logger.info("method %s, distributed mode %s, %d process(es)", method, mode, training_args.world_size)

    # Checkpoint detection
    resume_from = checkpoint_to_resume(training_args.output_dir, training_args.resume_from_checkpoint)

    # Data
    task = task_from_args(data_args)
    data = load_recipe_data(data_args, task, training_args)

    # Base model and tokenizer
    model_path, base_hash = resolve_base_model("causal", model_args, data.files["train"])
    tokenizer = load_tokenizer(model_path, model_args, training_args.trust_remote_code)
    task = with_prompt_format(task, script_args.use_chat_template, tokenizer)  # plain ###입력 text or chat template
    max_length = training_args.max_length
    with training_args.main_process_first(desc="building prompts"):
        train_dataset, train_stats = instruction_dataset(data.records["train"], task, tokenizer, max_length)
        eval_dataset, eval_stats = instruction_dataset(data.records["validation"], task, tokenizer, max_length)
    logger.info("train: %s; eval: %s", train_stats, eval_stats)
    samples = data.test_or_validation[: script_args.num_sample_predictions]
    answer = functools.partial(answer_samples, records=samples, task=task, max_length=max_length,
                               batch_size=script_args.generation_batch_size)  # fmt: skip

    # Model
    model = load_causal_lm(model_path, model_args, training_args)
    if training_args.packing or training_args.padding_free:
        check_packing(model, tokenizer, train_dataset)

    # Trainer (fully trained modules, e.g. embed_tokens of a small base, stay tied to the output embeddings)
    peft_config = peft_config_for(model, model_args)
    # Learning curves: losses, and greedy answers to validation reviews scored as the harness scores them
    curve_records = [] if is_sharded(mode) else data.records["validation"][: script_args.curve_samples]
    metric = generative_metric(tokenizer, task, curve_records, max_length, script_args.generation_batch_size)
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if len(eval_dataset) else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[EvaluationKeepsRng(), clock := TrainingClock(), LearningCurves(metric, title="sft_qlora")],
    )
    adapters_follow_compute_dtype(trainer.model, training_args)
    trainable_params, total_params = run_directory.count_parameters(trainer.model)
    logger.info("trainable params %d / total %d", trainable_params, total_params)

    # Sample predictions before training (rank 0; sharded models answer after training, reloaded on one device)
    before = None
    if not is_sharded(mode) and trainer.is_world_process_zero():
        with rng_preserved():
            before = answer(trainer.model, tokenizer)

    # Train (a complete run re-launched is not trained again: its outputs are kept)
    resume_from, kept = plan_training(trainer, training_args.output_dir, resume_from)
    if kept is not None:
        return kept
    train_result = trainer.train(resume_from_checkpoint=resume_from)
    peak_memory = run_directory.peak_memory_bytes()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)

    # Save: adapter (or full model) in safetensors + tokenizer; task spec and token counts on rank 0
    out = Path(training_args.output_dir)
    trainer.save_model(str(out))
    trainer.save_state()
    generation_config = harness_generation_config(trainer.model, tokenizer, task)  # greedy, as the harness decodes
    if trainer.is_world_process_zero():
        task.save(out)
        save_generation_config(out, generation_config)
        run_directory.save_token_frequencies(out, (r["text"] for r in data.records["train"]), tokenizer)

    # Evaluate
    eval_metrics = trainer.evaluate() if trainer.eval_dataset is not None else {}
    if eval_metrics:
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
    trainer.accelerator.wait_for_everyone()

    summary = {}
    if trainer.is_world_process_zero():
        before, after = answers_after_training(trainer, answer, before, model_path, model_args, training_args)
        prov = provenance(seed=training_args.seed, data_files=data.files, base_model_hash=base_hash)
        predictions = write_sample_predictions(out, task, samples, before, after, prov)
        summary = run_summary(trainer, train_result, clock, data, [train_stats, eval_stats], eval_metrics, prov, {
            "task": task.name, "base_model": model_path, "base_model_hash": base_hash, "method": method,
            "mode": mode, "resumed_from": resume_from, "trainable_params": trainable_params,
            "total_params": total_params, "peak_memory_bytes": peak_memory,
            "config": run_directory.resolved_config(data_args, script_args, model_args, training_args=training_args),
        })  # fmt: skip
        run_directory.write_run_summary(out, summary)

    # Merge (rank 0): 16-bit model from the de-quantised NF4 base + adapter
    if script_args.merge:
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():
            with outside_zero3(trainer.accelerator):
                merged_dir = merge_adapter(out, model_path, model_args, training_args, tokenizer, generation_config)
            logger.info("merged model written to %s", merged_dir)

    if trainer.is_world_process_zero():
        write_model_cards(out, recipe_command(__file__, argv))  # README.md: what was trained, how to load it
        push_run(out, training_args)
        print_sample_predictions(predictions, out, merged=script_args.merge)
    trainer.accelerator.wait_for_everyone()  # every process leaves together, after rank 0's writes
    return summary


def answers_after_training(trainer, answer, before, model_path, model_args, training_args) -> tuple:
    """(before, after) sample answers on rank 0. Sharded parameters (ZeRO-3/FSDP) cannot generate as they are: the
    run is reloaded on one device, and its base (the adapter disabled) gives the answers before training."""
    if not is_sharded(distributed_mode(training_args)):
        return before, answer(trainer.model, trainer.processing_class)
    with outside_zero3(trainer.accelerator):
        reloaded = load_trained_for_generation(training_args.output_dir, model_path, model_args, training_args)
        after = answer(reloaded, trainer.processing_class)
        if training_method(model_args) != "full":
            with reloaded.disable_adapter():
                before = answer(reloaded, trainer.processing_class)
    return before, after


def run_summary(trainer, train_result, clock, data, stats, eval_metrics: dict, prov: dict, facts: dict) -> dict:
    """``run_summary.json`` of a generative run: the common keys plus the SFT recipe's own."""
    losses = run_directory.loss_history(trainer)
    runtime = clock.seconds  # all of the run's training, resumed parts included
    tokens = run_directory.tokens_seen(trainer.state.log_history)  # trl's count of non-padding tokens, all processes
    train_stats, eval_stats = stats
    return {
        "recipe": "sft_qlora",
        "kind": "generative",
        "task": facts["task"],
        "base_model": facts["base_model"],
        "base_model_hash": facts["base_model_hash"],
        "quantization": "nf4" if facts["method"] == "qlora" else "none",
        "method": facts["method"],
        "train_examples": train_stats.kept,
        "eval_examples": eval_stats.kept,
        "shortened_examples": train_stats.shortened + eval_stats.shortened,
        "trainable_params": facts["trainable_params"],
        "total_params": facts["total_params"],
        "train_runtime_s": runtime,
        "train_tokens_per_s": tokens / runtime if runtime and tokens else None,
        "peak_memory_bytes": facts["peak_memory_bytes"],
        "final_train_loss": losses[-1][1] if losses else train_result.training_loss,
        "final_eval_loss": eval_metrics.get("eval_loss"),
        "config": facts["config"],
        "provenance": prov,
        # Beyond the common keys
        "split": data.split,
        "distributed_mode": facts["mode"],
        "world_size": trainer.args.world_size,
        "global_step": trainer.state.global_step,
        "resumed_from": facts["resumed_from"],
        "train_tokens": tokens,
        "train_loss_history": losses,
        "records_dropped": {split: r.get("dropped", {}) for split, r in data.reports.items()},
        "examples_dropped": {"train": train_stats.dropped, "validation": eval_stats.dropped},
        "shortened": {"train": train_stats.shortened, "validation": eval_stats.shortened},
    }


if __name__ == "__main__":
    sys.exit(run_cli(main))
