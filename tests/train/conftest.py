"""Fixtures for tests/train: a small BPE tokenizer and two token-shard folders (see train_helpers.py)."""

from __future__ import annotations

import pytest
import torch
from train_helpers import VOCAB, _texts, write_shards

from phiforge.tokenizer import train_bpe

# These models are tiny: one thread is faster, and on a shared 2-core machine two OpenMP threads can
# spin against other processes' threads (measured 100x slower). Subprocesses get OMP_NUM_THREADS=1.
torch.set_num_threads(1)


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
