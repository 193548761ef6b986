"""Where the embedded default lives: ``REVIEWTUNE_HOME`` (default ``~/.cache/reviewtune``)."""

from __future__ import annotations

import os
from pathlib import Path

EMBEDDED = "embedded"  # model_name_or_path value meaning "the suite's own pre-trained base"


def home() -> Path:
    """Root of the suite's cache: synthetic default data and embedded base models."""
    return Path(os.environ.get("REVIEWTUNE_HOME", Path.home() / ".cache" / "reviewtune")).expanduser()
