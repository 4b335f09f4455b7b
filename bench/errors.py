"""Exceptions with messages written for the person at the keyboard."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BenchError(Exception):
    """Base class of every error the harness raises on purpose."""


class UsageError(BenchError):
    """Bad input from the user (CLI arguments, files, parameters). The CLI exits with status 2."""


class DataNotFound(UsageError):
    """A real data file is missing or malformed; the message names the file and where to get it."""


class Unsupported(BenchError):
    """A component cannot run on this input (too large, missing groups, ...). The runner records a skip."""


def unknown_name(what: str, name: str, valid: Iterable[str]) -> UsageError:
    """An error for an unknown ``name`` that lists the valid ones and suggests the closest."""
    valid = sorted(set(valid))
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    listing = ", ".join(valid) if valid else "(none registered)"
    return UsageError(f"unknown {what} '{name}'.{hint} Valid {what}s: {listing}")


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``"Type: message"`` of a caught failure, its first line, at most ``limit`` characters: what a fallback
    records about why it was taken."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:limit]
