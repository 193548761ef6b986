"""What every script does with a user's mistake: one line on stderr naming what is wrong, exit code 2, no traceback.

``run_cli(main)`` wraps a script's ``main``; ``argument_parser`` builds its parser (an ``HfArgumentParser`` or trl's
``TrlParser``) with a short usage line, the suite's own options first, and one-line argument errors instead of
argparse's full usage dump. ``REVIEWTUNE_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from reviewtune.data.decoding import DataError

# What a user can cause with arguments, paths and files; anything else is a bug and keeps its traceback.
USER_ERRORS = (DataError, ValueError, OSError, UnicodeError)


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, OSError) and error.filename and str(error.filename) not in text:
        text = f"{error.filename}: {text}"
    return text


def run_cli(main: Callable[..., object], argv: list[str] | None = None) -> int:
    """Run ``main(argv)``; a user error becomes ``error: <one line>`` on stderr and exit code 2."""
    try:
        result = main(argv)
    except USER_ERRORS as e:
        if os.environ.get("REVIEWTUNE_DEBUG"):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


def _error(message: str) -> None:
    """argparse's ``error`` without the usage dump (a recipe's usage lists hundreds of trl/transformers options)."""
    print(f"error: {message} (--help lists the options)", file=sys.stderr)
    sys.exit(2)


def argument_parser(parser_class, dataclass_types, usage: str, **kwargs):
    """``parser_class(dataclass_types)`` with ``usage`` as its usage line and one-line argument errors."""
    parser = parser_class(dataclass_types, usage=usage, **kwargs)
    parser.error = _error
    return parser
