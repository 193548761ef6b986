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


def model_hash(name_or_path: str, revision: str | None = None) -> str | None:
    """What identifies the base model: sha256 of a local directory's files (for directories over 2 GiB,
    of its JSON files plus the names and sizes of the others, prefixed ``meta:``), or the hub commit
    of a hub model (``hub:<sha>``, resolved through the HF cache like ``from_pretrained``); None when neither
    is known."""
    path = Path(name_or_path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        if sum(p.stat().st_size for p in files) <= 2 << 30:
            return dir_sha256(path)
        h = hashlib.sha256()  # hashing 16 GB of weights on every launch is too slow; names + sizes instead
        for p in files:
            rel = str(p.relative_to(path))
            h.update(f"{rel}:{p.stat().st_size}:".encode() + (file_sha256(p).encode() if p.suffix == ".json" else b""))
        return "meta:" + h.hexdigest()
    from huggingface_hub import hf_hub_download

    try:  # the cached copy when offline; online, the (small) config of that revision
        cached = hf_hub_download(name_or_path, "config.json", revision=revision)
    except (OSError, ValueError):  # not a repo id, not cached offline, no such repo or revision
        return None
    if "/snapshots/" in cached:
        return "hub:" + cached.split("/snapshots/")[1].split("/")[0]
    return None


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
