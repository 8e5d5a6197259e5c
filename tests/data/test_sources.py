import gzip
import json
from pathlib import Path

import pytest
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.writers import JsonlWriter

from phiforge.data import DataError
from phiforge.data.sources import (
    LocalPythonReader,
    TextFolderReader,
    iter_documents,
    list_python_files,
    make_reader,
    read_source,
    split_module,
)

MODULE = '''"""A module docstring."""
import os

CONSTANT = 3


# The helper that adds.
@staticmethod
def add(a, b):
    """Add two numbers."""
    return a + b


def tiny(): return 1


class Point:
    """A point."""

    def norm(self):
        return 0


if __name__ == "__main__":
    print(add(1, 2))
'''


def test_split_module_every_line_once():
    pieces = split_module(MODULE)
    kinds = [(k, n) for k, n, _, _ in pieces]
    assert kinds == [("module", ""), ("function", "add"), ("class", "Point")]
    add = pieces[1][3]
    assert add.startswith("# The helper that adds.\n@staticmethod\ndef add")  # comment + decorator kept
    assert pieces[1][2] == 7  # first line of the piece, 1-based
    rest = pieces[0][3]
    assert "def tiny(): return 1" in rest  # too short to stand alone
    assert "CONSTANT = 3" in rest and '__name__ == "__main__"' in rest
    # nothing lost, nothing twice: every non-blank source line is in exactly one piece
    src_lines = [line for line in MODULE.splitlines() if line.strip()]
    got = [line for *_, t in pieces for line in t.splitlines() if line.strip()]
    assert sorted(got) == sorted(src_lines)


def test_split_module_syntax_error_stays_whole():
    text = "def broken(:\n    pass\n"
    assert split_module(text) == [("module", "", 1, text)]


def test_read_source_skips_bad_files(tmp_path):
    (tmp_path / "ok.py").write_text("x = 1\n")
    (tmp_path / "bin.py").write_bytes(b"\x00\x01\x02abc")
    (tmp_path / "latin.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))
    assert read_source(tmp_path / "ok.py") == ("x = 1\n", "ok")
    assert read_source(tmp_path / "bin.py") == (None, "binary")
    assert read_source(tmp_path / "latin.py") == (None, "non_utf8")
    assert read_source(tmp_path / "missing.py") == (None, "unreadable")


@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_local_python_corpus_is_real_and_deterministic():
    files = list_python_files(max_bytes=2_000_000)
    assert files == list_python_files(max_bytes=2_000_000)
    total = sum(p.stat().st_size for _, _, p in files)
    assert 1_500_000 < total <= 2_000_000
    # the full installation holds tens of MB of code on any machine with Python
    assert sum(p.stat().st_size for _, _, p in list_python_files(origins=("stdlib",))) > 10_000_000
    docs = list(LocalPythonReader(max_bytes=300_000).run())
    assert len(docs) > 50
    ids = [d.id for d in docs]
    assert len(set(ids)) == len(ids)
    kinds = {d.metadata["kind"] for d in docs}
    assert {"module", "function", "class"} <= kinds
    for d in docs:
        m = d.metadata
        assert m["origin"] in ("stdlib", "site-packages") and m["path"].endswith(".py")
        assert m["lines"] >= 1 and m["package"]
    # two tasks together produce exactly the documents of one
    r = LocalPythonReader(max_bytes=300_000)
    split = [d.id for rank in range(2) for d in r.run(rank=rank, world_size=2)]
    assert sorted(split) == sorted(ids)


def test_text_folder_reader_counts_skips(tmp_path):
    (tmp_path / "a.txt").write_text("hello world\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("# title\nsome text\n")
    (tmp_path / "blob.bin").write_bytes(b"\x00" * 100)
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe bad")
    (tmp_path / "empty.txt").write_text("  \n")
    r = TextFolderReader(str(tmp_path))
    docs = list(r.run())
    assert sorted(d.id for d in docs) == ["a.txt", "sub/b.md"]
    stats = r.stats.to_dict()["stats"]
    assert stats["skipped_binary"] == 1 and stats["skipped_non_utf8"] == 1 and stats["skipped_empty"] == 1


def test_make_reader_user_files(tmp_path):
    rows = [{"id": f"r{i}", "text": f"document {i}", "lang": "en"} for i in range(5)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs = list(make_reader(str(tmp_path / "d.jsonl")).run())
    assert [d.text for d in docs] == [r["text"] for r in rows]
    assert docs[0].metadata["lang"] == "en"

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    docs = list(make_reader(str(tmp_path / "d.parquet")).run())
    assert [d.id for d in docs] == [r["id"] for r in rows]

    with pytest.raises(DataError, match="nope"):
        make_reader(str(tmp_path / "nope"))
    (tmp_path / "x.csvx").write_text("a")
    with pytest.raises(DataError, match="unsupported"):
        make_reader(str(tmp_path / "x.csvx"))


@pytest.mark.slow  # a datatrove executor end to end, ~10 s
def test_harvest_through_datatrove_executor(tmp_path: Path):
    out = tmp_path / "raw"
    LocalPipelineExecutor(
        pipeline=[LocalPythonReader(max_bytes=200_000), JsonlWriter(str(out))],
        tasks=2,
        workers=2,
        logging_dir=str(tmp_path / "logs"),
    ).run()
    files = sorted(out.glob("*.jsonl.gz"))
    assert len(files) == 2
    with gzip.open(files[0], "rt") as f:
        first = json.loads(f.readline())
    assert {"text", "id", "metadata"} <= set(first) and first["metadata"]["source"] == "local-python"
    back = list(iter_documents(out))
    assert len(back) == len(list(LocalPythonReader(max_bytes=200_000).run()))
    assert "file_path" not in back[0].metadata
