"""Where a training step's time goes on a CPU: the embedded default's QLoRA SFT and RoBERTa classifier (issue 16).

    export REVIEWTUNE_HOME=...  # the embedded default's data and base models (built there on first use)
    OMP_NUM_THREADS=1 python benchmarks/cpu_step_profile.py --kind sft --out outputs/step_profile
    OMP_NUM_THREADS=1 python benchmarks/cpu_step_profile.py --kind sft --ablate --out outputs/step_ablation
    OMP_NUM_THREADS=1 python benchmarks/cpu_step_profile.py --kind classifier --out outputs/step_profile_clf

Model, data and trainer are built as the recipes build them (``recipes/sft_qlora.py``; ``recipes/classify_roberta.py``,
its first model: the aspects keywords model) from their default config plus ``--set KEY VALUE`` overrides, without
evaluation or checkpoints. ``--warmup`` steps run, then ``--steps`` steps are measured:

- profile (default): ``torch.profiler`` over the measured steps, each operator's self time put into one bucket
  (``bucket``): 4-bit dequantisation, vocabulary projection + loss, attention, other matrix products, optimizer,
  the rest, and the step time outside any operator (Python overhead);
- ``--ablate``: unprofiled seconds per step of config variants (``SFT_VARIANTS`` / ``CLASSIFIER_VARIANTS``), each
  adding or removing one cost, and real (non-padding) tokens per second.

Each run's config (the default YAML with the variant's changes: a ``null`` cannot be given on the command line) is
written to ``OUT/configs/``. Also reported: the batches' padding share and the load average. Prints a table and writes
``OUT/profile.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import reviewtune  # noqa: E402, F401  (first: its __init__ sets OpenMP defaults before torch loads)

# isort: split

import torch  # noqa: E402
import yaml  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed  # noqa: E402

from reviewtune.atomic import atomic_write_json  # noqa: E402
from reviewtune.training.recipe_setup import (  # noqa: E402
    load_recipe_data,
    load_tokenizer,
    resolve_base_model,
    task_from_args,
)

RECIPES = {"sft": "sft_qlora", "classifier": "classify_roberta"}
# --ablate: variant -> changes to the recipe's default config (the default: no activation checkpointing, LoRA
# dropout 0, NF4 base, trained tied embeddings, no packing, batch 16)
SFT_VARIANTS: dict[str, dict[str, Any]] = {
    "config": {},
    "with_activation_checkpointing": {"activation_checkpointing": True},
    "with_lora_dropout_0.05": {"lora_dropout": 0.05},
    "fp32_base_lora": {"load_in_4bit": False, "use_bnb_nested_quant": False},
    "embeddings_frozen": {"lora_modules_to_save": None},
    "packing": {"packing": True},
    "batch_32": {"per_device_train_batch_size": 32},
}
CLASSIFIER_VARIANTS: dict[str, dict[str, Any]] = {
    "config": {},
    "batch_64": {"per_device_train_batch_size": 64},
    "random_sampling": {"train_sampling_strategy": "random"},
    "lora_query_value": {"use_peft": True},
}
VARIANTS = {"sft": SFT_VARIANTS, "classifier": CLASSIFIER_VARIANTS}
PADDING_BATCHES = 50  # batches of the train dataloader over which the padding share is counted

OPTIMIZER = "optimizer"
DEQUANT = "4-bit dequantisation + bitsandbytes wrappers"
VOCAB = "vocabulary projection + loss"
ATTENTION = "attention"
MATMUL = "other matrix products"
REST = "rest (element-wise, norms, autograd, copies)"
OUTSIDE = "outside operators (Python overhead)"
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")
DEQUANT_NAMES = ("bitsandbytes", "dequantize", "matmul4bit")  # bitsandbytes' ops and its 4-bit autograd functions
VOCAB_NAMES = ("logprob", "cross_entropy", "log_softmax", "nll_loss")  # losses over the vocabulary (trl's included)


def load_recipe(kind: str) -> ModuleType:
    """The recipe script of ``kind`` as a module (its ``parse_args``, ``DEFAULT_CONFIG``, ...)."""
    name = RECIPES[kind]
    spec = importlib.util.spec_from_file_location(f"{name}_recipe", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def variant_config(recipe: ModuleType, changes: dict[str, Any], path: Path) -> Path:
    """Write the recipe's default config with ``changes`` to ``path`` (the recipe's parser refuses unknown keys)."""
    config = yaml.safe_load(Path(recipe.DEFAULT_CONFIG).read_text(encoding="utf-8"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**config, **changes}, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def recipe_argv(kind: str, config: Path, output_dir: Path, max_steps: int, overrides: list[str]) -> list[str]:
    """The recipe's command line for ``config``: ``max_steps`` steps, no evaluation, checkpoints or logging."""
    argv = ["--config", str(config), "--output_dir", str(output_dir), "--max_steps", str(max_steps),
            "--save_strategy", "no", "--eval_strategy", "no", "--logging_steps", "1000"]  # fmt: skip
    if kind == "classifier":
        argv += ["--load_best_model_at_end", "false"]  # needs evaluation
    return [*argv, *overrides]


