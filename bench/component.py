"""The base of every plugin: keyword parameters, a version, and one canonical id string.

A configured component is named ``name[k=v,...]`` (only parameters that differ from the defaults appear, sorted
by key). That string is the CLI selector, the table label, a cache-key input and the pytest id at once, and
:func:`parse_id` turns it back into the name and the parameters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from bench.errors import UsageError, unknown_name

_ID_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<params>.*)\])?$")
_PLAIN_STR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]*$")


def format_value(value: Any) -> str:
    """A parameter value as it appears in an id (parsed back by :func:`parse_value`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str) and _PLAIN_STR_RE.match(value) and value.lower() not in ("true", "false", "none"):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def parse_value(text: str) -> Any:
    text = text.strip()
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if text[:1] in '["{':
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"cannot parse parameter value {text!r}: {exc}") from None
        return tuple(value) if isinstance(value, list) else value
    return text


def _split_top_level(text: str) -> list[str]:
    parts, depth, start, in_str = [], 0, 0, False
    for i, ch in enumerate(text):
        if ch == '"' and (i == 0 or text[i - 1] != "\\"):
            in_str = not in_str
        elif not in_str and ch in "[{":
            depth += 1
        elif not in_str and ch in "]}":
            depth -= 1
        elif not in_str and depth == 0 and ch == ",":
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in (p.strip() for p in parts) if p]


def parse_id(text: str) -> tuple[str, dict[str, Any]]:
    """``'etap[n=10,solver=dp]'`` -> ``('etap', {'n': 10, 'solver': 'dp'})``."""
    match = _ID_RE.match(text.strip())
    if not match:
        raise UsageError(f"malformed component id {text!r}: expected name or name[key=value,...]")
    params: dict[str, Any] = {}
    for part in _split_top_level(match.group("params") or ""):
        if "=" not in part:
            raise UsageError(f"malformed parameter {part!r} in {text!r}: expected key=value")
        key, value = part.split("=", 1)
        params[key.strip()] = parse_value(value)
    return match.group("name"), params


def make_id(name: str, params: Mapping[str, Any]) -> str:
    if not params:
        return name
    inner = ",".join(f"{k}={format_value(params[k])}" for k in sorted(params))
    return f"{name}[{inner}]"


class Component:
    """Base of datasets, methods and baselines (sklearn-like).

    Subclasses declare ``name`` (equal to their file stem), ``version`` (bump it when results change: it feeds
    the cache keys), ``defaults`` (every parameter and its default), a ``parameters`` grid for sweeps and small
    ``test_parameters`` for the conformance tests. ``__init__`` only stores parameters; learned state ends in ``_``.

    ``profile_defaults`` maps a run profile (``smoke``, ``mini``, ``paper``) to the defaults it changes: sizes,
    iteration counts, epochs and time limits, never the algorithm (DESIGN "Profiles"). :meth:`at_profile` applies
    them to the parameters not given explicitly; a method's parts get them through :meth:`bench.method.Context.create`,
    and the record names the parts with the values they ran with.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "component"
    version: ClassVar[str] = "1"
    defaults: ClassVar[dict[str, Any]] = {}
    parameters: ClassVar[dict[str, list]] = {}
    test_parameters: ClassVar[dict[str, Any]] = {}
    profile_defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, **params: Any) -> None:
        for key in params:
            if key not in self.defaults:
                raise unknown_name(f"parameter of {self.kind} '{self.name}'", key, self.defaults)
        merged = dict(self.defaults)
        for key, value in params.items():
            merged[key] = self._coerce(key, value)
        self.params: dict[str, Any] = merged
        self.given: frozenset[str] = frozenset(params)
        """The parameters given explicitly (a profile does not change them)."""

    def at_profile(self, profile: str | None) -> Component:
        """This component with the defaults of ``profile`` (:attr:`profile_defaults`) for the parameters not given
        explicitly; itself when the profile changes nothing."""
        given = getattr(self, "given", frozenset())
        changes = {k: v for k, v in self.profile_defaults.get(profile or "", {}).items() if k not in given}
        if not changes:
            return self
        clone = type(self)(**{k: self.params[k] for k in given}, **changes)
        clone.given = given
        return clone

    def _coerce(self, key: str, value: Any) -> Any:
        default = self.defaults[key]
        if default is None or value is None or isinstance(value, type(default)):
            return value
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(default, tuple) and isinstance(value, list):
            return tuple(value)
        raise UsageError(
            f"parameter '{key}' of {self.kind} '{self.name}' must be {type(default).__name__}, "
            f"got {value!r} ({type(value).__name__})"
        )

    def __getattr__(self, key: str) -> Any:
        params = self.__dict__.get("params")
        if params is not None and key in params:
            return params[key]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {key!r}")

    @property
    def id(self) -> str:
        changed = {k: v for k, v in self.params.items() if v != self.defaults[k]}
        return make_id(self.name, changed)

    def identity(self) -> dict[str, Any]:
        """Everything about this component that determines its results (for cache keys); with the profiles'
        defaults where it has any (a run key also holds the profile)."""
        out = {"kind": self.kind, "name": self.name, "version": self.version, "params": dict(self.params)}
        if self.profile_defaults:
            out["profile_defaults"] = {p: dict(v) for p, v in self.profile_defaults.items()}
        return out

    def __repr__(self) -> str:
        return f"<{self.kind} {self.id}>"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.params == self.params  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self.id)
