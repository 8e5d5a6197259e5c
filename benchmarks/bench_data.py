"""Data pipeline speed on this machine, with references measured in the same run.

    python benchmarks/bench_data.py [--docs 4000] [--embed-docs 300] [--full]

- quality scoring, docs/s: hashed n-gram classifier and MiniLM embedding classifier (both trained here on
  heuristic labels of the same documents)
- MinHash + exact dedup (datatrove stages, 2 workers), docs/s over the whole run_dedup
- tokenization into shards (TokenizeStep, one process) vs the `tokenizers` library's own encode_batch on the
  same texts: tokens/s and the ratio (1.0 = our shard writing costs nothing on top)
- --full: the whole `phiforge data run` on the embedded default (goal: under 5 minutes)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from datatrove.pipeline.writers import JsonlWriter

from phiforge.data.annotate import HeuristicAnnotator
from phiforge.data.dedup import DedupConfig, run_dedup
from phiforge.data.quality import QualityClassifier
from phiforge.data.shards import TokenizeStep
from phiforge.data.sources import LocalPythonReader
from phiforge.tokenizer import train_bpe


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=4000)
    ap.add_argument("--embed-docs", type=int, default=300)
    ap.add_argument("--full", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    docs = [d for d in LocalPythonReader(max_bytes=40_000_000).run()][: args.docs]
    texts = [d.text for d in docs]
    mb = sum(map(len, texts)) / 1e6
    print(f"corpus: {len(docs)} documents, {mb:.1f} MB of local Python code")
    labels = [a.score for a in HeuristicAnnotator().annotate(texts, ["code"] * len(texts))]

    hashed = QualityClassifier("hashed").fit(texts, labels)
    _, t = timed(lambda: hashed.predict(texts))
    print(f"score hashed:    {len(texts) / t:8.0f} docs/s  ({mb / t:.1f} MB/s)")
    n = args.embed_docs
    emb = QualityClassifier("embedding").fit(texts[:n], labels[:n])
    _, t = timed(lambda: emb.predict(texts[n : 2 * n]))
    print(f"score embedding: {n / t:8.1f} docs/s  (MiniLM-L6, first 2048 chars per doc)")

    src = tmp / "docs"
    with JsonlWriter(str(src)) as w:
        for i, d in enumerate(docs):
            w.write(d, rank=i % 2)
    stats, t = timed(lambda: run_dedup(src, tmp / "dedup", tmp / "dedup_work", DedupConfig(), 2, 2))
    print(
        f"dedup (exact + MinHash, 2 workers): {len(docs) / t:8.0f} docs/s, duplicate rate {stats['duplicate_rate']:.2%}"
    )

    tok, _ = timed(lambda: train_bpe(texts, 8192, tmp / "tok"))
    ref, t_ref = timed(lambda: tok.tok.encode_batch_fast(texts, add_special_tokens=False))
    n_tokens = sum(len(e.ids) for e in ref)
    step = TokenizeStep(str(tmp / "tok"), str(tmp / "shards"), 0.02)
    _, t_ours = timed(lambda: list(step.run(iter(docs))))
    print(
        f"tokenize: ours {n_tokens / t_ours / 1e6:.2f}M tok/s, tokenizers encode_batch {n_tokens / t_ref / 1e6:.2f}M "
        f"tok/s, ratio {t_ref / t_ours:.2f}x"
    )
    if args.full:
        from phiforge.data.pipeline import DataConfig, run

        _, t = timed(lambda: run(DataConfig(), tmp / "run"))
        print(f"full `phiforge data run` on the embedded default: {t:.0f} s (goal < 300 s)")
    shutil.rmtree(tmp)


if __name__ == "__main__":  # datatrove's forkserver workers re-import this file
    main()