class StepTimer(TrainerCallback):
    """Seconds of each optimizer step (forward, backward, update); a profiler, if given, over the steps after
    ``warmup``."""

    def __init__(self, warmup: int, profiler: torch.profiler.profile | None = None) -> None:
        self.warmup, self.profiler = warmup, profiler
        self.seconds: list[float] = []
        self._t = 0.0

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        if self.profiler is not None and state.global_step == self.warmup:
            self.profiler.__enter__()
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.seconds.append(time.perf_counter() - self._t)

    def on_train_end(self, args, state, control, **kwargs) -> None:
        if self.profiler is not None and len(self.seconds) > self.warmup:
            self.profiler.__exit__(None, None, None)


class Built(NamedTuple):
    """A recipe's trainer factory (given the callbacks) with its training arguments and vocabulary size."""

    make: Callable[[list[TrainerCallback]], Trainer]
    training_args: TrainingArguments
    vocab_size: int


def build_sft(recipe: ModuleType, argv: list[str]) -> Built:
    """The SFT recipe's trainer on its train split, built as ``recipes/sft_qlora.py`` ``main()`` builds it."""
    from trl import SFTTrainer

    from reviewtune.models.loading import (
        adapters_follow_compute_dtype,
        check_configuration,
        load_causal_lm,
        peft_config_for,
    )
    from reviewtune.prompt_format import with_prompt_format
    from reviewtune.training.sft_examples import check_packing, instruction_dataset

    data_args, script_args, training_args, model_args = recipe.parse_args(argv)
    set_seed(training_args.seed)
    check_configuration(model_args, training_args)
    task = task_from_args(data_args)
    data = load_recipe_data(data_args, task, training_args)
    model_path, _ = resolve_base_model("causal", model_args, data.files["train"])
    tokenizer = load_tokenizer(model_path, model_args, training_args.trust_remote_code)
    task = with_prompt_format(task, script_args.use_chat_template, tokenizer)
    dataset, _ = instruction_dataset(data.records["train"], task, tokenizer, training_args.max_length)
    model = load_causal_lm(model_path, model_args, training_args)
    if training_args.packing or training_args.padding_free:
        check_packing(model, tokenizer, dataset)
    peft_config = peft_config_for(model, model_args)

    def make(callbacks: list[TrainerCallback]) -> Trainer:
        trainer = SFTTrainer(model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config, callbacks=callbacks)  # fmt: skip
        adapters_follow_compute_dtype(trainer.model, training_args)
        return trainer

    return Built(make, training_args, model.config.get_text_config().vocab_size)


