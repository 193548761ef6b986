"""Pre-training small base models from scratch: tokenizer training, a small Llama/Qwen2 or RoBERTa, CLM/MLM.

The suite's embedded base models are built with this module (see ``reviewtune.base_models``), so that
QLoRA and the classifier adapt a pre-trained model, as they do in real use, on a machine that cannot
reach the Hugging Face hub.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import os
import time
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

from reviewtune.atomic import atomic_write_bytes, atomic_write_json
from reviewtune.provenance import provenance
from reviewtune.training.arguments import KINDS, TRAINED_MODULES, PretrainArguments

logger = logging.getLogger(__name__)

DIM_MULTIPLE = 64  # model dimensions are rounded up to this (see build_model)
CAUSAL_SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
# RoBERTa's own order: <s>=0, <pad>=1, </s>=2, <unk>=3; <mask> last.
ROBERTA_SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "pad_token": "<pad>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}


# ----------------------------------------------------------------------------------------------- corpus


def read_corpus_counts(path: str | os.PathLike) -> tuple[list[str], dict[str, Any]]:
    """Texts of a corpus file plus counts ``{"read", "kept", "dropped": {reason: n}, "nfc_normalised"}``.

    Formats: ``*.jsonl`` (the ``text`` field of each object), NSMC TSV (header ``id<TAB>document<TAB>label``),
    anything else one text per line; any of them gzip-compressed when the name ends in ``.gz``. UTF-8 (a BOM
    is accepted); Hangul is normalised to NFC. Empty texts are dropped and counted; a file that is not
    UTF-8 or a malformed JSON line is an error naming file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    name = path.name.removesuffix(".gz")
    opener = gzip.open if path.name.endswith(".gz") else open
    texts: list[str] = []
    dropped: Counter[str] = Counter()
    read = normalised = 0
    with opener(path, "rb") as raw:
        stream = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        mode = "jsonl" if name.endswith(".jsonl") else "lines"
        lineno = 0
        try:
            for lineno, line in enumerate(stream, 1):
                line = line.rstrip("\r\n")
                if lineno == 1 and mode == "lines" and line.split("\t")[:2] == ["id", "document"]:
                    mode = "tsv"  # NSMC header line, not a text
                    continue
                read += 1
                if mode == "jsonl":
                    if not line.strip():
                        dropped["blank_line"] += 1
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from e
                    if not isinstance(obj, dict):
                        raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                    if "text" not in obj:
                        dropped["missing_text"] += 1
                        continue
                    text = obj["text"]
                    if text is not None and not isinstance(text, str):
                        raise ValueError(f"{path}:{lineno}: field 'text' is {type(text).__name__}, not a string")
                elif mode == "tsv":
                    cols = line.split("\t")
                    if len(cols) != 3:
                        dropped["malformed_row"] += 1
                        continue
                    text = cols[1]
                else:
                    text = line
                if text is None or not text.strip():
                    dropped["empty_text"] += 1
                    continue
                nfc = unicodedata.normalize("NFC", text.strip())
                normalised += nfc != text.strip()
                texts.append(nfc)
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{lineno + 1}: not UTF-8 ({e.reason}); convert the file to UTF-8") from e
    counts = {"read": read, "kept": len(texts), "dropped": dict(dropped), "nfc_normalised": normalised}
    assert counts["read"] == counts["kept"] + sum(dropped.values())
    return texts, counts


def read_corpus(path: str | os.PathLike) -> list[str]:
    """Texts of a corpus file (see ``read_corpus_counts`` for the formats); drops are logged."""
    texts, counts = read_corpus_counts(path)
    logger.info("corpus %s: read %d, kept %d, dropped %s", path, counts["read"], counts["kept"], counts["dropped"])
    return texts


# -------------------------------------------------------------------------------------------- tokenizer

TASK_VOCABULARY_REPEAT = 100  # copies of each task-vocabulary text among the tokenizer's training texts


def task_vocabulary_texts(task_name: str | None, repeat: int = TASK_VOCABULARY_REPEAT) -> list[str]:
    """Texts that teach a tokenizer a task's words: its prompt template around an empty review, and every answer.

    ``repeat`` copies of each, so that their merges pass ``min_frequency``. Empty for ``None``.
    """
    if not task_name:
        return []
    from reviewtune.prompts import build_prompt, keyword_input
    from reviewtune.tasks import EMPTY_ASPECTS_ANSWER, get_task

    task = get_task(task_name)
    texts = [build_prompt("", task)]
    if task.name == "aspects":
        texts += [keyword_input("", k, task) for k in task.keywords]
        texts += [f" {k}{p}," for k in task.keywords for p in task.polarities] + [" " + EMPTY_ASPECTS_ANSWER]
    texts += [" " + name for name in task.label_names]
    return texts * repeat


