"""Where the embedded default lives: ``REVIEWTUNE_HOME`` (default ``~/.cache/reviewtune``).

``default_data_dir()`` is the bundled synthetic shopping-review data, written by the same
``reviewtune.data.prepare`` code path as ``data_prep/prepare.py --source synthetic --task aspects``
into ``home()/data/synthetic-<hash>/{train,validation,test}``. The hash covers the seed, the size and
the code that makes the data, so a change gives a new directory and an existing one is never rebuilt
in place; it is built once, under a file lock, in a temp dir renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from filelock import FileLock

from reviewtune.atomic import atomic_directory

EMBEDDED = "embedded"  # model_name_or_path value meaning "the suite's own pre-trained base"
DEFAULT_SEED = 0
DEFAULT_N = 10000
DEFAULT_SPLITS = ("train", "validation", "test")
# Modules whose code decides the content of the default data directory.
_DATA_CODE = (
    "data/synthetic.py", "data/readers.py", "data/record_builder.py", "data/rows.py", "data/decoding.py",
    "data/prepare.py", "records.py", "prompts.py", "tasks.py",
)  # fmt: skip


def home() -> Path:
    """Root of the suite's cache: synthetic default data and embedded base models."""
    return Path(os.environ.get("REVIEWTUNE_HOME", Path.home() / ".cache" / "reviewtune")).expanduser()


def default_data_hash(seed: int = DEFAULT_SEED, n: int = DEFAULT_N) -> str:
    """Short hash of what makes the default data: seed, size and the source of the modules that write it."""
    h = hashlib.sha256(json.dumps({"source": "synthetic", "task": "aspects", "seed": seed, "n": n}).encode())
    package = Path(__file__).resolve().parent
    for name in _DATA_CODE:
        path = package / name
        h.update(name.encode())
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
    return h.hexdigest()[:12]


def default_data_dir(seed: int = DEFAULT_SEED, n: int = DEFAULT_N) -> Path:
    """The embedded default data directory (built on first use): ``<split>/records.jsonl`` + ``instructions.jsonl``
    for train / validation / test, and ``prep_report.json``."""
    from reviewtune.data.prepare import prepare  # imported here: the readers import the heavier libraries

    root = home() / "data"
    final = root / f"synthetic-{default_data_hash(seed, n)}"
    if (final / "prep_report.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{final.name}.lock")):
        if (final / "prep_report.json").is_file():  # another process built it while we waited
            return final
        # An existing ``final`` here has no prep_report.json: an incomplete leftover, never a finished build.
        with atomic_directory(final) as tmp:
            prepare("synthetic", None, "aspects", tmp, seed=seed, n=n, strict=True)
    return final


def default_file(split: str, seed: int = DEFAULT_SEED, n: int = DEFAULT_N) -> str:
    """Path of ``records.jsonl`` for ``split`` (train, validation or test) of the embedded default."""
    if split not in DEFAULT_SPLITS:
        raise ValueError(f"unknown split {split!r}; the embedded default has {', '.join(DEFAULT_SPLITS)}")
    return str(default_data_dir(seed, n) / split / "records.jsonl")