def build_classifier(recipe: ModuleType, argv: list[str]) -> Built:
    """The classifier recipe's first model (for aspects the keyword-attention model, or with ``aspect_model: pair``
    the keywords model), built as ``train_head`` in ``recipes/classify_roberta.py`` builds it."""
    from peft import get_peft_model
    from transformers import DataCollatorWithPadding

    from reviewtune.training.classifier_heads import (
        build_examples,
        class_weights,
        head_model,
        heads_for_task,
        lora_config,
        model_max_length,
        tokenize_examples,
    )
    from reviewtune.training.classifier_trainer import WeightedLossTrainer

    data_args, clf_args, training_args, model_args = recipe.parse_args(argv)
    set_seed(training_args.seed)
    method = recipe.check_model_args(model_args)
    task = task_from_args(data_args)
    data = load_recipe_data(data_args, task, training_args)
    model_path, _ = resolve_base_model("roberta", model_args, data.files["train"])
    head = heads_for_task(task, clf_args.aspect_model)[0]
    training_args = dataclasses.replace(training_args, label_names=["labels"])
    side = "left" if head.name == "keyword_sentiment" else "right"
    tokenizer = load_tokenizer(model_path, model_args, clf_args.trust_remote_code, truncation_side=side)
    set_seed(training_args.seed)
    model = head_model(head, model_path, revision=model_args.model_revision,
                       trust_remote_code=clf_args.trust_remote_code, dtype=model_args.dtype,
                       attn_implementation=model_args.attn_implementation)  # fmt: skip
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    max_length = model_max_length(model.config, clf_args.max_length)
    if method == "lora":
        model = get_peft_model(model, lora_config(model_args, head))
    examples = build_examples(data.records["train"], task, head)
    weights = class_weights(examples, head, clf_args.class_weights, clf_args.max_class_weight)
    dataset = tokenize_examples(examples, tokenizer, max_length, desc=f"Tokenising {head.name} train")[0]
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if torch.cuda.is_available() else None)

    def make(callbacks: list[TrainerCallback]) -> Trainer:
        return WeightedLossTrainer(model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer,
                                   data_collator=collator, callbacks=callbacks, problem_type=head.problem_type,
                                   class_weights=weights)  # fmt: skip

    return Built(make, training_args, model.config.vocab_size)


def padding_share(trainer: Trainer, n_batches: int = PADDING_BATCHES) -> dict[str, float]:
    """Real and batch tokens over the first batches of the trainer's own train dataloader."""
    real = padded = seen = 0
    for batch in trainer.get_train_dataloader():
        if seen == n_batches:
            break
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        real += ids.numel() if mask is None else int(mask.sum())  # no mask: packed or padding-free, no padding
        padded += ids.numel()
        seen += 1
    return {"batches_counted": seen, "real_tokens_per_batch": round(real / max(seen, 1), 1),
            "batch_tokens_per_batch": round(padded / max(seen, 1), 1),
            "padding_share": round(1 - real / max(padded, 1), 4)}  # fmt: skip


def bucket(chain: list[tuple[str, list]], vocab: int) -> str:
    """The cost an operator's self time belongs to, from (name, input shapes) of the operator and its callers
    (innermost first): optimizer (its step, and gradient clipping's ``_foreach`` ops), anything on a
    vocabulary-sized tensor, attention, else the innermost name that says matrix product or bitsandbytes (a
    matrix product of de-quantised weights is a matrix product)."""
    names = [name.lower() for name, _ in chain if not name.startswith("nn.Module")]
    if any("optimizer" in n or n.startswith("aten::_foreach") for n in names):
        return OPTIMIZER
    if any(isinstance(s, list) and vocab in s for _, shapes in chain for s in shapes):
        return VOCAB
    if any(word in n for n in names for word in VOCAB_NAMES):
        return VOCAB
    if any("attention" in n for n in names):
        return ATTENTION
    for n in names:
        if n in MATMUL_OPS or "mmbackward" in n:
            return MATMUL
        if any(word in n for word in DEQUANT_NAMES):
            return DEQUANT
    return REST


def profile_buckets(profiler: torch.profiler.profile, vocab: int, wall_s: float, steps: int) -> dict[str, Any]:
    """Milliseconds per step and share of each bucket, and the operators with the most self time."""
    totals: dict[str, float] = defaultdict(float)
    by_op: dict[str, float] = defaultdict(float)
    for event in profiler.events():
        chain, caller = [], event
        while caller is not None:
            chain.append((caller.name, caller.input_shapes or []))
            caller = caller.cpu_parent
        totals[bucket(chain, vocab)] += event.self_cpu_time_total
        by_op[event.name] += event.self_cpu_time_total
    totals[OUTSIDE] = max(wall_s * 1e6 - sum(totals.values()), 0.0)
    total = sum(totals.values())
    ordered = sorted(totals.items(), key=lambda x: -x[1])
    top_ops = sorted(by_op.items(), key=lambda x: -x[1])[:15]
    return {
        "profile_ms_per_step": {k: round(v / 1000 / steps, 2) for k, v in ordered},
        "profile_share": {k: round(v / total, 4) for k, v in ordered},
        "top_ops_ms_per_step": {k: round(v / 1000 / steps, 2) for k, v in top_ops},
    }


