"""Fixtures for RAG tests: a handful of documents indexed with the real MiniLM (embedding kept to a few
chunks), and a tiny random model with a BPE tokenizer for answer()."""

from __future__ import annotations

import pytest
import torch

from phiforge.infer.engine import Engine
from phiforge.model import build, get_preset
from phiforge.rag import Index, read_documents
from phiforge.tokenizer import train_bpe

DOCS = {
    "shells.txt": "shlex.quote(s) returns a shell-escaped version of the string s, safe to paste into a command line.",
    "colors.txt": "colorsys.rgb_to_hls converts a colour from red green blue coordinates to hue lightness saturation.",
    "zips.txt": "The zipfile module reads and writes ZIP archives; ZipFile.extractall unpacks every member.",
}


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    for name, text in DOCS.items():
        (d / name).write_text(text, encoding="utf-8")
    (d / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    (d / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    return d


@pytest.fixture(scope="session")
def built(folder, tmp_path_factory):
    """(index of the three documents, add() stats, folder): shared, so tests that change it work on a copy."""
    idx = Index.create(tmp_path_factory.mktemp("idx") / "idx")
    docs, skipped = read_documents(str(folder))
    st = idx.add(docs, source=str(folder), skipped=skipped, progress=False)
    return idx, st, folder


@pytest.fixture(scope="session")
def engine():
    texts = (
        list(DOCS.values()) * 20 + ["Answer the question using the numbered sources. Question: what?"] * 20
    )
    tok = train_bpe(texts, vocab_size=400)
    cfg = get_preset("tiny").replace(vocab_size=400, num_hidden_layers=1, max_position_embeddings=256)
    torch.manual_seed(0)
    return Engine(build(cfg, seed=0), tok)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
