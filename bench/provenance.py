"""Provenance written into every record: code version, package versions, host and device."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata

from bench import __version__
from bench.registry import PROJECT_ROOT

PACKAGES = ("torch", "numpy", "scipy")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


_PINNED: dict[str, dict] = {}


def pin(device: str, facts: dict | None = None) -> dict:
    """Fix this process's provenance for ``device`` now (``facts``: as its parent process measured them), so that a
    run spanning a commit or an edit records the code it started with, not the code at its first record."""
    _PINNED[device] = dict(facts) if facts is not None else _measure(device)
    return _PINNED[device]


def provenance(device: str) -> dict:
    """The provenance of this process's records: pinned by :func:`pin`, else measured once."""
    if device not in _PINNED:
        _PINNED[device] = _measure(device)
    return _PINNED[device]


def _measure(device: str) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "bench_version": __version__,
        "python": platform.python_version(),
        "packages": versions,
        "host": platform.node(),
        "platform": platform.platform(),
        "device": device,
    }
