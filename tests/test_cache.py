"""The content-addressed result cache (bench.cache): keys, round trips, failures, corruption, atomicity and two
processes sharing one cache."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from bench import cache as cache_mod
from bench.cache import ResultCache, canonical_json, result_key
from bench.types import GroupResult

IDENTITY = {"dataset": "synthetic", "version": "1", "params": {"clusters": [2, 2]}, "profile": "smoke",
            "train_config": {"epochs": 3, "lr": 0.01}}


def _result(group=("a", "b"), seed=0, wall=1.25, offset=0.0):
    return GroupResult(
        group=group,
        seed=seed,
        val={t: 0.5 + offset + i for i, t in enumerate(group)},
        test={t: 0.25 + offset + i for i, t in enumerate(group)},
        val_loss={t: 0.75 + i for i, t in enumerate(group)},
        curves={"train_loss": [3.0, 2.0], "val_loss": [2.5, 1.5], "lr": [0.01, 0.01]},
        epochs_run=2,
        best_epoch=1,
        wall_time_s=wall,
        device="cpu",
    )


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------------------ keys


def test_key_depends_on_identity_group_and_seed():
    base = result_key(IDENTITY, ("a", "b"), 0, "cpu")
    assert base == result_key(dict(reversed(list(IDENTITY.items()))), ("a", "b"), 0, "cpu")  # order-free
    assert len(base) == 64 and int(base, 16) >= 0
    changed_identity = {**IDENTITY, "train_config": {"epochs": 3, "lr": 0.02}}
    variants = {
        result_key(changed_identity, ("a", "b"), 0, "cpu"),
        result_key({**IDENTITY, "profile": "mini"}, ("a", "b"), 0, "cpu"),
        result_key(IDENTITY, ("a", "c"), 0, "cpu"),
        result_key(IDENTITY, ("a",), 0, "cpu"),
        result_key(IDENTITY, ("a", "b"), 1, "cpu"),
        result_key(IDENTITY, ("a", "b"), 0, "cuda"),
    }
    assert base not in variants and len(variants) == 6
    # only the device type matters, not the index
    assert result_key(IDENTITY, ("a", "b"), 0, "cuda:0") == result_key(IDENTITY, ("a", "b"), 0, "cuda:1")


def test_canonical_json():
    assert canonical_json({"b": (1, 2), "a": frozenset({"y", "x"}), "p": Path("/x")}) == \
        '{"a":["x","y"],"b":[1,2],"p":"/x"}'
    with pytest.raises(TypeError):
        canonical_json({"f": object()})


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "c"))
    assert cache_mod.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("BENCH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_mod.default_cache_dir() == tmp_path / "xdg" / "task-grouping-bench"


# ------------------------------------------------------------------------------------------------ round trip


def test_put_get_round_trip(tmp_path):
    cache = ResultCache(tmp_path / "cache")
    key = result_key(IDENTITY, ("a", "b"), 0, "cpu")
    assert cache.get(key) is None
    original = _result(wall=3.5)
    cache.put(key, original)
    hit = cache.get(key)
    assert hit is not None and hit.cached
    assert hit.wall_time_s == 3.5  # the originally measured time is kept
    assert dataclasses.replace(hit, cached=False) == original
    assert isinstance(hit.group, tuple)
    # stored under <root>/<key[:2]>/<key>.json with the key inside
    path = tmp_path / "cache" / key[:2] / f"{key}.json"
    assert json.loads(path.read_text())["key"] == key
    assert json.loads(path.read_text())["result"]["cached"] is False


def test_get_or_compute_hit_and_miss(tmp_path):
    cache = ResultCache(tmp_path)
    key = result_key(IDENTITY, ("a", "b"), 0, "cpu")
    calls = []

    def compute():
        calls.append(1)
        return _result(wall=2.0)

    first = cache.get_or_compute(key, compute)
    second = cache.get_or_compute(key, compute)
    assert len(calls) == 1
    assert not first.cached and second.cached
    assert second.wall_time_s == first.wall_time_s == 2.0
    assert dataclasses.replace(second, cached=False) == first
    assert (cache.hits, cache.misses) == (1, 1)
    other = cache.get_or_compute(result_key(IDENTITY, ("a", "b"), 1, "cpu"), lambda: _result(seed=1, offset=1.0))
    assert not other.cached and other.seed == 1 and other.val["a"] == 1.5
    assert (cache.hits, cache.misses) == (1, 2)


def test_failure_is_not_cached_and_propagates(tmp_path):
    cache = ResultCache(tmp_path)
    key = result_key(IDENTITY, ("a",), 0, "cpu")

    def boom():
        raise FloatingPointError("validation loss became nan")

    with pytest.raises(FloatingPointError, match="nan"):
        cache.get_or_compute(key, boom)
    assert cache.get(key) is None
    assert not [p for p in _files(tmp_path) if p.suffix == ".json"]
    result = cache.get_or_compute(key, lambda: _result(group=("a",)))
    assert not result.cached and cache.get(key) is not None


@pytest.mark.parametrize(
    "garbage",
    ["", "{not json", "[1, 2]", '{"key": "x"}', '{"result": {"group": ["a"]}}', b"\xff\xfe\x00binary"],
)
def test_corrupted_entry_is_recomputed(tmp_path, garbage):
    cache = ResultCache(tmp_path)
    key = result_key(IDENTITY, ("a", "b"), 0, "cpu")
    cache.put(key, _result(wall=1.0))
    path = tmp_path / key[:2] / f"{key}.json"
    if isinstance(garbage, bytes):
        path.write_bytes(garbage)
    else:
        path.write_text(garbage)
    assert cache.get(key) is None
    calls = []

    def compute():
        calls.append(1)
        return _result(wall=9.0)

    try:
        result = cache.get_or_compute(key, compute)
    except (KeyError, TypeError, ValueError) as exc:  # pragma: no cover - reported as a failure below
        pytest.fail(f"a corrupted entry ({garbage!r}) must be recomputed, got {type(exc).__name__}: {exc}")
    assert calls == [1] and not result.cached and result.wall_time_s == 9.0
    assert cache.get(key).wall_time_s == 9.0  # rewritten


def test_atomic_write_leaves_no_temp_files(tmp_path, monkeypatch):
    cache = ResultCache(tmp_path)
    for seed in range(5):
        cache.get_or_compute(result_key(IDENTITY, ("a", "b"), seed, "cpu"), lambda: _result())
    names = [p.name for p in _files(tmp_path)]
    assert not [n for n in names if n.startswith(".tmp-")]
    assert sum(n.endswith(".json") for n in names) == 5
    # a write that fails half-way removes its temporary file and leaves no entry
    key = result_key(IDENTITY, ("a", "b"), 99, "cpu")

    def broken_dump(obj, fh, **kw):
        fh.write('{"key": ')
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        cache.put(key, _result())
    monkeypatch.undo()
    assert not [p for p in _files(tmp_path) if p.name.startswith(".tmp-")]
    assert cache.get(key) is None


# ------------------------------------------------------------------------------------------------ concurrency


def _worker(root: str, key: str, counter: str, out: str, barrier) -> None:
    cache = ResultCache(root)

    def compute():
        with open(counter, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        return _result(wall=0.5)

    barrier.wait(timeout=60)
    result = cache.get_or_compute(key, compute)
    Path(out).write_text(json.dumps(result.to_json()))


def test_two_processes_compute_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    root, counter = tmp_path / "cache", tmp_path / "counter.txt"
    key = result_key(IDENTITY, ("a", "b"), 0, "cpu")
    barrier = ctx.Barrier(2)
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    procs = [ctx.Process(target=_worker, args=(str(root), key, str(counter), str(out), barrier)) for out in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():  # pragma: no cover - only on a hang
            p.terminate()
            p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(counter.read_text().splitlines()) == 1  # compute ran exactly once
    results = [GroupResult.from_json(json.loads(out.read_text())) for out in outs]
    assert sorted(r.cached for r in results) == [False, True]  # one computed, the other waited and read it
    a, b = (dataclasses.replace(r, cached=False) for r in results)
    assert a == b == _result(wall=0.5)


def test_the_first_entry_stays(tmp_path):
    """A write never replaces a valid entry: ``put`` returns the entry already stored (with the caller's own
    training time), ``write`` its payload; a damaged file is replaced."""
    cache = ResultCache(tmp_path)
    key = result_key(IDENTITY, ("a", "b"), 0, "cpu")
    first = cache.put(key, _result(wall=1.0))
    assert first == _result(wall=1.0)
    second = cache.put(key, _result(wall=2.0, offset=5.0))
    assert second.test == _result().test and second.wall_time_s == 2.0 and not second.cached
    assert cache.get(key).test == _result().test and cache.get(key).wall_time_s == 1.0
    other = result_key(IDENTITY, ("c",), 0, "cpu")
    assert cache.write(other, {"x": 1}) is None and cache.write(other, {"x": 2}) == {"x": 1}
    assert cache.read(other) == {"x": 1}
    # a foreign payload under a result key is not a result: put replaces it
    damaged = result_key(IDENTITY, ("d",), 0, "cpu")
    cache.write(damaged, {"not": "a result"})
    assert cache.put(damaged, _result(group=("d",))).test == _result(group=("d",)).test
    assert cache.get(damaged) is not None
    assert not [p for p in _files(tmp_path) if p.name.startswith(".tmp-")]
