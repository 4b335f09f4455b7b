"""Real data files: where an adapter finds them under the data root, and how they are downloaded on request.

A dataset adapter declares its files as :class:`DataFile` entries (path relative to the data root, a public URL
where one exists, the sha256 of the published bytes). :func:`locate` returns their paths or raises
:class:`~bench.errors.DataNotFound` naming every missing file and where to get it; :func:`download` fetches the
files that have a URL into the data root (``python -m bench download DATASET --data-root DIR``), checks their
sha256 and writes each atomically, so an interrupted download leaves no half file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.errors import DataNotFound, UsageError


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset: ``path`` under the data root, a public ``url`` (None: no public copy) and the
    ``sha256`` of the published bytes (None: not checked)."""

    path: str
    url: str | None = None
    sha256: str | None = None
    note: str = ""  # how to obtain it when there is no URL


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _where(file: DataFile) -> str:
    if file.url:
        return file.url
    return file.note or "no public copy is known"


def locate(dataset: str, root: Path, files: Sequence[DataFile]) -> list[Path]:
    """The paths of ``files`` under ``root``; a :class:`DataNotFound` naming every missing one otherwise."""
    paths = [root / f.path for f in files]
    missing = [(f, p) for f, p in zip(files, paths) if not p.is_file()]
    if missing:
        lines = "; ".join(f"{p} (get it from {_where(f)})" for f, p in missing)
        hint = (f" `python -m bench download {dataset} --data-root {root}` fetches the ones with a URL."
                if any(f.url for f, _ in missing) else "")
        raise DataNotFound(f"{dataset}: missing {lines}.{hint} Without --data-root the adapter uses its synthetic "
                           "stand-in (data=synthetic).")
    return paths


Fetcher = Callable[[str, Path], None]


def _urlopen_fetch(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as fh:  # noqa: S310 - public URLs
        while chunk := response.read(1 << 20):
            fh.write(chunk)


def download(dataset: str, root: Path, files: Iterable[DataFile], fetch: Fetcher | None = None,
             force: bool = False) -> list[Path]:
    """Download every file with a URL that is not already present (or all with ``force``) into ``root``.

    Each file goes to a temporary name next to its destination, is checked against its sha256, and is renamed
    into place only then. Returns the paths written. A file without URL is skipped (its note says how to get it).
    """
    fetch = fetch or _urlopen_fetch
    written = []
    for file in files:
        dest = root / file.path
        if file.url is None or (dest.is_file() and not force):
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".download-")
        os.close(fd)
        try:
            try:
                fetch(file.url, Path(tmp))
            except OSError as exc:
                raise UsageError(f"{dataset}: downloading {file.url} failed: {exc}") from exc
            if file.sha256 is not None:
                got = sha256_of(Path(tmp))
                if got != file.sha256:
                    raise DataNotFound(f"{dataset}: {file.url} gave bytes with sha256 {got}, expected "
                                       f"{file.sha256}; the file was not saved")
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        written.append(dest)
    return written
