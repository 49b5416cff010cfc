"""User-facing errors: one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class CorpusError(Exception):
    """A problem the user can fix; the message says what to do."""


def one_line(text: object, limit: int | None = None) -> str:
    """Collapse an exception message (hub errors span several lines) into one line."""
    flat = " ".join(str(text).split())
    return flat if limit is None or len(flat) <= limit else flat[: limit - 1] + "…"


def run_guarded(main: Callable[[], int]) -> int:
    """Run a command-line entry point, turning expected failures into a one-line error."""
    try:
        return main()
    except CorpusError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Partial files are left under names that are never mistaken for complete ones.
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as err:
        # Disk full, permissions, ...: the message from the OS is the actionable part.
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 1
