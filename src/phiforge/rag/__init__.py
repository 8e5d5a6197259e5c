"""Retrieval-augmented answering: an index of chunks (BM25 + MiniLM, fused by reciprocal rank) and
`answer(engine, index, question)`, which fits the best chunks into the context and cites them."""

from .answer import Answer, answer
from .index import DEFAULT_EMBEDDER, Embedder, Hit, Index, RagError, read_documents, rrf

__all__ = [
    "DEFAULT_EMBEDDER",
    "Answer",
    "Embedder",
    "Hit",
    "Index",
    "RagError",
    "answer",
    "read_documents",
    "rrf",
]
