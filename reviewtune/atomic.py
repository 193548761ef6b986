"""Atomic writes: a file or a whole directory is written under a temporary name beside its place, then renamed into
place, so readers see the old version or the complete new one, never half of it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _make_parent(path: Path) -> None:
    """Create ``path``'s folder; a file standing where a folder should be is named in the error."""
    blocking = next((p for p in path.parents if p.is_file()), None)
    if blocking is not None:
        raise NotADirectoryError(f"{path}: {blocking} is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    _make_parent(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Build a directory in the block at the path this yields (a temporary one beside ``path``); when the block
    ends without an error it becomes ``path`` (replacing an existing one if ``replace``), else it is removed."""
    path = Path(path)
    _make_parent(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{temporary_prefix(path)}"))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; give it the permissions of any new directory
    try:
        yield tmp
        if path.exists():
            if not replace:
                raise FileExistsError(f"{path} exists")
            shutil.rmtree(path)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_files(directory: str | os.PathLike) -> Iterator[Path]:
    """Write files in the block into the path this yields (a temporary directory beside ``directory``); when the
    block ends without an error each is renamed into ``directory``, replacing a file of the same name. For files
    joining a directory that holds other things (a run directory with checkpoints): each file is replaced whole."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=temporary_prefix(directory)))
    try:
        yield tmp
        for path in sorted(tmp.rglob("*")):
            target = directory / path.relative_to(tmp)
            if path.is_dir():
                target.mkdir(exist_ok=True)
            else:
                os.replace(path, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def temporary_prefix(path: str | os.PathLike) -> str:
    """Name prefix of the temporary directories :func:`atomic_directory` builds for ``path``."""
    return f".{Path(path).name}.tmp-"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file; a malformed line raises ``ValueError`` naming file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from e
    return rows
