"""Fixtures: a small BPE tokenizer and two token-shard folders in the format `phiforge data run` writes."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from phiforge.tokenizer import train_bpe

VOCAB = 512
# These models are tiny: one thread is faster, and on a shared 2-core machine two OpenMP threads can
# spin against other processes' threads (measured 100x slower). Subprocesses get OMP_NUM_THREADS=1.
torch.set_num_threads(1)


def _texts(pattern: str, limit: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in sorted(root.glob(pattern))[:limit]:
        try:
            out.append(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return out


def write_shards(out: Path, tok, texts: list[str], val_every: int = 10) -> Path:
    """index.json + train/val .bin files exactly as data.shards.finalize_index lays them out."""
    out.mkdir(parents=True, exist_ok=True)
    split = {"train": [], "val": []}
    for i, t in enumerate(texts):
        split["val" if i % val_every == 0 else "train"].append(tok.encode(t) + [tok.eos_id])
    index = {"format": "phiforge-token-shards-v1", "dtype": "<u2", "eos_id": tok.eos_id,
             "vocab_size": tok.vocab_size, "tokenizer": None, "splits": {}}  # fmt: skip
    for s, docs in split.items():
        ids = np.concatenate([np.asarray(d, dtype="<u2") for d in docs])
        (out / f"{s}_00000.bin").write_bytes(ids.tobytes())
        f = {"path": f"{s}_00000.bin", "tokens": len(ids), "docs": len(docs)}
        index["splits"][s] = {"files": [f], "tokens": len(ids), "docs": len(docs)}
    (out / "index.json").write_text(json.dumps(index))
    return out


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """{"tok": Tokenizer dir, "a": shards dir, "b": shards dir}: two corpora, one tokenizer."""
    root = tmp_path_factory.mktemp("traindata")
    a, b = _texts("[a-j]*.py", 30), _texts("[k-z]*.py", 30)
    tok = train_bpe(a + b, vocab_size=VOCAB, out_dir=root / "tok")
    return {
        "tok": root / "tok",
        "a": write_shards(root / "code_a", tok, a),
        "b": write_shards(root / "code_b", tok, b),
    }


def recipe(data, out, **kw) -> dict:
    """A tiny 2-phase recipe dict (seconds on 2 cores); kw overrides top-level fields."""
    r = {
        "name": "t",
        "out": str(out),
        "preset": "tiny",
        "model_overrides": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2},
        "tokenizer": str(data["tok"]),
        "seq_len": 64,
        "micro_batch": 4,
        "lr": 3e-3,
        "warmup_steps": 2,
        "eval_every": 4,
        "eval_tokens": 1024,
        "save_every": 3,
        "peak_flops": 1e11,
        "progress": False,
        "phases": [
            {"name": "p1", "tokens": 6 * 256, "datasets": [{"path": str(data["a"])}]},
            {"name": "p2", "tokens": 4 * 256,
             "datasets": [{"path": str(data["a"]), "weight": 0.3}, {"path": str(data["b"]), "weight": 0.7}]},
        ],
    }  # fmt: skip
    r.update(kw)
    return r
