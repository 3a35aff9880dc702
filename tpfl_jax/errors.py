"""The package's user-facing errors.

:class:`UserError` (a ``ValueError``) is a problem with what the user asked for (a config value,
a path, a busy or foreign run directory): the command-line tools print it as one line,
``tpfl-<cmd>: error: <message>``, and exit with status 2; a :class:`SystemFault` (a full disk)
is one line with exit status 1. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os


class UserError(ValueError):
    """A user mistake or an unusable environment, reported as one line by the CLI (exit 2)."""

    exit_status = 2


class SystemFault(UserError):
    """The machine failed a correct request (a full disk, an I/O error): one line, exit 1."""

    exit_status = 1


# errno values of a fault (not of a bad path the user gave)
FAULT_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.ENOMEM})


def os_error(path: object, e: OSError, what: str = "cannot write") -> UserError:
    """An ``OSError`` on ``path`` as one line naming the path: a :class:`SystemFault` for a
    fault of the machine, else a :class:`UserError` (a bad path: a file where a directory was
    expected, a read-only file system, no permission)."""
    cls = SystemFault if e.errno in FAULT_ERRNOS else UserError
    return cls(f"{os.fspath(path) if path is not None else '?'}: {what} "
               f"({e.strerror or e})")


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


__all__ = ["FAULT_ERRNOS", "SystemFault", "UserError", "one_line", "os_error"]
