"""The real model's speed: SmolLM2-135M-Instruct (the installed Q4_1 GGUF) in phiforge vs transformers and
llama.cpp on the same file.

Engines, each in its own subprocess (one engine's threads and caches never slow another's):
  phiforge-int4   the GGUF's Q4_1 blocks kept as they are (int4 kernels, no second rounding)
  phiforge-fp32   the same file dequantized to fp32
  transformers    AutoModelForCausalLM.from_pretrained(dir, gguf_file=...) (dequantizes to fp32)
  llama.cpp       llama-cpp-python on the same file, when installed (optional; else the column says so)
Measured separately: prefill of a 512-token prompt (ms, KV cache filled, the first token's logits) and batch-1
greedy decode (tokens/s over `--new` steps after a 32-token prompt). Medians of `--reps` runs.

    python benchmarks/bench_real.py [--threads 2] [--new 64] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODEL = "smollm2-135m-instruct"
ENGINES = ("phiforge-int4", "phiforge-fp32", "transformers", "llama.cpp")
TEXT = Path(__file__).read_text() * 8  # plenty of code-and-prose text for a 512-token prompt


def _prompts(tok_encode) -> tuple[list[int], list[int]]:
    ids = tok_encode(TEXT)
    return ids[:512], ids[:32]


def _median(fn, reps: int) -> float:
    return statistics.median(fn() for _ in range(reps))


def run_phiforge(dtype: str, new: int, reps: int) -> dict:
    import torch

    from phiforge.infer.engine import Engine
    from phiforge.infer.sampling import SamplingParams

    engine = Engine.load(MODEL, dtype=torch.float32 if dtype == "fp32" else None)
    long, short = _prompts(engine.tok.encode)
    one = SamplingParams(max_new_tokens=1, ignore_eos=True)
    engine.generate([short], SamplingParams(max_new_tokens=4, ignore_eos=True))  # warm-up

    def prefill():
        return engine.generate([long], one)[0].prefill_s

    def decode():
        return engine.generate([short], SamplingParams(max_new_tokens=new, ignore_eos=True))[0].decode_tps

    return {"prefill_ms": 1e3 * _median(prefill, reps), "decode_tps": _median(decode, reps)}


def run_transformers(new: int, reps: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phiforge.infer.load import resolve

    path = resolve(MODEL)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    long, short = _prompts(lambda s: tok(s, add_special_tokens=False).input_ids)

    @torch.inference_mode()
    def prefill():
        t = time.perf_counter()
        model(torch.tensor([long]), use_cache=True)
        return time.perf_counter() - t

    @torch.inference_mode()
    def decode():
        out = model(torch.tensor([short]), use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        t = time.perf_counter()
        for _ in range(new - 1):  # the first new token comes from the prefill, as in Engine's decode_tps
            out = model(nxt, past_key_values=out.past_key_values, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
        return (new - 1) / (time.perf_counter() - t)

    decode()  # warm-up
    return {"prefill_ms": 1e3 * _median(prefill, reps), "decode_tps": _median(decode, reps)}


def run_llama_cpp(new: int, reps: int, threads: int) -> dict:
    try:
        from llama_cpp import Llama
    except ImportError:
        return {"skipped": "llama-cpp-python is not installed (pip install llama-cpp-python)"}
    from phiforge.infer.load import resolve

    llm = Llama(str(resolve(MODEL)), n_ctx=1024, n_threads=threads, n_batch=512, verbose=False)
    long, short = _prompts(lambda s: llm.tokenize(s.encode(), add_bos=False))

    def prefill():
        llm.reset()
        t = time.perf_counter()
        llm.eval(long)
        return time.perf_counter() - t

    def decode():
        llm.reset()
        llm.eval(short)
        t = time.perf_counter()
        for _ in range(new - 1):
            llm.eval([int(llm.scores[llm.n_tokens - 1].argmax())])
        return (new - 1) / (time.perf_counter() - t)

    return {"prefill_ms": 1e3 * _median(prefill, reps), "decode_tps": _median(decode, reps)}


def worker(engine: str, threads: int, new: int, reps: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    if engine.startswith("phiforge"):
        return run_phiforge(engine.split("-")[1], new, reps)
    if engine == "transformers":
        return run_transformers(new, reps)
    return run_llama_cpp(new, reps, threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=64, help="decode steps timed")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.threads, a.new, a.reps)))
        return
    rows = {}
    for e in a.engines.split(","):
        cmd = [sys.executable, __file__, "--worker", e, "--threads", str(a.threads), "--new", str(a.new),
               "--reps", str(a.reps)]  # fmt: skip
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            rows[e] = {"skipped": f"failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}"}
        else:
            rows[e] = json.loads(p.stdout.strip().splitlines()[-1])
        print(e, rows[e], file=sys.stderr)
    ref = rows.get("transformers", {})
    lcpp = rows.get("llama.cpp", {})
    print(f"SmolLM2-135M-Instruct Q4_1 GGUF, {a.threads} threads, medians of {a.reps}")
    heads = (
        "engine",
        "prefill 512 ms",
        "decode tok/s",
        "decode vs HF",
        "prefill vs llama.cpp",
        "decode vs llama.cpp",
    )
    print(f"{heads[0]:<15}" + "".join(f"{h:>21}" for h in heads[1:]))

    def ratio(x: float, y: float | None) -> str:  # "-" where the reference engine was not measured
        return f"{x / y:.2f}x" if y else "-"

    for e, r in rows.items():
        if "skipped" in r:
            print(f"{e:<15} skipped: {r['skipped']}")
            continue
        cells = (
            f"{r['prefill_ms']:.0f}",
            f"{r['decode_tps']:.1f}",
            ratio(r["decode_tps"], ref.get("decode_tps")),
            ratio(lcpp["prefill_ms"], r["prefill_ms"]) if "prefill_ms" in lcpp else "-",  # >1: faster
            ratio(r["decode_tps"], lcpp.get("decode_tps")),
        )
        print(f"{e:<15}" + "".join(f"{c:>21}" for c in cells))


if __name__ == "__main__":
    main()
