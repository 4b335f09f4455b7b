"""Content-addressed cache of group results, shared by every method of a suite and by concurrent runs.

The key is the sha256 of the canonical JSON of everything that determines a result: the problem's identity
(dataset, version, parameters, profile, training settings, data fingerprint), the group, the seed, the device
type and the engine's version. Entries are written to a temporary file and linked into place (atomic on POSIX),
so a reader never sees half an entry. A per-key lock file (``fcntl.flock``) makes a second process that wants the
same group wait for the first and then read its entry, so two runs that share a cache train each group once.
Failures raise and are never cached. A hit keeps the originally measured ``wall_time_s`` and is marked ``cached``.

**The first entry stored under a key is the key's value.** A write never replaces a valid entry: it returns the
entry already there, and callers use what :meth:`ResultCache.put` returns, not what they computed. Group trainings
stored without a lock (:meth:`bench.runner._Trainings.many` trains its misses together) can be computed twice by
two concurrent runs, and a group trained alone or in a stack of another composition can differ from the same
group's other training in its last bits (matrix products sum in another order). Keeping the first value makes
every run that shares a cache report the same numbers for the same group. Only a damaged or foreign file under the
key is replaced.
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


def _as_result(payload: Any) -> GroupResult | None:
    """The group result a payload holds, or None (valid JSON but not an entry: a damaged or foreign file)."""
    try:
        return GroupResult.from_json(payload)
    except (KeyError, TypeError, ValueError):
        return None


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
        result = _as_result(data)
        if result is None:
            return None  # a damaged or foreign entry: recomputed and rewritten
        return dataclasses.replace(result, cached=True)

    def put(self, key: str, result: GroupResult) -> GroupResult:
        """Store ``result`` under ``key`` unless a valid entry is there already; return the entry now stored (ours,
        or the earlier one, then with this ``result``'s own ``wall_time_s``: the time this caller paid), not cached."""
        stored = self.write(key, dataclasses.replace(result, cached=False).to_json(),
                            valid=lambda payload: _as_result(payload) is not None)
        if stored is None:
            return dataclasses.replace(result, cached=False)
        return dataclasses.replace(_as_result(stored), cached=False, wall_time_s=result.wall_time_s)

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

    def write(self, key: str, payload: Any, valid: Callable[[Any], bool] | None = None) -> Any:
        """Store a JSON payload under ``key`` atomically unless a valid entry is there already.

        Returns None when ``payload`` was stored, else the payload of the entry that was there first (which stays).
        An existing file that :meth:`read` rejects, or whose payload ``valid`` rejects, is replaced."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"key": key, "result": payload}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # fails if an entry exists: the first one stays
                return None
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links: check, then rename (a narrow race)
                if not path.exists():
                    os.replace(tmp, path)
                    return None
            first = self.read(key)
            if first is not None and (valid is None or valid(first)):
                return first
            os.replace(tmp, path)  # a damaged or foreign file
            return None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

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
            self.misses += 1
            return self.put(key, result)

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
            first = self.write(key, payload)
            self.misses += 1
            return (payload if first is None else first), False