def train_tokenizer(texts: list[str], kind: str, vocab_size: int, base_tokenizer=None, min_frequency: int = 2):
    """Train a byte-level BPE tokenizer on ``texts`` (or adapt ``base_tokenizer`` with ``train_new_from_iterator``).

    causal: ``<s>`` prepended by the post-processor (like Llama); ``</s>`` is the end-of-sequence token that
    pre-training appends to each text and trl appends to each completion, so the model learns to stop.
    roberta: ``<s> text </s>`` via RoBERTa's post-processor, with ``<pad>``, ``<unk>`` and ``<mask>``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")

    def batches(size: int = 1000):
        for i in range(0, len(texts), size):
            yield texts[i : i + size]

    if base_tokenizer is not None:
        if isinstance(base_tokenizer, str | os.PathLike):
            base_tokenizer = AutoTokenizer.from_pretrained(base_tokenizer)
        return base_tokenizer.train_new_from_iterator(batches(), vocab_size=vocab_size, length=len(texts))

    specials = CAUSAL_SPECIAL_TOKENS if kind == "causal" else ROBERTA_SPECIAL_TOKENS
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(specials.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tok.train_from_iterator(batches(), trainer=trainer, length=len(texts))
    ids = {name: tok.token_to_id(t) for name, t in specials.items()}
    if kind == "causal":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", ids["bos_token"])]
        )
        padding_side = "left"  # decoder-only: generation needs left padding; trl pads its own batches
    else:
        # Positional only: (sep, cls, trim_offsets, add_prefix_space).
        tok.post_processor = processors.RobertaProcessing(
            ("</s>", ids["eos_token"]), ("<s>", ids["bos_token"]), True, False
        )
        padding_side = "right"
    extra = {"sep_token": "</s>", "cls_token": "<s>"} if kind == "roberta" else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side=padding_side, **specials, **extra)


# ---------------------------------------------------------------------------------------------- model


def build_model(kind: str, tokenizer, args: PretrainArguments):
    """A freshly initialised causal LM (``LlamaForCausalLM``, or ``Qwen2ForCausalLM`` with sliding-window layers)
    or ``RobertaForMaskedLM``, sized by ``args``."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        RobertaConfig,
        RobertaForMaskedLM,
    )

    common = dict(
        # Every dimension a multiple of 64 (the rows past the tokenizer's vocabulary are never input): 4-bit
        # kernels and tensor cores want such shapes (bitsandbytes' packed CPU kernel needs out_features % 32).
        vocab_size=-(-len(tokenizer) // DIM_MULTIPLE) * DIM_MULTIPLE,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        intermediate_size=args.intermediate_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if kind == "causal":
        causal = dict(
            num_key_value_heads=args.num_heads,
            max_position_embeddings=args.max_position_embeddings,
            tie_word_embeddings=True,
            attention_dropout=args.dropout,
        )
        if not args.sliding_window_layers:
            return LlamaForCausalLM(LlamaConfig(**common, **causal))
        # Llama's config has no sliding-window layers; Qwen2's (a Llama with biases on q/k/v) has them per layer.
        n = args.sliding_window_layers
        layer_types = ["sliding_attention"] * n + ["full_attention"] * (args.num_layers - n)
        config = Qwen2Config(
            **common,
            **causal,
            use_sliding_window=True,
            sliding_window=args.sliding_window,
            layer_types=layer_types,
        )
        return Qwen2ForCausalLM(config)
    if kind == "roberta":
        # RoBERTa's positions start after the padding index, hence +2.
        config = RobertaConfig(
            **common,
            max_position_embeddings=args.max_position_embeddings + 2,
            type_vocab_size=1,
            hidden_dropout_prob=args.dropout,
            attention_probs_dropout_prob=args.dropout,
        )
        return RobertaForMaskedLM(config)
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


# ------------------------------------------------------------------------------------------- training


def freeze_for_pretraining(model, trained_modules: str) -> int:
    """Keep the parameters that ``trained_modules`` excludes at their initialisation; returns how many tensors.

    ``embeddings``: only the embedding modules train (``embed_tokens``, RoBERTa's ``embeddings.*``; a tied output
    layer shares the token embeddings), the transformer blocks stay random. See docs/learning.md.
    """
    if trained_modules not in TRAINED_MODULES:
        raise ValueError(f"trained_modules must be one of {', '.join(TRAINED_MODULES)}, got {trained_modules!r}")
    if trained_modules == "all":
        return 0
    frozen = 0
    for name, param in model.named_parameters():
        if "embed" not in name:
            param.requires_grad_(False)
            frozen += 1
    return frozen


def pack_blocks(texts: list[str], tokenizer, kind: str, block_size: int, packing: bool = True):
    """Tokenise ``texts`` into training sequences (a ``datasets.Dataset``) and count their tokens.

    Packed: causal ``<s> text </s>`` documents concatenated into full blocks of ``block_size`` (Llama-style);
    roberta texts joined by ``</s>`` with each block wrapped in ``<s> ... </s>`` (RoBERTa's FULL-SENTENCES);
    the remainder is dropped. Unpacked: one sequence per text, ``<s> text </s>``, cut to ``block_size``
    (the collator pads each batch).
    """
    from datasets import Dataset

    start = tokenizer.bos_token_id if kind == "causal" else tokenizer.cls_token_id
    end = tokenizer.eos_token_id if kind == "causal" else tokenizer.sep_token_id

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        if not packing:
            return {"input_ids": [[start, *x[: block_size - 2], end] for x in ids]}
        return {"input_ids": [[start, *x, end] if kind == "causal" else [*x, end] for x in ids]}

    body = block_size if kind == "causal" else block_size - 2

    def group(batch):
        flat = [t for ids in batch["input_ids"] for t in ids]
        n = len(flat) // body * body
        blocks = [flat[i : i + body] for i in range(0, n, body)]
        if kind == "roberta":
            blocks = [[start, *b, end] for b in blocks]
        return {"input_ids": blocks}

    ds = Dataset.from_dict({"text": texts})
    ds = ds.map(tokenize, batched=True, remove_columns=["text"], desc="Tokenizing corpus")
    n_tokens = sum(len(x) for x in ds["input_ids"])
    if packing:
        # Large groups keep the dropped remainder small (one partial block per group).
        ds = ds.map(group, batched=True, batch_size=10_000, desc=f"Packing into blocks of {block_size}")
    return ds, n_tokens


def _time_budget_callback(max_minutes: float):
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        """Stop training when the wall-clock budget is spent (Trainer has no time-based stop)."""

        def __init__(self):
            self.start = time.monotonic()
            self.stopped = False

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() - self.start > max_minutes * 60:
                self.stopped = control.should_training_stop = True
                logger.info("time budget of %.2f min reached at step %d; stopping", max_minutes, state.global_step)

    return TimeBudget()


def plot_loss(log_history: list[dict], path: str | os.PathLike, title: str) -> Path:
    """Training loss per step (and eval loss before/after) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o", label="held-out loss (before, after)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def pretrain(args: PretrainArguments, output_dir: str | os.PathLike) -> dict[str, Any]:
    """Train a tokenizer and pre-train a model on ``args.corpus_file``; save both to ``output_dir``.

    Writes a standard model directory (safetensors + tokenizer), ``pretrain_log.json`` (summary, log history
    and provenance) and ``pretrain_loss.png``. Returns the summary: steps, minutes, first/last training loss and
    held-out loss before/after.
    """
    import torch
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments, set_seed

    output_dir = Path(output_dir)
    t0 = time.monotonic()
    set_seed(args.seed)
    if not args.corpus_file:
        raise ValueError("corpus_file is required")

    # Data and tokenizer
    texts, corpus_counts = read_corpus_counts(args.corpus_file)
    if args.max_corpus_texts is not None:
        texts = texts[: args.max_corpus_texts]
    if not texts:
        raise ValueError(f"{args.corpus_file}: no texts to pre-train on ({corpus_counts})")
    logger.info("corpus %s: %s; using %d texts", args.corpus_file, corpus_counts, len(texts))
    tokenizer = train_tokenizer(
        texts + task_vocabulary_texts(args.task_vocabulary, max(args.min_frequency, TASK_VOCABULARY_REPEAT)),
        args.kind,
        args.vocab_size,
        base_tokenizer=args.tokenizer_name_or_path,
        min_frequency=args.min_frequency,
    )
    tokenizer.model_max_length = args.max_position_embeddings
    if tokenizer.pad_token is None:  # an adapted tokenizer may have none
        tokenizer.pad_token = tokenizer.eos_token
    if args.kind == "roberta" and tokenizer.mask_token is None:
        raise ValueError(f"tokenizer {args.tokenizer_name_or_path} has no mask token; masked-LM needs one")
    blocks, n_tokens = pack_blocks(texts, tokenizer, args.kind, args.max_seq_length, args.packing)
    # Hold out about eval_blocks * max_seq_length tokens (at most a tenth of the data).
    per_sequence = args.max_seq_length if args.packing else max(1, n_tokens // max(1, len(blocks)))
    n_eval = min(args.eval_blocks * args.max_seq_length // per_sequence, len(blocks) // 10)
    if len(blocks) - n_eval < 1:
        raise ValueError(
            f"{args.corpus_file}: {n_tokens} tokens make {len(blocks)} blocks of {args.max_seq_length}; "
            "need more text or a smaller max_seq_length"
        )
    split = blocks.train_test_split(test_size=n_eval, seed=args.seed) if n_eval else None
    train_ds, eval_ds = (split["train"], split["test"]) if split else (blocks, None)

    # Model
    model = build_model(args.kind, tokenizer, args)
    frozen = freeze_for_pretraining(model, args.trained_modules)
    if frozen:
        logger.info("trained_modules=%s: %d parameter tensors keep their initialisation", args.trained_modules, frozen)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("%s model: %.2fM parameters, vocab %d", args.kind, n_params / 1e6, len(tokenizer))

    # Trainer (unpacked batches are padded on the right: positions then start at 0 for every text)
    saved_padding_side, tokenizer.padding_side = tokenizer.padding_side, "right"
    collator = DataCollatorForLanguageModeling(
        tokenizer, mlm=args.kind == "roberta", mlm_probability=args.mlm_probability, seed=args.seed
    )
    use_cuda = torch.cuda.is_available()
    training_args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup_ratio,
        weight_decay=args.weight_decay,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_train_batch_size,
        logging_steps=args.logging_steps,
        logging_first_step=True,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=not use_cuda,
        bf16=use_cuda and torch.cuda.is_bf16_supported(),
        seed=args.seed,
        data_seed=args.seed,
        # Unpacked texts of similar length share a batch: less padding to compute.
        train_sampling_strategy="random" if args.packing else "group_by_length",
        disable_tqdm=False,
        dataloader_num_workers=0,
    )
    callbacks = [_time_budget_callback(args.max_minutes)] if args.max_minutes else []
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
    )

    # Train, with the held-out loss measured before and after
    initial_eval = trainer.evaluate()["eval_loss"] if eval_ds is not None else None
    t_train = time.monotonic()
    train_result = trainer.train()
    train_minutes = (time.monotonic() - t_train) / 60
    final_eval = trainer.evaluate()["eval_loss"] if eval_ds is not None else None

    # Save
    model.config.use_cache = True  # the Trainer turns the KV cache off for training; generation wants it
    # Fine-tuning gets each architecture's usual dropout, whatever pre-training used.
    if args.kind == "roberta":
        model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.1
    else:
        model.config.attention_dropout = 0.0
    tokenizer.padding_side = saved_padding_side
    trainer.save_model(str(output_dir))  # model (safetensors) + tokenizer
    (output_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle; the config is in pretrain_log.json
    if args.kind == "causal":
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.save_pretrained(output_dir)
    history = trainer.state.log_history
    if initial_eval is not None:
        history = [{"step": 0, "eval_loss": initial_eval}, *history]
    train_losses = [h["loss"] for h in history if "loss" in h]
    summary = {
        "kind": args.kind,
        "steps": trainer.state.global_step,
        "max_steps": args.max_steps,
        "stopped_by_time_budget": bool(callbacks and callbacks[0].stopped),
        "train_minutes": round(train_minutes, 3),
        "total_minutes": round((time.monotonic() - t0) / 60, 3),
        "first_loss": train_losses[0] if train_losses else None,
        "last_loss": train_losses[-1] if train_losses else None,
        "initial_eval_loss": initial_eval,
        "final_eval_loss": final_eval,
        "uniform_loss": math.log(len(tokenizer)),
        "train_loss_mean": train_result.training_loss,
        "corpus": corpus_counts,
        "texts_used": len(texts),
        "tokens": n_tokens,
        "train_sequences": len(train_ds),
        "eval_sequences": n_eval,
        "vocab_size": model.config.vocab_size,  # embedding rows: the tokenizer's, padded to a multiple of 64
        "tokenizer_size": len(tokenizer),
        "num_parameters": n_params,
        "device": "cuda" if use_cuda else "cpu",
        "torch_threads": torch.get_num_threads(),
        "config": args.to_dict(),
    }
    log = {
        "summary": summary,
        "log_history": history,
        "provenance": provenance(seed=args.seed, data_files={"corpus": args.corpus_file}),
    }
    atomic_write_json(output_dir / "pretrain_log.json", log)
    plot_loss(history, output_dir / "pretrain_loss.png", f"{args.kind} pre-training ({n_params / 1e6:.1f}M params)")
    logger.info(
        "pre-trained %s in %.2f min (%d steps): train loss %.3f -> %.3f, held-out %s -> %s",
        args.kind,
        summary["total_minutes"],
        summary["steps"],
        summary["first_loss"] or float("nan"),
        summary["last_loss"] or float("nan"),
        initial_eval,
        final_eval,
    )
    return summary
