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
(``--load_in_4bit false --use_peft false``). Re-launching into the same ``output_dir`` resumes from
its last checkpoint; ``--resume_from_checkpoint DIR`` names one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

import datasets
import torch
import transformers
from transformers import AutoTokenizer, set_seed
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser, get_peft_config

from reviewtune import defaults
from reviewtune.atomic import atomic_write_json
from reviewtune.configs import DataArguments
from reviewtune.generation import generate_answers
from reviewtune.model_loading import (
    adapters_follow_compute_dtype,
    check_configuration,
    distributed_mode,
    is_sharded,
    load_causal_lm,
    load_trained_for_generation,
    merge_adapter,
    outside_zero3,
)
from reviewtune.prompts import format_answer, parse_answer, to_instruction
from reviewtune.provenance import model_hash, provenance
from reviewtune.rng import EvaluationKeepsRng, rng_preserved
from reviewtune.run_summary import (
    already_complete,
    count_parameters,
    peak_memory_bytes,
    save_token_frequencies,
    write_run_summary,
)
from reviewtune.sft_data import (
    SFTScriptArguments,
    instruction_dataset,
    load_task_records,
    packing_keeps_examples_apart,
    split_validation,
)
from reviewtune.tasks import get_task

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "sft_qlora_default.yaml"
FLASH_ATTENTION = ("flash_attention_2", "flash_attention_3")


