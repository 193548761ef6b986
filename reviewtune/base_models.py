"""The embedded base-model cache: the suite's own small pre-trained models, built once per corpus and config.

A base model lives in ``reviewtune.defaults.home() / "base_models" / f"{kind}-{hash12}"``, where the hash
covers what made it: ``RECIPE_VERSION``, the sha256 of the corpus file and the resolved
``PretrainArguments``. It is built once under a file lock, into a temporary directory that is renamed
into place when complete, and never rebuilt in place, so adapters trained on it keep their base.

The build runs in a child process: pre-training with ``transformers.Trainer`` inside the caller would
change the caller's RNG and accelerate state (a later run would differ depending on whether the cache
was warm) and, under ``torch.distributed``, would try to synchronise with ranks that are waiting on the
lock. When several processes start (``torch.distributed`` initialised, or ``RANK``/``LOCAL_RANK`` set),
the other ranks let local rank 0 take the lock first, wait on it while rank 0 builds, then reuse the result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from reviewtune.atomic import atomic_directory, atomic_write_json, read_json, temporary_prefix
from reviewtune.defaults import home
from reviewtune.provenance import file_sha256, provenance
from reviewtune.training.arguments import KINDS, PretrainArguments

logger = logging.getLogger(__name__)

# Bump when pre-training code changes what a given corpus + config produces: old caches stay valid for
# the adapters trained on them, new runs get a new directory.
RECIPE_VERSION = 4  # 2: every dimension a multiple of 64 (intermediate 704, vocabulary padded); 3: task vocabulary
# in the tokenizer's training texts; 4: the causal base's two bottom layers attend to a sliding window (Qwen2)
MANIFEST = "base_model.json"
# Fields that do not change the model: where it is written, and which path the corpus was read from
# (its content is hashed instead).
_UNHASHED_FIELDS = ("output_dir", "corpus_file")
# Variables that make a child process join a distributed job or pick up an accelerate launch config.
_DISTRIBUTED_ENV_PREFIXES = ("ACCELERATE_", "TORCHELASTIC_", "FSDP_")
_DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                    "ROLE_WORLD_SIZE", "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # fmt: skip

# The embedded defaults, sized to pre-train both kinds within 3 minutes on 2 CPU cores from the synthetic
# train split (~8k reviews of 15-80 characters, ~92k tokens); ``max_minutes`` caps each training loop on
# slower or busy machines. The causal LM learns from packed blocks; the RoBERTa from one review per
# sequence, shallow and with 25% masking: in this budget a deeper RoBERTa on packed blocks stays at the
# unigram loss (it never starts to use the context). Both train their embeddings only, with the transformer
# blocks left random, and their tokenizers learn the aspect task's template and answers: fine-tuned on the aspect
# task, such bases learn it and fully pre-trained ones do not. The causal base's two bottom layers see only the
# last 6 tokens, so a degree adverb stays with its own clause (polarity 0.69 -> 0.95; docs/learning.md).
_DEFAULTS: dict[str, dict] = {
    "causal": dict(
        vocab_size=8000,
        task_vocabulary="aspects",
        hidden_size=256,
        num_layers=4,
        num_heads=8,
        sliding_window_layers=2,
        sliding_window=6,
        trained_modules="embeddings",
        intermediate_size=704,
        max_seq_length=128,
        packing=True,
        max_position_embeddings=512,
        dropout=0.0,
        max_steps=180,
        max_minutes=1.1,
        learning_rate=2e-3,
        warmup_ratio=0.05,
        weight_decay=0.01,
        per_device_train_batch_size=8,
        eval_blocks=32,
        logging_steps=5,
        seed=42,
    ),
    "roberta": dict(
        vocab_size=8000,
        task_vocabulary="aspects",
        hidden_size=192,
        num_layers=2,
        num_heads=3,
        intermediate_size=768,
        trained_modules="embeddings",
        max_seq_length=128,
        packing=False,
        max_position_embeddings=512,
        mlm_probability=0.25,
        dropout=0.0,
        max_steps=500,
        max_minutes=1.1,
        learning_rate=1e-3,
        warmup_ratio=0.05,
        weight_decay=0.01,
        per_device_train_batch_size=64,
        eval_blocks=32,
        logging_steps=10,
        seed=42,
    ),
}


def default_pretrain_args(kind: str) -> PretrainArguments:
    """The embedded default pre-training configuration for ``kind`` (``causal`` or ``roberta``)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return PretrainArguments(kind=kind, **_DEFAULTS[kind])


def cache_root() -> Path:
    """Where embedded base models are cached: ``$REVIEWTUNE_HOME/base_models``."""
    return home() / "base_models"


def base_model_hash(corpus_file: str | os.PathLike, args: PretrainArguments) -> str:
    """sha256 over (``RECIPE_VERSION``, sha256 of the corpus file, the resolved config)."""
    config = {k: v for k, v in args.to_dict().items() if k not in _UNHASHED_FIELDS}
    payload = {"recipe_version": RECIPE_VERSION, "corpus_sha256": file_sha256(corpus_file), "config": config}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def base_model_dir(kind: str, model_hash: str) -> Path:
    return cache_root() / f"{kind}-{model_hash[:12]}"


