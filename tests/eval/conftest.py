"""Shared fixtures: a tiny random Phi-3 model + BPE tokenizer saved in HF layout, and the benchmark folder."""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path

import pytest
import torch

from phiforge.model import build, get_preset, save_model
from phiforge.tokenizer import train_bpe

BENCH = Path(__file__).resolve().parents[3] / "shared" / "benchmarks"
if not BENCH.is_dir():
    BENCH = Path("/work/shared/benchmarks")


def corpus() -> list[str]:
    """Text for the tokenizer: stdlib source and some English, so prompts of every task tokenize sensibly."""
    import collections
    import json as j

    texts = [inspect.getsource(m) for m in (collections, j, textwrap)]
    texts.append("Question: Which of these is true? Answer: The answer is 42. A B C D\n" * 20)
    return texts


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny-model")
    tok = train_bpe(corpus(), vocab_size=512)
    cfg = get_preset("tiny").replace(vocab_size=512, num_hidden_layers=2)
    torch.manual_seed(0)
    model = build(cfg, seed=0)
    with torch.no_grad():  # std 0.1: less uniform next-token distributions than std 0.02
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(5.0)
    save_model(model, d)
    tok.save(d)
    return d


@pytest.fixture(scope="session")
def bench() -> Path:
    if not BENCH.is_dir():
        pytest.skip(f"benchmark data folder not found ({BENCH}); CI has it")
    return BENCH


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    # tiny models: one thread is faster than two on a shared 2-core box
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
