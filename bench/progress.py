"""Progress bars (tqdm on standard error; silent when disabled or when BENCH_NO_PROGRESS is set)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def enabled_by_default() -> bool:
    return not os.environ.get("BENCH_NO_PROGRESS") and sys.stderr.isatty()


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None, leave: bool = True,
             enabled: bool | None = None) -> Iterable[T]:
    on = enabled_by_default() if enabled is None else enabled
    if not on:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=leave, file=sys.stderr, dynamic_ncols=True)