def _local_rank() -> int | None:
    """This process's rank on its node when several processes were started, else ``None``."""
    for var in ("LOCAL_RANK", "RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except ImportError:
        pass
    return None


def _let_rank0_build_first(final: Path, patience_s: float = 30.0) -> None:
    """On ranks other than 0, wait until rank 0 has started the build (or finished it) before taking the lock.

    Without this, whichever rank reaches the lock first builds. If rank 0 never starts (it may not need the
    model), the wait ends after ``patience_s`` and the lock decides as usual.
    """
    rank = _local_rank()
    if not rank:
        return
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        if (final / MANIFEST).is_file() or any(final.parent.glob(f"{temporary_prefix(final)}*")):
            return
        time.sleep(0.2)


def _child_env() -> dict[str, str]:
    """The environment for the build process: no distributed or accelerate settings, one GPU at most."""
    env = {
        k: v for k, v in os.environ.items() if k not in _DISTRIBUTED_ENV and not k.startswith(_DISTRIBUTED_ENV_PREFIXES)
    }
    # Several visible GPUs would make the Trainer use DataParallel; build on this rank's device only.
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    env["CUDA_VISIBLE_DEVICES"] = visible[local_rank % len(visible)] if visible else str(local_rank)
    package_parent = str(Path(__file__).resolve().parent.parent)  # so the child imports this reviewtune
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


_CHILD = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
from reviewtune.models.pretraining import pretrain
from reviewtune.training.arguments import PretrainArguments
pretrain(PretrainArguments(**json.loads(sys.argv[1])), sys.argv[2])
"""


def _build(args: PretrainArguments, out: Path) -> dict:
    """Pre-train into ``out`` in a child process (see the module docstring) and return its summary."""
    cmd = [sys.executable, "-c", _CHILD, json.dumps(args.to_dict()), str(out)]
    proc = subprocess.run(cmd, env=_child_env(), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"building the {args.kind} base model failed (exit {proc.returncode}); see the log above")
    return read_json(out / "pretrain_log.json")["summary"]


def ensure_base_model(
    kind: str, corpus_file: str | os.PathLike, args: PretrainArguments | None = None
) -> tuple[Path, str]:
    """The cached base model of ``kind`` pre-trained on ``corpus_file`` (built on first use) and its hash.

    ``corpus_file`` must hold training text only (never validation or test). ``args`` defaults to
    ``default_pretrain_args(kind)``; its ``corpus_file`` and ``output_dir`` are ignored.
    """
    corpus_file = Path(corpus_file)
    if not corpus_file.is_file():
        raise FileNotFoundError(f"corpus file for the {kind} base model not found: {corpus_file}")
    args = args or default_pretrain_args(kind)
    if args.kind != kind:
        raise ValueError(f"ensure_base_model({kind!r}) got PretrainArguments of kind {args.kind!r}")
    args = replace(args, corpus_file=str(corpus_file.resolve()), output_dir=None)
    model_hash = base_model_hash(corpus_file, args)
    final = base_model_dir(kind, model_hash)
    if (final / MANIFEST).is_file():
        logger.info("using cached embedded %s base model %s", kind, final)
        return final, model_hash

    from filelock import FileLock

    final.parent.mkdir(parents=True, exist_ok=True)
    _let_rank0_build_first(final)
    with FileLock(str(final.parent / f".{final.name}.lock")):
        if (final / MANIFEST).is_file():  # another process built it while we waited
            logger.info("using embedded %s base model %s (built by another process)", kind, final)
            return final, model_hash
        if final.exists():
            raise RuntimeError(f"{final} exists but has no {MANIFEST}; it was not built by reviewtune, remove it")
        for stale in final.parent.glob(f"{temporary_prefix(final)}*"):  # left by a killed build (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        logger.warning(
            "building embedded base model %s from %s (cached at %s); this happens once", kind, corpus_file, final
        )
        with atomic_directory(final, replace=False) as tmp:  # readers never see a half-built model
            summary = _build(args, tmp)
            manifest = {
                "kind": kind,
                "hash": model_hash,
                "recipe_version": RECIPE_VERSION,
                "corpus_file": str(corpus_file.resolve()),
                "config": args.to_dict(),
                "summary": summary,
                "provenance": provenance(
                    seed=args.seed, data_files={"corpus": corpus_file}, base_model_hash=model_hash
                ),
            }
            atomic_write_json(tmp / MANIFEST, manifest)
    logger.info(
        "built embedded %s base model in %.2f min: loss %.3f -> %.3f (%s)",
        kind,
        summary["total_minutes"],
        summary["first_loss"],
        summary["last_loss"],
        final,
    )
    return final, model_hash
