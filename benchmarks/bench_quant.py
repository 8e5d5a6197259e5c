"""Quantized decode speed and memory: phiforge fp32 / int8 / int4 vs llama.cpp F16 / Q8_0 / Q4_0 on the same weights.

For each model (random weights, saved, quantized with `quantize_checkpoint` and exported with `export_gguf`
exactly as the CLI does): batch-1 decode tokens/s after a 32-token prompt (time of N new tokens minus time of
1, as bench_engine.py), weight memory, and ratios against phiforge fp32 and against llama.cpp in the same
run. Runs alternate between implementations and report medians, because this machine is shared.
llama.cpp columns need llama-cpp-python (`CMAKE_ARGS=-DGGML_NATIVE=ON pip install llama-cpp-python`).

    python benchmarks/bench_quant.py [--models small,mini4] [--threads 2] [--new 64] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_engine import MODELS  # noqa: E402  the same shapes as the engine benchmark (ANCHORS.md)
from phiforge.infer.engine import Engine
from phiforge.infer.gguf_export import export_gguf
from phiforge.infer.quant import load_quantized, model_bytes, quantize_checkpoint
from phiforge.infer.sampling import SamplingParams
from phiforge.model import ModelConfig, build, save_model
from phiforge.tokenizer import train_bpe


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def ours(engine: Engine, prompt: list[int], new: int):
    def run(n):
        engine.generate([prompt], SamplingParams(max_new_tokens=n, ignore_eos=True))

    return lambda: (new - 1) / (_timed(lambda: run(new)) - _timed(lambda: run(1)))


def theirs(llm, prompt: list[int], new: int):
    def run(n):
        llm.reset()
        llm.eval(prompt)
        for i in range(n - 1):
            llm.eval([prompt[i % len(prompt)]])  # decode cost does not depend on which token

    return lambda: (new - 1) / (_timed(lambda: run(new)) - _timed(lambda: run(1)))


def bench_model(name: str, new: int, reps: int, threads: int, work: Path) -> list[tuple]:
    cfg = ModelConfig(
        max_position_embeddings=2048, eos_token_id=0, pad_token_id=0, bos_token_id=None, **MODELS[name]
    )
    src = work / name / "fp32"
    save_model(build(cfg, seed=0), src)
    train_bpe(["def f(x):\n    return x + 1\n" * 50], vocab_size=300, out_dir=src)  # GGUF pads the vocab
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(300, cfg.vocab_size, (32,), generator=g).tolist()
    rows = {"fp32": Engine.load(src)}
    for bits in (8, 4):
        quantize_checkpoint(src, work / name / f"int{bits}", bits, 128)
        rows[f"int{bits}"] = Engine(load_quantized(work / name / f"int{bits}"))
    runs = {k: ours(e, prompt, new) for k, e in rows.items()}
    mem = {k: model_bytes(e.model) for k, e in rows.items()}
    try:
        import llama_cpp
    except ImportError:
        llama_cpp = None
        print("llama.cpp: skipped (llama-cpp-python not installed)")
    if llama_cpp is not None:
        for kind in ("f16", "q8_0", "q4_0"):
            f = export_gguf(src, work / name / f"{kind}.gguf", kind)
            llm = llama_cpp.Llama(str(f), n_ctx=256, n_threads=threads, n_batch=64, verbose=False)
            runs[f"llama {kind}"] = theirs(llm, prompt, new)
            mem[f"llama {kind}"] = f.stat().st_size
    res = {k: [] for k in runs}
    for _ in range(reps):
        for k, fn in runs.items():
            res[k].append(fn())
    return [(k, statistics.median(v), mem[k]) for k, v in res.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="small,mini4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch-1 decode after 32 prompt tokens, {args.new} new"
    )
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as d:
            rows = bench_model(name, args.new, args.reps, args.threads, Path(d))
        tps = dict((k, v) for k, v, _ in rows)
        print(f"\n{name}: {'':14s} tok/s   weights     vs fp32   vs llama.cpp (same bits)")
        pair = {"fp32": "llama f16", "int8": "llama q8_0", "int4": "llama q4_0"}
        for k, v, m in rows:
            vs = f"{v / tps[pair[k]]:5.2f}x" if pair.get(k) in tps else ""
            print(f"  {k:16s} {v:8.1f} {m / 1e6:8.1f} MB   {v / tps['fp32']:5.2f}x   {vs}", flush=True)


if __name__ == "__main__":
    main()
