"""A tiny Phi-3 trained for a fixed number of steps on local Python code, shared by the quantization and
GGUF tests: perplexity and greedy comparisons only mean something on a model that has learned. Steps, not
seconds, so a busy machine gets the same model (about 15 s on 2 quiet cores)."""

from __future__ import annotations

import math

import pytest
import torch

from phiforge.data.sources import list_python_files, read_source
from phiforge.model import build, get_preset, save_model
from phiforge.tokenizer import train_bpe


def local_python_files(max_bytes: int) -> dict:
    """The stdlib's source files, in the corpus's deterministic order, up to max_bytes: {path: text}."""
    files = ((p, read_source(p)[0]) for _, _, p in list_python_files(max_bytes, origins=("stdlib",)))
    return {p: t for p, t in files if t}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    train = local_python_files(1_000_000)
    texts = list(train.values())
    held = [t for p, t in local_python_files(1_300_000).items() if p not in train]  # never seen in training
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
