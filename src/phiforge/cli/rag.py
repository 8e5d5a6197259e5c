"""`phiforge rag ...`: build or extend a retrieval index, ask a model with it, measure the retriever.
Each command calls phiforge.rag (or the rag_qa task) and prints what it did."""

from __future__ import annotations

from pathlib import Path

import typer

rag_app = typer.Typer(
    help="Retrieval: index documents, answer questions citing them, measure recall.", no_args_is_help=True
)


@rag_app.command("index")
def index_cmd(
    source: str = typer.Option(..., help="jsonl / parquet file or folder, a text folder, 'local-python', or 'python-stdlib' (the rag_qa corpus)."),
    out: Path = typer.Option(..., help="Index directory: created, or extended when it exists (only new documents are embedded)."),
    max_bytes: int = typer.Option(800_000, help="Byte budget of source files for local-python / python-stdlib (~15 chunks/s to embed on 2 CPU threads)."),
    embedder: str = typer.Option(None, help="'all-MiniLM-L6-v2' (default) or a sentence-transformers directory; an existing index keeps its own."),
    chunk_tokens: int = typer.Option(200, help="Embedder tokens per chunk (new index only)."),
    overlap: int = typer.Option(32, help="Tokens shared by neighbouring chunks (new index only)."),
):  # fmt: skip
    """Chunk, embed and index documents; rerun with another --source to extend the index without a rebuild."""
    from ..rag import Index, read_documents

    idx = Index.open_or_create(out, embedder, chunk_tokens=chunk_tokens, overlap=overlap)
    docs, skipped = read_documents(source, max_bytes)
    st = idx.add(docs, source=source, skipped=skipped)
    skip = ", ".join(f"{v} {k}" for k, v in skipped.items()) or "none"
    print(
        f"{out}: +{st['documents']} documents (+{st['chunks']} chunks; {st['already']} already indexed), "
        f"{len(idx)} chunks in all; skipped files: {skip}; embedder {idx.meta['embedder']}"
    )


@rag_app.command("ask")
def ask_cmd(
    question: str = typer.Argument(..., help="The question."),
    model: str = typer.Option(
        ..., "--model", "-m", help="Model: HF-layout directory, .gguf file or short name (smollm2-135m-instruct)."
    ),
    index: Path = typer.Option(..., "--index", help="Index directory (phiforge rag index)."),
    k: int = typer.Option(8, help="Chunks retrieved; the best that fit the context go into the prompt."),
    max_new_tokens: int = typer.Option(256, help="Answer length budget."),
    context: int = typer.Option(None, help="Token budget of prompt + answer (default: the model's context)."),
    device: str = typer.Option("cpu", help="cpu, cuda, ..."),
):  # fmt: skip
    """Answer a question from the index, citing its sources as [1], [2]."""
    from ..infer.engine import Engine
    from ..infer.sampling import SamplingParams
    from ..rag import Index, answer

    idx = Index.load(index)
    if not len(idx):
        idx.search(question)  # the one clear line for an empty index, before the model loads
    engine = Engine.load(model, device=device)
    ans = answer(
        engine,
        idx,
        question,
        k=k,
        params=SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0),
        budget=context,
    )
    print(ans.text)
    print()
    for s in ans.sources:
        print(f"[{s['n']}] {s['title']}" + ("  (cited)" if s["n"] in ans.cited else ""))


@rag_app.command("recall")
def recall_cmd(
    index: Path = typer.Option(..., "--index", help="An index built with --source python-stdlib."),
    limit: int = typer.Option(None, help="First N questions of the rag_qa set."),
):  # fmt: skip
    """Retriever recall@k on the rag_qa questions: BM25, dense (MiniLM) and the two fused."""
    from ..eval.tasks import rag_qa
    from ..rag import Index

    idx = Index.load(index)
    items = rag_qa.build()[:limit]
    table = rag_qa.recall_at_k(idx, items)
    print(f"recall@k over {len(items)} rag_qa questions, {len(idx)} chunks ({idx.meta['embedder']})")
    print("| retriever | " + " | ".join(f"R@{k}" for k in next(iter(table.values()))) + " |")
    print("|---|" + "---|" * len(next(iter(table.values()))))
    for mode, row in table.items():
        print(f"| {mode} | " + " | ".join(f"{v:.3f}" for v in row.values()) + " |")


def register(app: typer.Typer) -> None:
    app.add_typer(rag_app, name="rag")