def parse_args(argv: list[str] | None = None):
    """(data, script, training, model) arguments; the embedded default YAML is the base without ``--config``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv:
        argv = ["--config", str(DEFAULT_CONFIG), *argv]
    parser = TrlParser((DataArguments, SFTScriptArguments, SFTConfig, ModelConfig), allow_abbrev=False)
    # Hardware-dependent defaults (a config or the command line still overrides them): trl defaults to
    # bf16, which TrainingArguments rejects on a machine without a bf16-capable GPU.
    on_gpu = torch.cuda.is_available()
    parser.set_defaults(
        use_cpu=not on_gpu, bf16=on_gpu and torch.cuda.is_bf16_supported(), lora_target_modules="all-linear"
    )
    config_path = argv[argv.index("--config") + 1]
    try:
        return parser.parse_args_and_config(argv)
    except ValueError as e:
        if "config file" in str(e):  # unknown YAML keys: trl names them, we name the file
            raise ValueError(f"{config_path}: {e}") from e
        raise


def sample_predictions(model, tokenizer, prompts: list[str], task, script_args) -> list[dict]:
    answers = generate_answers(
        model,
        tokenizer,
        prompts,
        max_new_tokens=script_args.max_new_tokens,
        batch_size=script_args.generation_batch_size,
    )
    return [{"answer": a, "valid": (p := parse_answer(a, task)).valid, "reason": p.reason} for a in answers]


def main(argv: list[str] | None = None) -> dict:
    data_args, script_args, training_args, model_args = parse_args(argv)

    # Seed and logging
    set_seed(training_args.seed)
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    for lib_logger in (logger, logging.getLogger("reviewtune")):
        lib_logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    mode = distributed_mode(training_args)
    method = check_configuration(model_args, training_args, merge=script_args.merge)
    logger.info("method %s, distributed mode %s, %d process(es)", method, mode, training_args.world_size)

    # Checkpoint detection
    last_checkpoint = None
    if os.path.isdir(training_args.output_dir):
        last_checkpoint = get_last_checkpoint(training_args.output_dir)
    resume_from = training_args.resume_from_checkpoint or last_checkpoint
    if resume_from is not None:
        logger.info("Resuming training from %s", resume_from)

    # Data
    task = get_task(
        data_args.task,
        instruction=data_args.instruction,
        label_names=data_args.task_label_names,
        keywords=data_args.keywords,
    )
    with training_args.main_process_first(desc="embedded default data"):
        train_file = data_args.train_file or defaults.default_file("train")
        validation_file = data_args.validation_file or (
            None if data_args.train_file else defaults.default_file("validation")
        )
        test_file = data_args.test_file or (None if data_args.train_file else defaults.default_file("test"))
    train_records, dropped = load_task_records(train_file, task)
    if validation_file:
        eval_records, eval_dropped = load_task_records(validation_file, task)
    else:
        train_records, eval_records = split_validation(train_records, data_args.validation_fraction, training_args.seed)
        eval_dropped = {}
    test_records = load_task_records(test_file, task)[0] if test_file else eval_records
    train_records = train_records[: data_args.max_train_samples]
    eval_records = eval_records[: data_args.max_eval_samples]

    # Base model and tokenizer
    if model_args.model_name_or_path in (None, defaults.EMBEDDED):
        from reviewtune.base_models import ensure_base_model

        model_path, base_hash = ensure_base_model("causal", train_file)
        model_path = str(model_path)
    else:
        model_path = model_args.model_name_or_path
        base_hash = model_hash(model_path, model_args.model_revision)
    tokenizer = AutoTokenizer.from_pretrained(
        model_path, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    with training_args.main_process_first(desc="building prompts"):
        train_dataset, train_stats = instruction_dataset(train_records, task, tokenizer, training_args.max_length)
        eval_dataset, eval_stats = instruction_dataset(eval_records, task, tokenizer, training_args.max_length)
    logger.info("train: %s; eval: %s", train_stats, eval_stats)
    samples = test_records[: script_args.num_sample_predictions]
    sample_prompts = [to_instruction(r, task, tokenizer, training_args.max_length)["prompt"] for r in samples]

    # Model
    model = load_causal_lm(model_path, model_args, training_args)
    if training_args.packing or training_args.padding_free:
        attn = model.config._attn_implementation
        if attn not in FLASH_ATTENTION:
            ok, diff = packing_keeps_examples_apart(model, tokenizer, train_dataset.select(range(3)).to_list())
            if not ok:
                raise ValueError(
                    f"packing/padding_free with attn_implementation={attn!r} lets packed examples attend to each "
                    f"other (per-example loss differs by {diff:.3g} from unpacked): use flash_attention_2 on a GPU "
                    "or set packing: false and padding_free: false."
                )
            logger.info("packing check with %s: per-example losses match unpacked (max diff %.2e)", attn, diff)

    # Trainer
    peft_config = get_peft_config(model_args)
    if peft_config is not None and peft_config.modules_to_save:
        # Fully trained modules (e.g. embed_tokens for a small base) stay tied to the output embeddings.
        peft_config.ensure_weight_tying = bool(model.config.get_text_config().tie_word_embeddings)
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if len(eval_dataset) else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[EvaluationKeepsRng()],
    )
    adapters_follow_compute_dtype(trainer.model, training_args)
    trainable_params, total_params = count_parameters(trainer.model)
    logger.info("trainable params %d / total %d (%.2f%%)", trainable_params, total_params,
                100 * trainable_params / total_params)  # fmt: skip

    # Sample predictions before training (rank 0; sharded models answer after training, reloaded on one device)
    before = None
    if not is_sharded(mode) and trainer.is_world_process_zero():
        with rng_preserved():
            before = sample_predictions(trainer.model, tokenizer, sample_prompts, task, script_args)

    # Train
    train_result = trainer.train(resume_from_checkpoint=resume_from)
    if finished := already_complete(training_args.output_dir, resume_from, trainer.state.global_step):
        logger.warning("%s was already complete: no step left to train, run_summary.json kept", resume_from)
        return finished
    peak_memory = peak_memory_bytes()
    tokens_seen = getattr(trainer, "_total_train_tokens", 0)  # trl's count of non-padding tokens, all processes
    runtime = train_result.metrics["train_runtime"]
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)

    # Save: adapter (or full model) in safetensors + tokenizer; task spec and token counts on rank 0
    trainer.save_model(training_args.output_dir)
    trainer.save_state()
    if trainer.is_world_process_zero():
        task.save(training_args.output_dir)
        save_token_frequencies(training_args.output_dir, (r["text"] for r in train_records), tokenizer)

    # Evaluate
    eval_metrics = trainer.evaluate() if trainer.eval_dataset is not None else {}
    if eval_metrics:
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
    trainer.accelerator.wait_for_everyone()

    after = None
    if trainer.is_world_process_zero():
        if not is_sharded(mode):
            after = sample_predictions(trainer.model, tokenizer, sample_prompts, task, script_args)
        else:  # sharded parameters cannot generate as they are: rank 0 reloads the run on one device
            with outside_zero3():
                reloaded = load_trained_for_generation(training_args.output_dir, model_path, model_args, training_args)
                after = sample_predictions(reloaded, tokenizer, sample_prompts, task, script_args)
                if method != "full":
                    with reloaded.disable_adapter():
                        before = sample_predictions(reloaded, tokenizer, sample_prompts, task, script_args)
                del reloaded

    summary = {}
    if trainer.is_world_process_zero():
        losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
        out = Path(training_args.output_dir)
        predictions = [
            {
                "id": r["id"],
                "review": r["text"],
                "reference": format_answer(r, task),
                "before": b["answer"] if b else None,
                "before_valid": b["valid"] if b else None,
                "after": a["answer"] if a else None,
                "after_valid": a["valid"] if a else None,
                "after_correct": (a["answer"].strip() == format_answer(r, task)) if a else None,
            }
            for i, r in enumerate(samples)
            for b, a in [((before or [None] * len(samples))[i], (after or [None] * len(samples))[i])]
        ]
        prov = provenance(
            seed=training_args.seed,
            data_files={"train": train_file, "validation": validation_file, "test": test_file},
            base_model_hash=base_hash,
        )
        atomic_write_json(
            out / "sample_predictions.json",
            {
                "task": task.name,
                "n": len(predictions),
                "valid_before": sum(bool(p["before_valid"]) for p in predictions) if before else None,
                "valid_after": sum(bool(p["after_valid"]) for p in predictions) if after else None,
                "correct_after": sum(bool(p["after_correct"]) for p in predictions) if after else None,
                "predictions": predictions,
                "provenance": prov,
            },
        )
        summary = {
            "recipe": "sft_qlora",
            "kind": "generative",
            "task": task.name,
            "base_model": model_path,
            "base_model_hash": base_hash,
            "quantization": "nf4" if method == "qlora" else "none",
            "method": method,
            "train_examples": len(train_dataset),
            "eval_examples": len(eval_dataset),
            "shortened_examples": train_stats.shortened + eval_stats.shortened,
            "trainable_params": trainable_params,
            "total_params": total_params,
            "train_runtime_s": runtime,
            "train_tokens_per_s": tokens_seen / runtime if runtime and tokens_seen else None,
            "peak_memory_bytes": peak_memory,
            "final_train_loss": losses[-1][1] if losses else train_result.training_loss,
            "final_eval_loss": eval_metrics.get("eval_loss"),
            "config": {
                **dataclasses.asdict(data_args),
                **dataclasses.asdict(script_args),
                **dataclasses.asdict(model_args),
                **training_args.to_dict(),
            },
            "provenance": prov,
            # Beyond the common keys
            "distributed_mode": mode,
            "world_size": training_args.world_size,
            "global_step": trainer.state.global_step,
            "resumed_from": resume_from,
            "train_tokens": tokens_seen,
            "train_loss_history": losses,
            "records_dropped": {"train": dropped, "validation": eval_dropped},
            "examples_dropped": {"train": train_stats.dropped, "validation": eval_stats.dropped},
            "shortened": {"train": train_stats.shortened, "validation": eval_stats.shortened},
        }
        write_run_summary(out, summary)

    # Merge (rank 0): 16-bit model from the de-quantised NF4 base + adapter
    if script_args.merge:
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():
            with outside_zero3():
                merged_dir = merge_adapter(training_args.output_dir, model_path, model_args, training_args, tokenizer)
            logger.info("merged model written to %s", merged_dir)

    if trainer.is_world_process_zero():
        print("\nSample predictions (reference | before -> after):")
        for p in predictions:
            print(f"  {p['review'][:40]!r}\n    {p['reference']} | {p['before']} -> {p['after']}")
        print(f"\nAdapter:            {out}\nRun summary:        {out / 'run_summary.json'}")
        print(f"Sample predictions: {out / 'sample_predictions.json'}")
        if script_args.merge:
            print(f"Merged model:       {out / 'merged'}")
    return summary


if __name__ == "__main__":
    main()
