"""Fixtures every test folder shares: a scaled random-weights model factory, one random model directory, one
small trained model, the token shards the training tests use, and `phiforge` run as a user runs it.

Session-scoped where they cost seconds, so each is built once per `pytest` run. Helpers are fixtures, not
`from conftest import ...`: with several test folders, the module named "conftest" at run time is whichever
folder's was imported last.
"""

from __future__ import annotations

import inspect
import json
import math
import subprocess
import sys

import pytest
import torch

from phiforge.model import build, get_preset, save_model
from phiforge.tokenizer import train_bpe
from train_helpers import VOCAB, _texts, write_shards


@torch.no_grad()
def make_model(cfg, seed: int = 0, scale: float = 5.0):
    """Random weights: matrices std 0.02 * scale, random norm weights and biases, so greedy decoding is
    chaotic, not stuck on one token (batched-vs-alone equality over many steps then means something)."""
    m = build(cfg, seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    for name, p in m.named_parameters():
        if p.dim() == 1:
            noise = torch.randn(p.shape, generator=g) * 0.1
            p.copy_((1.0 + noise) if "norm" in name and name.endswith("weight") else noise * 0.2)
        else:
            p.mul_(scale)
    return m


@pytest.fixture(scope="session")
def model_factory():
    return make_model


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory):
    """A tiny random Phi-3 (context 64) with a 400-token BPE, in Hugging Face layout."""
    d = tmp_path_factory.mktemp("random-model")
    tok = train_bpe([inspect.getsource(json.decoder), inspect.getsource(subprocess)], vocab_size=400)
    cfg = get_preset("tiny").replace(
        vocab_size=tok.vocab_size, max_position_embeddings=64, eos_token_id=tok.eos_id
    )
    save_model(build(cfg, seed=0), d)
    tok.save(d)
    return d


def _local_python_files(max_bytes: int) -> dict:
    """The stdlib's source files, in the corpus's deterministic order, up to max_bytes: {path: text}."""
    from phiforge.data.sources import list_python_files, read_source

    files = ((p, read_source(p)[0]) for _, _, p in list_python_files(max_bytes, origins=("stdlib",)))
    return {p: t for p, t in files if t}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(model dir, held-out text): a tiny Phi-3 trained 200 steps on local Python code, for tests where
    perplexity and greedy comparisons must mean something (quantization, GGUF). Steps, not seconds, so a
    busy machine gets the same model (about 15 s on 2 quiet cores)."""
    torch.manual_seed(0)
    train = _local_python_files(1_000_000)
    texts = list(train.values())
    held = [t for p, t in _local_python_files(1_300_000).items() if p not in train]  # never seen in training
    tok = train_bpe(texts, vocab_size=1024)
    ids = torch.tensor([t for text in texts for t in tok.encode(text) + [tok.eos_id]])
    cfg = get_preset("tiny").replace(
        vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id, bos_token_id=None
    )
    model = build(cfg, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    steps, batch, seq = 200, 8, 128
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = (
                5e-3 * min(1.0, (step + 1) / 20) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))
            )
        starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=g)
        x = torch.stack([ids[s : s + seq + 1] for s in starts])
        loss = model(x[:, :-1], targets=x[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    ckpt = tmp_path_factory.mktemp("trained")
    save_model(model.eval(), ckpt)
    tok.save(ckpt)
    return ckpt, "\n".join(held)


@pytest.fixture(scope="session")
def train_data(tmp_path_factory):
    """{"tok": tokenizer dir, "a": shards dir, "b": shards dir}: two corpora, one tokenizer (train_helpers.py)."""
    root = tmp_path_factory.mktemp("traindata")
    a, b = _texts("[a-j]*.py", 30), _texts("[k-z]*.py", 30)
    tok = train_bpe(a + b, vocab_size=VOCAB, out_dir=root / "tok")
    return {
        "tok": root / "tok",
        "a": write_shards(root / "code_a", tok, a),
        "b": write_shards(root / "code_b", tok, b),
    }


def _phiforge(*args: str, stdin: str | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "phiforge.cli", *map(str, args)]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def phiforge():
    """The command line in a subprocess: phiforge(*args, stdin=None) -> CompletedProcess."""
    return _phiforge


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0]


@pytest.fixture(scope="session")
def one_line_error():
    """Asserts exit code 1 and exactly one 'error: ...' line on stderr containing every needle."""
    return _one_line_error