def run(kind: str, changes: dict[str, Any], overrides: list[str], warmup: int, steps: int, profile: bool,
        out: Path, name: str) -> dict[str, Any]:  # fmt: skip
    """Train ``warmup + steps`` steps of the recipe's config with ``changes`` and ``overrides``; time the last."""
    recipe = load_recipe(kind)
    config = variant_config(recipe, changes, out / "configs" / f"{kind}_{name}.yaml")
    argv = recipe_argv(kind, config, out / "trainer", warmup + steps, overrides)
    built = (build_sft if kind == "sft" else build_classifier)(recipe, argv)
    profiler = None
    if profile:
        profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
    timer = StepTimer(warmup, profiler)
    trainer = built.make([timer])
    pad = padding_share(trainer)
    trainer.train()
    measured = timer.seconds[warmup:]
    per_step = sum(measured) / len(measured)
    args = built.training_args
    real_per_step = pad["real_tokens_per_batch"] * args.gradient_accumulation_steps
    sequences = args.per_device_train_batch_size * args.gradient_accumulation_steps  # a packed one: several examples
    result = {
        "changes": changes,
        "overrides": overrides,
        "config": str(config),
        "seconds_per_step": round(per_step, 4),
        "steps_measured": len(measured),
        "sequences_per_s": round(sequences / per_step, 2),
        "real_tokens_per_s": round(real_per_step / per_step, 1),
        **pad,
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if profiler is not None:
        result.update(profile_buckets(profiler, built.vocab_size, sum(measured), len(measured)))
    return result


def print_profile(r: dict[str, Any]) -> None:
    print(f"\n{r['seconds_per_step']:.3f} s/step, {r['real_tokens_per_s']:.0f} real tokens/s, "
          f"padding {r['padding_share']:.1%}, load average {r['load_average']}")  # fmt: skip
    print(f"\n{'bucket':46s} {'ms/step':>8s} {'share':>7s}")
    for name, share in r["profile_share"].items():
        print(f"{name:46s} {r['profile_ms_per_step'][name]:8.1f} {share:7.1%}")
    print(f"\n{'operator (self time)':60s} {'ms/step':>8s}")
    for name, ms in r["top_ops_ms_per_step"].items():
        print(f"{name[:60]:60s} {ms:8.1f}")


def print_ablation(results: dict[str, dict[str, Any]]) -> None:
    base = results["config"]["seconds_per_step"]
    print(f"\n{'variant':32s} {'s/step':>8s} {'x config':>8s} {'tokens/s':>9s} {'padding':>8s}  load average")
    for name, r in results.items():
        print(f"{name:32s} {r['seconds_per_step']:8.3f} {r['seconds_per_step'] / base:8.2f} "
              f"{r['real_tokens_per_s']:9.0f} {r['padding_share']:8.1%}  {r['load_average']}")  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=tuple(RECIPES), default="sft")
    parser.add_argument("--out", default="outputs/step_profile")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--ablate", action="store_true", help="time the variants instead of profiling one run")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="recipe option for every run, e.g. --set max_train_samples 800")  # fmt: skip
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    out = Path(args.out)
    overrides = [x for key, value in args.set for x in (f"--{key}", value)]
    if args.ablate:
        results = {}
        for name, changes in VARIANTS[args.kind].items():
            results[name] = run(args.kind, changes, overrides, args.warmup, args.steps, False, out, name)
            print(name, json.dumps(results[name]), flush=True)
        print_ablation(results)
    else:
        results = {"profile": run(args.kind, {}, overrides, args.warmup, args.steps, True, out, "profile")}
        print_profile(results["profile"])
    report = {"kind": args.kind, "ablate": args.ablate, "overrides": overrides, "results": results}
    atomic_write_json(out / "profile.json", report)
    print(f"\nwritten: {out / 'profile.json'}")
    return report


if __name__ == "__main__":
    main()
