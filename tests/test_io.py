"""phiforge.io: atomic writes keep the old file on failure; a bad jsonl line names file:line."""

from __future__ import annotations

import gzip
from itertools import islice

import pytest

from phiforge.io import (
    JsonlError,
    atomic_path,
    atomic_write,
    read_jsonl,
    read_metrics,
    write_json,
    write_jsonl,
)


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    p = atomic_write(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert p.read_text() == "old" and [x.name for x in tmp_path.iterdir()] == ["a.txt"]
    with pytest.raises(TypeError):  # json.dumps fails before any byte is written
        write_json(p, {1j: 1})
    assert p.read_text() == "old"


def test_writes_replace_and_round_trip(tmp_path):
    write_json(tmp_path / "sub" / "a.json", {"é": [1, 2]})  # the folder is created
    assert (tmp_path / "sub" / "a.json").read_text(encoding="utf-8") == '{\n  "é": [\n    1,\n    2\n  ]\n}\n'
    atomic_write(tmp_path / "b.bin", b"\x00\x01")
    atomic_write(tmp_path / "b.bin", b"\x02")
    assert (tmp_path / "b.bin").read_bytes() == b"\x02"
    rows = [{"a": 1}, {"b": "ü"}]
    for name in ("r.jsonl", "r.jsonl.gz"):
        write_jsonl(tmp_path / name, rows)
        assert list(read_jsonl(tmp_path / name)) == rows
    assert gzip.decompress((tmp_path / "r.jsonl.gz").read_bytes()).count(b"\n") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "r.jsonl", "r.jsonl.gz", "sub"]


def test_directory_replaces_directory(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old").write_text("x")
    with atomic_path(tmp_path / "d") as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("y")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["new"]
    with pytest.raises(OSError), atomic_path(tmp_path / "d") as tmp:
        tmp.mkdir()
        raise OSError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["d"] and (tmp_path / "d" / "new").is_file()


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2}\n{"a": \n')
    with pytest.raises(JsonlError, match=rf"^{p}:4: not valid JSON"):
        list(read_jsonl(p))
    assert list(islice(read_jsonl(p, numbered=True), 2)) == [(1, {"a": 1}), (3, {"a": 2})]
    p.write_bytes(b'\xef\xbb\xbf{"bom": true}\n')  # some editors start the file with a BOM
    assert list(read_jsonl(p)) == [{"bom": True}]


def test_read_metrics(tmp_path):
    assert read_metrics(tmp_path) == []  # a run that has not logged yet
    write_jsonl(tmp_path / "metrics.jsonl", [{"type": "train", "step": 1}])
    assert (
        read_metrics(tmp_path) == read_metrics(tmp_path / "metrics.jsonl") == [{"type": "train", "step": 1}]
    )
