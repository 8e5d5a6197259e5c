"""Chunking, fusion, the on-disk index: build, extend without re-embedding, reload, refusals."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from phiforge.rag import Embedder, Index, RagError, read_documents, rrf
from phiforge.rag.index import chunk_spans


def test_chunk_spans_overlap_and_cover():
    offsets = [(i * 2, i * 2 + 1) for i in range(25)]  # 25 one-char tokens, a space between each
    spans = chunk_spans(offsets, size=10, overlap=3)
    assert spans == [(0, 19), (14, 33), (28, 47), (42, 49)]  # tokens 0-9, 7-16, 14-23, 21-24
    assert chunk_spans(offsets[:24], 10, 3)[-1] == (28, 47)  # no window of overlap only at the end
    assert chunk_spans(offsets[:4], 10, 3) == [(0, 7)]  # short text: one chunk
    assert chunk_spans([], 10, 3) == []
    with pytest.raises(ValueError, match="overlap"):
        chunk_spans(offsets, 10, 10)


def test_chunk_spans_every_token_in_a_chunk():
    offsets = [(i, i + 1) for i in range(103)]
    for size, overlap in [(10, 0), (10, 3), (7, 6), (200, 32)]:
        spans = chunk_spans(offsets, size, overlap)
        inside = {t for a, b in spans for t in range(a, b)}
        assert inside == set(range(103)), (size, overlap)
        assert all(b - a <= size for a, b in spans)


def test_chunks_are_embedder_tokens():
    emb = Embedder()
    text = "word " * 500
    spans = chunk_spans(emb.offsets(text), 200, 32)
    assert len(spans) == 3  # 500 tokens, windows at 0, 168, 336
    assert all(len(emb.offsets(text[a:b])) == 200 for a, b in spans[:-1])


def test_rrf_fuses_by_reciprocal_rank():
    fused = rrf([[1, 2, 3], [3, 1, 4]], k=60)
    assert [r for r, _ in fused] == [1, 3, 2, 4]  # 1: 1/61+1/62, 3: 1/63+1/61, 2: 1/62, 4: 1/63
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)


def test_build_counts_skipped_and_retrieves(built):
    idx, st, _ = built
    assert st == {"documents": 3, "chunks": 3, "already": 0}
    assert idx.meta["skipped"] == {"binary": 1, "non_utf8": 1}
    assert idx.meta["embedder"] == "all-MiniLM-L6-v2" and idx.meta["dim"] == 384
    q = "how do I escape a string for the shell"
    for mode in ("bm25", "dense", "fused"):
        assert idx.search(q, k=2, mode=mode)[0].doc_id == "shells.txt", mode
    assert idx.search("zzzz qqqq", k=2, mode="bm25") == []  # no shared word: BM25 returns nothing


def test_extend_without_rebuild(built, tmp_path):
    shared, _, folder = built
    shutil.copytree(shared.path, tmp_path / "idx")
    idx = Index.load(tmp_path / "idx")
    idx._embedder = shared.embedder  # the same model, loaded once
    before = np.load(idx.path / "emb-00000.npy")
    more = tmp_path / "more"
    more.mkdir()
    (more / "tar.txt").write_text(
        "tarfile.open reads tar archives compressed with gzip or bzip2.", encoding="utf-8"
    )
    st = idx.add(read_documents(str(more))[0], progress=False)
    assert st == {"documents": 1, "chunks": 1, "already": 0}
    assert idx.meta["shards"] == ["00000", "00001"]
    assert np.array_equal(np.load(idx.path / "emb-00000.npy"), before)  # old chunks not embedded again
    again = idx.add(read_documents(str(folder))[0], progress=False)
    assert again == {"documents": 0, "chunks": 0, "already": 3}  # re-adding a source adds nothing
    reloaded = Index.load(idx.path)
    assert len(reloaded) == 4 and reloaded.meta["documents"] == 4
    assert np.allclose(reloaded.emb, idx.emb)
    assert reloaded.search("gzip compressed tar archive", k=1)[0].doc_id == "tar.txt"


def test_refuses_another_embedder(built, tmp_path):
    idx, _, _ = built
    with pytest.raises(RagError, match="built with embedder 'all-MiniLM-L6-v2', not 'other-model'"):
        Index.load(idx.path, embedder="other-model")
    with pytest.raises(RagError, match="not 'all-MiniLM-L6-v2' nor a sentence-transformers directory"):
        Index.create(tmp_path / "x", embedder=str(tmp_path / "nothing"))
    assert not (tmp_path / "x").exists()


def test_empty_and_missing_index(tmp_path):
    idx = Index.create(tmp_path / "empty")
    with pytest.raises(RagError, match="the index is empty"):
        idx.search("anything")
    with pytest.raises(RagError, match="not an index"):
        Index.load(tmp_path / "nowhere")
    with pytest.raises(RagError, match="already exists"):
        Index.create(tmp_path / "empty")


def test_ready_refuses_what_cannot_be_searched(built, tmp_path):
    shared, _, _ = built
    assert shared.ready() is shared  # loads the embedder and BM25; a server calls it once at startup
    with pytest.raises(RagError, match="the index is empty"):
        Index.create(tmp_path / "empty").ready()

    def copy(name: str) -> Index:
        shutil.copytree(shared.path, tmp_path / name)
        return Index.load(tmp_path / name)

    gone = copy("gone")
    gone.meta["embedder"] = str(tmp_path / "no-such-model")
    with pytest.raises(
        RagError, match=r"gone: built with embedder '.*no-such-model': not 'all-MiniLM-L6-v2'"
    ):
        gone.ready()
    narrow = copy("narrow")  # as if built by another embedder of the same name: 8-d vectors, MiniLM gives 384
    np.save(narrow.path / "emb-00000.npy", np.ones((3, 8), np.float32))
    narrow = Index.load(narrow.path)
    narrow._embedder = shared.embedder  # the same model, loaded once
    with pytest.raises(
        RagError, match="built with an embedder of 8-d vectors, but 'all-MiniLM-L6-v2' gives 384-d"
    ):
        narrow.ready()
