"""Content-addressed cache of group results, shared by every method of a suite and by concurrent runs.

The key is the sha256 of the canonical JSON of everything that determines a result: the problem's identity
(dataset, version, parameters, profile, training settings, data fingerprint), the group, the seed, the device
type and the engine's version. Entries are written to a temporary file and renamed into place (atomic on POSIX),
so a reader never sees half an entry. A per-key lock file (``fcntl.flock``) makes a second process that wants the
same group wait for the first and then read its entry, so two runs that share a cache train each group once.
Failures raise and are never cached. A hit keeps the originally measured ``wall_time_s`` and is marked ``cached``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from bench import __version__
from bench.types import GroupResult

CACHE_ENV = "BENCH_CACHE_DIR"
ENGINE_VERSION = f"{__version__}/trainer-1"


def default_cache_dir() -> Path:
    value = os.environ.get(CACHE_ENV)
    if value:
        return Path(value).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "task-grouping-bench"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, (tuple, set, frozenset)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot put {type(value).__name__} into a cache key")


def result_key(identity: Mapping[str, Any], group: tuple[str, ...], seed: int, device: str) -> str:
    payload = {"engine": ENGINE_VERSION, "problem": identity, "group": list(group), "seed": int(seed),
               "device": device.split(":")[0]}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


class ResultCache:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> GroupResult | None:
        data = self.read(key)
        if data is None:
            return None
        try:
            result = GroupResult.from_json(data)
        except (KeyError, TypeError, ValueError):
            return None  # valid JSON but not an entry (damaged or foreign file): recomputed and rewritten too
        return dataclasses.replace(result, cached=True)

    def put(self, key: str, result: GroupResult) -> None:
        self.write(key, dataclasses.replace(result, cached=False).to_json())

    def read(self, key: str) -> Any:
        """The JSON payload stored under ``key``, or None (missing, unreadable or damaged: recomputed)."""
        try:
            with open(self._path(key)) as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, OSError, UnicodeDecodeError):
            return None  # an unreadable entry is recomputed and rewritten
        if not isinstance(data, dict) or data.get("key") != key or "result" not in data:
            return None
        return data["result"]

    def write(self, key: str, payload: Any) -> None:
        """Store a JSON payload under ``key`` atomically."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"key": key, "result": payload}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        path = self._path(key).with_suffix(".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def get_or_compute(self, key: str, compute: Callable[[], GroupResult]) -> GroupResult:
        hit = self.get(key)
        if hit is not None:
            self.hits += 1
            return hit
        with self._lock(key):
            hit = self.get(key)  # another process may have finished it while we waited
            if hit is not None:
                self.hits += 1
                return hit
            result = compute()  # an exception propagates: failures are never cached
            self.put(key, result)
            self.misses += 1
            return dataclasses.replace(result, cached=False)

    def get_or_compute_payload(self, key: str, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """Like :meth:`get_or_compute` for any JSON payload (signals); returns ``(payload, was_cached)``."""
        hit = self.read(key)
        if hit is not None:
            self.hits += 1
            return hit, True
        with self._lock(key):
            hit = self.read(key)
            if hit is not None:
                self.hits += 1
                return hit, True
            payload = compute()
            self.write(key, payload)
            self.misses += 1
            return payload, False
