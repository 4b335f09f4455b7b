"""bench.heap: the process keeps freed memory (glibc mallopt), chosen by BENCH_HEAP."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from bench import heap
from bench.errors import UsageError

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(heap, "_applied", None)


def test_system_leaves_malloc_alone(fresh, monkeypatch):
    monkeypatch.setenv(heap.ENV, "system")
    assert heap.keep_freed_memory() == {}


def test_bad_choice_is_a_usage_error(fresh, monkeypatch):
    monkeypatch.setenv(heap.ENV, "jemalloc")
    with pytest.raises(UsageError, match="BENCH_HEAP must be 'keep' .* or 'system', got 'jemalloc'"):
        heap.keep_freed_memory()


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_keep_applies_both_settings_once(fresh, monkeypatch):
    monkeypatch.delenv(heap.ENV, raising=False)
    want = {name: value for name, (_, value) in heap.SETTINGS.items()}
    assert heap.keep_freed_memory() == want
    assert heap.keep_freed_memory() == want  # idempotent


def test_command_line_reports_a_bad_choice():
    env = {"BENCH_HEAP": "bogus", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "bench", "list", "signals"], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "BENCH_HEAP must be" in out.stderr
