"""Argument checks of the host-side API (tracker, registry, orchestrator).

Every error is one line, ``<function>: <argument> = <value repr, truncated>; expected <what>``.
A value of the wrong type raises ``ArgTypeError``: a ``TypeError`` that is also a
``ValueError``, so code catching the ``ValueError`` these APIs document still catches it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# the longest name (symbol) that becomes part of a file name (a checkpoint folder)
MAX_NAME_LEN = 64
_REPR_LIMIT = 80


class ArgTypeError(TypeError, ValueError):
    """An argument of the wrong type (also a ``ValueError``: see the module docstring)."""


def short_repr(value: Any, limit: int = _REPR_LIMIT) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters (``...`` and the length)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__} object>"
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    if len(text) > limit:
        size = f", {len(value)} characters" if isinstance(value, str) else ""
        text = f"{text[:limit - 3]}...{size}"
    return text


def value_error(where: str, name: str, value: Any, expected: str) -> ValueError:
    """``ValueError('<where>: <name> = <value>; expected <expected>')``."""
    return ValueError(f"{where}: {name} = {short_repr(value)}; expected {expected}")


def type_error(where: str, name: str, value: Any, expected: str) -> ArgTypeError:
    """``ArgTypeError`` naming the argument, the expected type and the type given."""
    return ArgTypeError(f"{where}: {name} = {short_repr(value)}; expected {expected} "
                        f"(got {type(value).__name__})")


def check_str(where: str, name: str, value: Any, *, optional: bool = False,
              max_len: int | None = None) -> str | None:
    """A non-empty string (``None`` too when ``optional``), at most ``max_len`` characters
    and storable (encodable as UTF-8)."""
    if value is None and optional:
        return None
    what = "a non-empty string" + (" or None" if optional else "")
    if max_len is not None:
        what += f" of at most {max_len} characters"
    if not isinstance(value, str):
        raise type_error(where, name, value, what)
    if not value.strip():
        raise value_error(where, name, value, what)
    if max_len is not None and len(value) > max_len:
        raise value_error(where, name, value, f"at most {max_len} characters (got {len(value)})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise value_error(where, name, value, "text encodable as UTF-8 (no lone surrogates)") \
            from None
    return value


def is_real(value: Any) -> bool:
    """An int / float / numpy real scalar, not a bool."""
    return (not isinstance(value, (bool, np.bool_))
            and isinstance(value, (int, float, np.integer, np.floating)))


def check_number(where: str, name: str, value: Any, *, lo: float | None = None,
                 hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
                 optional: bool = False) -> float | None:
    """A finite real number within the bounds (``None`` too when ``optional``)."""
    if value is None and optional:
        return None
    rng = []
    if lo is not None:
        rng.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        rng.append(f"{'<' if hi_open else '<='} {hi:g}")
    what = "a finite number" + (" " + " and ".join(rng) if rng else "")
    if optional:
        what += " (or None)"
    if not is_real(value):
        raise type_error(where, name, value, what)
    x = float(value)
    ok = math.isfinite(x)
    if ok and lo is not None:
        ok = x > lo if lo_open else x >= lo
    if ok and hi is not None:
        ok = x < hi if hi_open else x <= hi
    if not ok:
        raise value_error(where, name, value, what)
    return x


def check_int(where: str, name: str, value: Any, *, lo: int | None = None,
              optional: bool = False) -> int | None:
    """An integer (not a bool) >= ``lo`` (``None`` too when ``optional``)."""
    if value is None and optional:
        return None
    what = "an integer" + (f" >= {lo}" if lo is not None else "") + (
        " (or None)" if optional else "")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise type_error(where, name, value, what)
    if lo is not None and value < lo:
        raise value_error(where, name, value, what)
    return int(value)


def check_bool(where: str, name: str, value: Any) -> bool:
    """A bool (``True`` / ``False``, numpy's too)."""
    if not isinstance(value, (bool, np.bool_)):
        raise type_error(where, name, value, "True or False")
    return bool(value)
