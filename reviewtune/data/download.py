"""NSMC from its public repository, for users who are online (nothing in the suite needs it)."""

from __future__ import annotations

import tempfile
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

NSMC_URLS = {
    "ratings_train.txt": "https://raw.githubusercontent.com/e9t/nsmc/master/ratings_train.txt",
    "ratings_test.txt": "https://raw.githubusercontent.com/e9t/nsmc/master/ratings_test.txt",
}


def download_nsmc(dest: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """Download NSMC's ``ratings_train.txt`` and ``ratings_test.txt`` (CC0, github e9t/nsmc) into ``dest``.

    For users who are online; then ``prepare("nsmc", dest / "ratings_train.txt", ...)``.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, url in NSMC_URLS.items():
        target = dest / name
        paths[name.removesuffix(".txt")] = target
        if target.is_file() and not overwrite:
            continue
        with urllib.request.urlopen(url, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".tmp")
            try:
                with open(fd, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=name) as bar:
                    while block := resp.read(1 << 16):
                        f.write(block)
                        bar.update(len(block))
                Path(tmp).replace(target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    return paths
