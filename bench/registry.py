"""Discovery of plugins: one file = one dataset, method, baseline, solver, signal or predictor.

Built-in solvers, signals and predictors (the building blocks methods are composed of) are engine modules
(``bench/solvers/<name>.py``, ``bench/signals/<name>.py``, ``bench/predictors/<name>.py``). Plugin folders
(``datasets/``, ``methods/``, ``baselines/``, and ``solvers/``, ``signals/``, ``predictors/`` for a user's own
building blocks) sit beside the ``bench`` package, and further roots
holding such folders can be named in the environment variable ``BENCH_PLUGIN_PATH`` (``os.pathsep``-separated).
Each ``<folder>/<stem>.py`` is loaded **by file path** as the module ``bench.plugins.<folder>.<stem>`` through a
meta-path finder. Consequences, on purpose:

- no plugin folder is ever put on ``sys.path``, so ``import datasets`` still finds the widely installed package of
  that name (or nothing), never our folder;
- plugin classes pickle by reference (``bench.plugins.datasets.synthetic.Synthetic``) and unpickle in a fresh
  process (``--jobs N``), because importing ``bench`` installs the finder there too.

A plugin file defines exactly one component class whose ``name`` equals the file stem.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import pkgutil
import sys
import types
from functools import lru_cache
from pathlib import Path
from typing import Any

from bench.errors import UsageError, unknown_name

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PLUGIN_NAMESPACE = "bench.plugins"
FOLDERS = {"dataset": "datasets", "method": "methods", "baseline": "baselines", "solver": "solvers",
           "signal": "signals", "predictor": "predictors"}
ENGINE_PACKAGES = {"solver": "bench.solvers", "signal": "bench.signals", "predictor": "bench.predictors"}
"""Kinds whose built-in components are engine modules (``bench/<kind>s/<name>.py``: the building blocks methods
are composed of); plugin roots may add more in a folder of the same name."""
KINDS = tuple(FOLDERS)


def plugin_roots() -> list[Path]:
    roots = [PROJECT_ROOT]
    for entry in os.environ.get("BENCH_PLUGIN_PATH", "").split(os.pathsep):
        if entry.strip():
            path = Path(entry).expanduser().resolve()
            if path not in roots:
                roots.append(path)
    return roots


def plugin_files(folder: str) -> dict[str, Path]:
    """``stem -> file`` for every plugin file of a folder, over all roots (an earlier root wins)."""
    files: dict[str, Path] = {}
    for root in plugin_roots():
        directory = root / folder
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.py")):
            if path.stem.startswith("_"):
                continue
            files.setdefault(path.stem, path)
    return files


class _PluginFinder(importlib.abc.MetaPathFinder):
    """Resolves ``bench.plugins``, ``bench.plugins.<folder>`` and ``bench.plugins.<folder>.<stem>``."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102
        if fullname != PLUGIN_NAMESPACE and not fullname.startswith(PLUGIN_NAMESPACE + "."):
            return None
        parts = fullname[len(PLUGIN_NAMESPACE) :].strip(".").split(".") if fullname != PLUGIN_NAMESPACE else []
        if len(parts) <= 1:
            if parts and parts[0] not in FOLDERS.values():
                return None
            spec = importlib.machinery.ModuleSpec(fullname, _NamespaceLoader(), is_package=True)
            spec.submodule_search_locations = []
            return spec
        if len(parts) == 2 and parts[0] in FOLDERS.values():
            file = plugin_files(parts[0]).get(parts[1])
            if file is not None:
                return importlib.util.spec_from_file_location(fullname, file)
        return None


class _NamespaceLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return types.ModuleType(spec.name)

    def exec_module(self, module):
        module.__path__ = []


class _RootFinder(importlib.machinery.FileFinder):
    """The path-entry finder of the project root: it does not offer the plugin folders as top-level modules.

    When the project root is on ``sys.path`` (running from the checkout, or some editable installs), Python would
    resolve ``import datasets`` to our folder as a namespace package whenever no package of that name is
    installed. With this finder in place for that entry, ``datasets``, ``methods`` and ``baselines`` resolve to an
    installed package of that name or to nothing, and ``importlib.util.find_spec`` answers ``None`` as usual.
    """

    def find_spec(self, fullname, target=None):  # noqa: D102
        if fullname in FOLDERS.values():
            return None
        return super().find_spec(fullname, target)


