"""The package's user-facing errors.

:class:`UserError` (a ``ValueError``) is a problem with what the user asked for (a config value,
a path, a busy or foreign run directory, a full disk): the command-line tools print it as one
line, ``tpfl-<cmd>: error: <message>``, and exit with status 2. Any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A user mistake or an unusable environment, reported as one line by the CLI."""


def one_line(message: object) -> str:
    """A multi-line message as one line (lines joined with ``; ``, or a space after a line
    that ends with a colon)."""
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    if not parts:
        return type(message).__name__
    out = parts[0]
    for p in parts[1:]:
        out += (" " if out.endswith(":") else "; ") + p
    return out


__all__ = ["UserError", "one_line"]
