"""Data files under the data root: clear errors for missing files, checked and atomic downloads."""

from __future__ import annotations

import hashlib

import pytest

from bench.datafiles import DataFile, download, locate
from bench.errors import DataNotFound, UsageError

PAYLOAD = b"1 2 3\n"
FILES = (DataFile("d/a.txt", url="https://example.org/a.txt", sha256=hashlib.sha256(PAYLOAD).hexdigest()),
         DataFile("d/b.dat", note="ask the authors"))


def test_locate_names_every_missing_file_and_where_to_get_it(tmp_path):
    with pytest.raises(DataNotFound) as err:
        locate("demo", tmp_path, FILES)
    text = str(err.value)
    assert "d/a.txt" in text and "https://example.org/a.txt" in text and "ask the authors" in text
    assert "bench download demo" in text
    for f in FILES:
        (tmp_path / f.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f.path).write_bytes(PAYLOAD)
    assert locate("demo", tmp_path, FILES) == [tmp_path / f.path for f in FILES]


def test_download_checks_the_hash_and_leaves_nothing_half_written(tmp_path):
    written = download("demo", tmp_path, FILES, fetch=lambda url, dest: dest.write_bytes(PAYLOAD))
    assert written == [tmp_path / "d/a.txt"] and (tmp_path / "d/a.txt").read_bytes() == PAYLOAD
    assert download("demo", tmp_path, FILES, fetch=lambda url, dest: pytest.fail("exists")) == []
    bad = tmp_path / "bad"
    with pytest.raises(DataNotFound, match="sha256"):
        download("demo", bad, FILES, fetch=lambda url, dest: dest.write_bytes(b"other"))
    assert not (bad / "d/a.txt").exists() and list((bad / "d").iterdir()) == []

    def offline(url, dest):
        raise OSError("network is unreachable")

    with pytest.raises(UsageError, match="network is unreachable"):
        download("demo", tmp_path / "x", FILES, fetch=offline)
