"""The real model's speed: SmolLM2-135M-Instruct (the installed Q4_1 GGUF) in phiforge vs transformers and
llama.cpp on the same file.

Engines, each measurement in its own subprocess, engines taking turns (benchmarks/timing.py):
  phiforge-int4   the GGUF's Q4_1 blocks kept as they are (int4 kernels, no second rounding)
  phiforge-fp32   the same file dequantized to fp32
  transformers    AutoModelForCausalLM.from_pretrained(dir, gguf_file=...) (dequantizes to fp32)
  llama.cpp       llama-cpp-python on the same file, when installed (optional; else the column says so)
Measured separately: prefill of a 32- and a 512-token prompt (ms to the first token's logits) and batch-1
greedy decode (tokens/s from per-token timestamps over `--new` steps after the 32-token prompt). Medians of
`--reps` processes per engine, [min-max].

    python benchmarks/bench_real.py [--threads 2] [--new 64] [--reps 3]
        [--baseline DIR]   (DIR: another tree's src/, e.g. `git worktree add /tmp/base main` -> /tmp/base/src)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from timing import alternate, llama_run, median, phiforge_run, spread

MODEL = "smollm2-135m-instruct"
ENGINES = ("phiforge-int4", "phiforge-fp32", "transformers", "llama.cpp")
TEXT = Path(__file__).read_text() * 8  # plenty of code-and-prose text for a 512-token prompt


def _prompts(tok_encode) -> tuple[list[int], list[int]]:
    ids = tok_encode(TEXT)
    return ids[:512], ids[:32]


def run_phiforge(dtype: str, new: int) -> dict:
    import torch

    from phiforge.infer.engine import Engine

    engine = Engine.load(MODEL, dtype=torch.float32 if dtype == "fp32" else None)
    long, short = _prompts(engine.tok.encode)
    phiforge_run(engine, [short[:8]], 4)  # warm-up
    out = phiforge_run(engine, [short], new)
    return {**out, "prefill_long_ms": phiforge_run(engine, [long], 1)["prefill_ms"]}


def run_transformers(new: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phiforge.infer.load import resolve

    path = resolve(MODEL)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    long, short = _prompts(lambda s: tok(s, add_special_tokens=False).input_ids)

    @torch.inference_mode()
    def run(ids: list[int], n: int) -> dict:
        t = time.perf_counter()
        out = model(torch.tensor([ids]), use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        stamps = [time.perf_counter()]
        for _ in range(n - 1):
            out = model(nxt, past_key_values=out.past_key_values, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
            stamps.append(time.perf_counter())
        r = {"prefill_ms": 1e3 * (stamps[0] - t)}
        if n > 1:
            r["decode_tps"] = (n - 1) / (stamps[-1] - stamps[0])
        return r

    run(short[:8], 4)  # warm-up
    return {**run(short, new), "prefill_long_ms": run(long, 1)["prefill_ms"]}


def run_llama_cpp(new: int, threads: int) -> dict:
    from llama_cpp import Llama

    from phiforge.infer.load import resolve

    llm = Llama(
        str(resolve(MODEL)),
        n_ctx=1024,
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=512,
        verbose=False,
    )
    long, short = _prompts(lambda s: llm.tokenize(s.encode(), add_bos=False))
    llama_run(llm, short[:8], 4)  # warm-up
    return {**llama_run(llm, short, new), "prefill_long_ms": llama_run(llm, long, 1)["prefill_ms"]}


def worker(engine: str, threads: int, new: int, src: str | None = None) -> dict:
    import sys

    import torch

    if src:  # --baseline: the phiforge of another source tree
        sys.path.insert(0, src)
    torch.set_num_threads(threads)
    if engine.startswith("phiforge"):
        return run_phiforge(engine.split("-")[1], new)
    if engine == "transformers":
        return run_transformers(new)
    return run_llama_cpp(new, threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=64, help="decode steps timed")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument(
        "--baseline",
        help="also time phiforge-int4 from this src dir (e.g. main's), taking turns with the rest",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.threads, a.new, a.src)))
        return
    engines = a.engines.split(",")
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        engines = [e for e in engines if e != "llama.cpp"]
        print("llama.cpp: skipped (llama-cpp-python is not installed: pip install llama-cpp-python)")
    flags = ["--threads", str(a.threads), "--new", str(a.new)]
    runs = {e: [e, *flags] for e in engines}
    if a.baseline:
        runs["phiforge-base"] = ["phiforge-int4", *flags, "--src", a.baseline]
    res = alternate(__file__, runs, a.reps)
    print(
        f"SmolLM2-135M-Instruct Q4_1 GGUF, {a.threads} thread(s), {a.new} new, medians of {a.reps} [min-max]"
    )
    head = (
        "engine",
        "prefill 32 ms",
        "prefill 512 ms",
        "decode tok/s",
        "decode vs HF",
        "vs llama.cpp: pre512 decode",
    )
    print(f"{head[0]:<15}" + "".join(f"{h:>22}" for h in head[1:-1]) + f"   {head[-1]}")
    ref, lcpp = res.get("transformers", [{}]), res.get("llama.cpp", [{}])

    def ratio(x: float | None, y: float | None) -> str:  # "-" where an engine was not measured
        return f"{x / y:.2f}x" if x and y else "-"

    for e, runs in res.items():
        if "skipped" in runs[0]:
            print(f"{e:<15} skipped: {runs[0]['skipped']}")
            continue
        dec = median(runs, "decode_tps")
        cells = (
            spread(runs, "prefill_ms", ".0f"),
            spread(runs, "prefill_long_ms", ".0f"),
            spread(runs, "decode_tps"),
            ratio(dec, median(ref, "decode_tps")),
            f"{ratio(median(lcpp, 'prefill_long_ms'), median(runs, 'prefill_long_ms'))} "
            f"{ratio(dec, median(lcpp, 'decode_tps'))}",
        )
        print(f"{e:<15}" + "".join(f"{c:>22}" for c in cells[:-1]) + f"   {cells[-1]:>27}")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
