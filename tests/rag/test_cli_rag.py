"""`phiforge rag ...` as a user meets it: real subprocesses, counts printed, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from phiforge.model import save_model


def phiforge(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "phiforge.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_index_extend_ask(folder, engine, tmp_path):
    idx = tmp_path / "idx"
    r = phiforge("rag", "index", "--source", str(folder), "--out", str(idx))
    assert r.returncode == 0, r.stderr
    assert "+3 documents (+3 chunks; 0 already indexed), 3 chunks in all" in r.stdout
    assert "skipped files: 1 binary, 1 non_utf8" in r.stdout

    other = phiforge("rag", "index", "--source", str(folder), "--out", str(idx), "--embedder", str(tmp_path))
    assert other.returncode == 1
    assert other.stderr.strip().splitlines() == [
        f"error: {idx}: built with embedder 'all-MiniLM-L6-v2', not '{tmp_path}': "
        "query it with the same embedder or build a new index"
    ]

    model = tmp_path / "model"
    save_model(engine.model, model)
    engine.tok.save(model)
    r = phiforge(
        "rag", "ask", "-m", str(model), "--index", str(idx), "--max-new-tokens", "4", "shell quoting?"
    )
    assert r.returncode == 0, r.stderr
    assert "[1] shells.txt" in r.stdout  # the sources, best first
    long = phiforge("rag", "ask", "-m", str(model), "--index", str(idx), "why " * 400)
    assert long.returncode == 1 and "error: the question alone takes" in long.stderr


def test_ask_empty_index_fails_before_the_model_loads(tmp_path):
    from phiforge.rag import Index

    Index.create(tmp_path / "empty")
    r = phiforge("rag", "ask", "-m", str(tmp_path / "no-model"), "--index", str(tmp_path / "empty"), "q")
    assert r.returncode == 1
    assert (
        r.stderr.strip()
        == f"error: {tmp_path / 'empty'}: the index is empty (add documents with `phiforge rag index`)"
    )
