"""Chunked prefill (Engine(prefill_chunk=2048), the default) vs one-shot prefill (prefill_chunk=None) on long
prompts: prefill time and decode tokens/s, each setting in its own process (the parent only collects), medians.

Chunking bounds a long prompt's activations and attention scores by the chunk; what it may cost is speed:
chunks after the first attend over the cache with an explicit causal offset.

    python benchmarks/bench_prefill_chunk.py [--model small] [--lengths 1024,4096] [--reps 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import torch


def one(model: str, length: int, chunk: int | None, reps: int, threads: int) -> dict:
    """Runs in the child: builds bench_engine's random model, prefills `length` tokens, decodes 32."""
    from bench_engine import MODELS
    from phiforge.infer.engine import Engine
    from phiforge.infer.sampling import SamplingParams
    from phiforge.model import ModelConfig, build

    torch.set_num_threads(threads)
    cfg = ModelConfig(**MODELS[model], max_position_embeddings=length + 64, eos_token_id=None, pad_token_id=0)
    eng = Engine(build(cfg, seed=0), prefill_chunk=chunk)
    prompt = torch.randint(1, cfg.vocab_size, (length,), generator=torch.Generator().manual_seed(0)).tolist()
    sp = SamplingParams(max_new_tokens=32, ignore_eos=True)
    eng.generate([prompt[:64]], SamplingParams(max_new_tokens=2, ignore_eos=True))  # warm-up
    runs = [eng.generate([prompt], sp)[0] for _ in range(reps)]
    return {
        "prefill_s": statistics.median(r.prefill_s for r in runs),
        "decode_tok_s": statistics.median(32 / r.decode_s for r in runs),
        "tokens": runs[0].tokens,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--lengths", default="1024,4096")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        length, chunk = json.loads(a.child)
        print(json.dumps(one(a.model, length, chunk, a.reps, a.threads)))
        return
    print(f"model {a.model}, {a.threads} threads, medians of {a.reps}; each setting in its own process")
    print(
        "length | prefill s one-shot / chunked 2048 = ratio | decode tok/s one-shot / chunked | same tokens"
    )
    for length in map(int, a.lengths.split(",")):
        res = {}
        for chunk in (None, 2048):
            cmd = [sys.executable, __file__, "--model", a.model, "--reps", str(a.reps), "--threads",
                   str(a.threads), "--child", json.dumps([length, chunk])]  # fmt: skip
            res[chunk] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        o, c = res[None], res[2048]
        print(f"{length:6d} | {o['prefill_s']:.3f} / {c['prefill_s']:.3f} = {c['prefill_s'] / o['prefill_s']:.2f}x"
              f" | {o['decode_tok_s']:.1f} / {c['decode_tok_s']:.1f} | {o['tokens'] == c['tokens']}")  # fmt: skip


if __name__ == "__main__":
    main()
