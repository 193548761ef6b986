"""Provenance recorded in every JSON the suite writes: versions, git commit, seed, hashes, hardware."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

PACKAGES = ("reviewtune", "torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dir_sha256(path: str | os.PathLike, pattern: str = "*") -> str:
    """Hash of every file under ``path`` (relative names and contents), in sorted order."""
    h = hashlib.sha256()
    root = Path(path)
    for p in sorted(root.rglob(pattern)):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(file_sha256(p).encode())
    return h.hexdigest()


@functools.cache
def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@functools.cache
def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def hardware() -> dict:
    info = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "processor": platform.machine()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return info


def provenance(
    seed: int | None = None,
    data_files: dict[str, str | os.PathLike | None] | None = None,
    base_model_hash: str | None = None,
) -> dict:
    """The provenance block: versions, git commit, seed, sha256 of data files, base model hash, hardware."""
    return {
        "versions": package_versions(),
        "git_commit": git_commit(),
        "seed": seed,
        "data_files": {
            k: {"path": str(v), "sha256": file_sha256(v)}
            for k, v in (data_files or {}).items()
            if v and Path(v).is_file()
        },
        "base_model_hash": base_model_hash,
        "hardware": hardware(),
    }