def _guard_project_root() -> None:
    loaders = [
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
        (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES),
        (importlib.machinery.SourcelessFileLoader, importlib.machinery.BYTECODE_SUFFIXES),
    ]
    for entry in {*sys.path, os.getcwd()}:
        try:
            same = Path(entry or os.getcwd()).resolve() == PROJECT_ROOT
        except OSError:
            continue
        if same and not isinstance(sys.path_importer_cache.get(entry), _RootFinder):
            sys.path_importer_cache[entry] = _RootFinder(entry or os.getcwd(), *loaders)
    for name in FOLDERS.values():  # a namespace module of our folder imported before bench: forget it
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None) is None and any(
            Path(p).resolve().parent == PROJECT_ROOT for p in getattr(module, "__path__", [])
        ):
            del sys.modules[name]


_FINDER = _PluginFinder()


def install_plugin_finder() -> None:
    _guard_project_root()
    if not any(isinstance(f, _PluginFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _FINDER)


def _base_class(kind: str) -> type:
    if kind == "solver":
        from bench.solvers.base import Solver

        return Solver
    if kind == "signal":
        from bench.signals.base import Signal

        return Signal
    if kind == "predictor":
        from bench.predictors.base import Predictor

        return Predictor
    if kind == "dataset":
        from bench.dataset import Dataset

        return Dataset
    from bench.method import Method

    return Method


@lru_cache(maxsize=None)
def _load(kind: str) -> dict[str, type]:
    install_plugin_finder()
    folder = FOLDERS[kind]
    base = _base_class(kind)
    found: dict[str, type] = {}
    package = ENGINE_PACKAGES.get(kind)
    if package is not None:  # built-in engine modules: those defining a component named after the module
        pkg = importlib.import_module(package)
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
            if info.name.startswith("_") or info.name == "base":
                continue
            module = importlib.import_module(f"{package}.{info.name}")
            for obj in vars(module).values():
                if isinstance(obj, type) and issubclass(obj, base) and obj.__module__ == module.__name__ \
                        and obj.name == info.name:
                    found[info.name] = obj
    for stem, path in plugin_files(folder).items():
        if stem in found:
            raise UsageError(f"{kind} plugin {path} reuses the built-in name '{stem}'; rename the file")
        modname = f"{PLUGIN_NAMESPACE}.{folder}.{stem}"
        try:
            module = importlib.import_module(modname)
        except Exception as exc:
            raise UsageError(f"cannot load {kind} plugin {path}: {type(exc).__name__}: {exc}") from exc
        classes = [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, base) and obj.__module__ == modname and obj.name == stem
        ]
        if len(classes) != 1:
            raise UsageError(
                f"{kind} plugin {path} must define exactly one {base.__name__} subclass with name = '{stem}' "
                f"(found {len(classes)})"
            )
        cls = classes[0]
        expected = "baseline" if kind == "baseline" else kind
        if getattr(cls, "kind", None) != expected:
            cls.kind = expected  # the folder decides whether a method is listed as a method or a baseline
        found[stem] = cls
    return found


def components(kind: str) -> dict[str, type]:
    """``name -> class`` for every registered component of ``kind`` (see :data:`FOLDERS`)."""
    if kind not in FOLDERS:
        raise unknown_name("component kind", kind, FOLDERS)
    return dict(_load(kind))


def reload() -> None:
    """Forget what was discovered (tests that add plugin roots call this)."""
    _load.cache_clear()
    for name in [m for m in sys.modules if m.startswith(PLUGIN_NAMESPACE + ".")]:
        del sys.modules[name]


def create(kinds: str | tuple[str, ...], text: str) -> Any:
    """Instantiate a component from its id string, e.g. ``create('dataset', 'synthetic[n_tasks=4]')``."""
    from bench.component import parse_id

    kinds = (kinds,) if isinstance(kinds, str) else kinds
    name, params = parse_id(text)
    pool: dict[str, type] = {}
    for kind in kinds:
        pool.update(components(kind))
    if name not in pool:
        raise unknown_name("/".join(kinds), name, pool)
    return pool[name](**params)


def create_method(text: str) -> Any:
    """A method or a baseline, by id."""
    return create(("method", "baseline"), text)
