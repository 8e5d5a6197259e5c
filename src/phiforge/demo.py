"""`phiforge demo`: the main job until the speedrun lands (issue 7).

Harvest Python source from the local installation, train a byte-level BPE on it, train the `tiny` Phi-3
preset for about a minute, save it in Hugging Face layout, then generate from it with the engine.
The training loop here is deliberately minimal; the real one (resume, phases, DDP) lives in train/.
"""

from __future__ import annotations

import math
import random
import sysconfig
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .infer.engine import Engine
from .infer.sampling import SamplingParams
from .model import build, get_preset, save_model
from .tokenizer import train_bpe

console = Console(stderr=True)


def local_python_files(max_bytes: int) -> list[str]:
    """Python stdlib sources, shuffled deterministically, up to max_bytes of text."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
    random.Random(0).shuffle(files)
    texts, total = [], 0
    for p in files:
        try:
            t = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(t)
        total += len(t)
        if total >= max_bytes:
            break
    return texts


def run(
    out: Path = Path("runs/demo"),
    seconds: float = 60.0,
    preset: str = "tiny",
    seed: int = 0,
    vocab: int = 4096,
    max_bytes: int = 6_000_000,
) -> Path:
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    texts = local_python_files(max_bytes)
    console.print(
        f"[bold]1/4 corpus[/]: {len(texts)} stdlib files, {sum(map(len, texts)) / 1e6:.1f} MB of Python"
    )
    cfg = get_preset(preset)
    # a 4k vocab: at 2M parameters the 8k preset vocab spends most of each step in the output layer
    tok = train_bpe(texts, vocab_size=vocab)
    console.print(
        f"[bold]2/4 tokenizer[/]: byte-level BPE, {tok.vocab_size} tokens ({time.time() - t0:.0f}s)"
    )
    eos = tok.eos_id
    ids = []
    for t in texts:
        ids.extend(tok.encode(t))
        ids.append(eos)
    data = torch.tensor(ids, dtype=torch.long)
    n_val = len(data) // 50
    train, val = data[:-n_val], data[-n_val:]
    cfg = cfg.replace(vocab_size=tok.vocab_size, eos_token_id=eos, pad_token_id=eos, bos_token_id=None)
    model = build(cfg, seed=seed)
    console.print(
        f"[bold]3/4 train[/]: {preset} preset, {model.num_params() / 1e6:.2f}M params, "
        f"{len(train) / 1e6:.1f}M train tokens, {seconds:.0f}s budget"
    )
    batch, seq = 8, 256
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(seed)

    def get_batch(src):
        starts = torch.randint(0, len(src) - seq - 1, (batch,), generator=g)
        x = torch.stack([src[s : s + seq + 1] for s in starts])
        return x[:, :-1], x[:, 1:]

    start, step, tokens = time.time(), 0, 0
    cols = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*cols, console=console) as prog:
        task = prog.add_task("training", total=seconds)
        while (elapsed := time.time() - start) < seconds:
            lr = (
                5e-3
                * min(1.0, (step + 1) / 20)
                * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * elapsed / seconds)))
            )
            for group in opt.param_groups:
                group["lr"] = lr
            x, y = get_batch(train)
            loss = model(x, targets=y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step, tokens = step + 1, tokens + x.numel()
            prog.update(
                task,
                completed=min(elapsed, seconds),
                description=f"step {step} loss {loss.item():.3f} {tokens / max(elapsed, 1e-9):,.0f} tok/s",
            )
    model.eval()
    with torch.no_grad():
        val_loss = _val_loss(model, val, seq)
    console.print(
        f"   {step} steps, {tokens / 1e6:.2f}M tokens, val loss {val_loss:.3f} "
        f"(uniform would be {math.log(cfg.vocab_size):.2f})"
    )
    ckpt = out / "ckpt"
    save_model(model, ckpt)
    tok.save(ckpt)
    console.print(f"[bold]4/4 generate[/]: saved {ckpt} (HF layout); sampled completion (T=0.8, top-p 0.95):")
    engine = Engine.load(ckpt)
    prompt = "def fibonacci(n):\n    "
    # a one-minute model loops under greedy decoding; light sampling shows what it learned
    res = engine.complete(prompt, SamplingParams(max_new_tokens=80, temperature=0.8, top_p=0.95, seed=seed))
    print(prompt + res.text)
    console.print(f"[{len(res.tokens)} tokens at {res.decode_tps:.0f} tok/s] total {time.time() - t0:.0f}s")
    console.print(
        f"next: phiforge chat --model {ckpt}   |   phiforge generate --model {ckpt} --prompt 'import os'"
    )
    return ckpt


def _val_loss(model, val: torch.Tensor, seq: int, n: int = 8) -> float:
    losses = []
    for k in range(n):
        s = k * (len(val) - seq - 1) // n
        chunk = val[s : s + seq + 1][None]
        losses.append(model(chunk[:, :-1], targets=chunk[:, 1:]).item())
    return sum(losses) / len(losses)
