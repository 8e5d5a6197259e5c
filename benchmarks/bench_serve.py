"""Server under load: 32 concurrent streaming clients against `phiforge serve` on loopback, vs one client.

The server runs as a subprocess (`phiforge serve`, continuous batching), the clients are asyncio tasks on
raw httpx2 streams in this process. Every request is a /v1/completions stream with a distinct prompt,
seeded sampling and `ignore_eos`, so each produces exactly --new tokens (counted from the usage chunk).
Reported, per model: failed requests (any non-200, missing [DONE], wrong token count or over --timeout),
p50/p95 time to first token, and aggregate completion tokens/s of 32 clients vs one client (ratio); plus
one client vs Engine.generate in-process (the cost of HTTP + scheduling at batch 1).

    python benchmarks/bench_serve.py [--models tiny,small] [--clients 32] [--rounds 2] [--new 64]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx
import torch

from phiforge.infer.engine import Engine
from phiforge.infer.sampling import SamplingParams
from phiforge.model import get_preset, save_model
from phiforge.tokenizer import train_bpe

MODELS = {  # bench_engine.py's shapes; the vocabulary is the trained tokenizer's
    "tiny": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8),
    "small": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
}


def corpus() -> list[str]:
    import argparse as a
    import json as j
    import textwrap as t

    return [line for m in (a, j, t, asyncio) for line in inspect.getsource(m).splitlines(keepends=True)]


def make_model_dir(name: str, root: Path, lines: list[str]) -> Path:
    path = root / name
    tok = train_bpe(lines, 4096, out_dir=path)
    cfg = get_preset("tiny").replace(vocab_size=tok.vocab_size, max_position_embeddings=512,
                                     original_max_position_embeddings=512, **MODELS[name])  # fmt: skip
    from phiforge.model import build

    save_model(build(cfg, seed=0), path)
    return path


def prompts(lines: list[str], n: int) -> list[str]:
    return ["".join(lines[40 * i : 40 * i + 6]) for i in range(n)]  # distinct code snippets, ~40-80 tokens


async def one_request(client, url, model, prompt, new, seed, timeout):
    """Stream one completion; returns (ok, ttft_s, completion_tokens)."""
    body = {"model": model, "prompt": prompt, "max_tokens": new, "temperature": 0.8, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}  # fmt: skip
    t0 = time.perf_counter()
    ttft, tokens, done = None, 0, False
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("POST", url + "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    return False, None, 0
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                    if ttft is None and chunk["choices"] and chunk["choices"][0]["text"]:
                        ttft = time.perf_counter() - t0
    except (TimeoutError, httpx.HTTPError):
        return False, ttft, tokens
    return done and tokens == new, ttft, tokens


async def load(url, model, texts, clients, rounds, new, timeout):
    """`clients` tasks, each sending `rounds` requests back to back; returns results and wall time."""
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:

        async def worker(c):
            out = []
            for k in range(rounds):
                i = c * rounds + k
                out.append(await one_request(client, url, model, texts[i % len(texts)], new, i, timeout))
            return out

        t0 = time.perf_counter()
        results = await asyncio.gather(*(worker(c) for c in range(clients)))
        return [r for rs in results for r in rs], time.perf_counter() - t0


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(path: Path, max_batch: int, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-c", "from phiforge.cli import main; main()", "serve", "--model", str(path),
           "--port", str(port), "--max-batch", str(max_batch), "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/v1/models").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start within 120 s")


def engine_tps(path: Path, text: str, new: int, threads: int) -> float:
    torch.set_num_threads(threads)
    eng = Engine.load(path)
    params = SamplingParams(max_new_tokens=new, temperature=0.8, seed=0, ignore_eos=True)
    eng.complete(text, params)  # warm-up
    t0 = time.perf_counter()
    res = eng.complete(text, params)
    return len(res.tokens) / (time.perf_counter() - t0)


def bench(name, path, lines, args) -> None:
    texts = prompts(lines, args.clients * args.rounds)
    direct = engine_tps(path, texts[0], args.new, args.threads)
    proc, url = start_server(path, args.clients, args.threads)
    model = path.resolve().name
    try:
        asyncio.run(load(url, model, texts, 1, 1, args.new, args.timeout))  # warm-up
        single, t1 = asyncio.run(load(url, model, texts, 1, args.single, args.new, args.timeout))
        many, tn = asyncio.run(load(url, model, texts, args.clients, args.rounds, args.new, args.timeout))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    tps1 = sum(r[2] for r in single) / t1
    tpsn = sum(r[2] for r in many) / tn
    fails = sum(not r[0] for r in many) + sum(not r[0] for r in single)
    ttft1 = [r[1] for r in single if r[1] is not None]
    ttftn = [r[1] for r in many if r[1] is not None]
    print(f"{name:6} {len(many):4d} req  {fails:3d} failed | TTFT p50/p95 ms: 1 client "
          f"{1e3 * pct(ttft1, 0.5):6.1f} / {1e3 * pct(ttft1, 0.95):6.1f}, {args.clients} clients "
          f"{1e3 * pct(ttftn, 0.5):7.1f} / {1e3 * pct(ttftn, 0.95):7.1f} | tok/s: 1 client {tps1:7.1f}, "
          f"{args.clients} clients {tpsn:7.1f} = {tpsn / tps1:5.2f}x | 1 client / engine {tps1 / direct:4.2f}x "
          f"({direct:.1f} tok/s)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny", help="comma list of " + ", ".join(MODELS))
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="requests per concurrent client")
    ap.add_argument("--single", type=int, default=4, help="requests of the one-client reference")
    ap.add_argument("--new", type=int, default=64, help="completion tokens per request")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the server and the engine "
        "reference (1: on this shared 2-vCPU VM two OpenMP threads collapse when other jobs run)",
    )
    ap.add_argument("--timeout", type=float, default=300, help="seconds before a request counts as failed")
    args = ap.parse_args()
    lines = corpus()
    print(f"torch {torch.__version__}, server threads {args.threads}, {args.new} tokens per request, "
          f"{args.clients} clients x {args.rounds} rounds vs 1 client x {args.single}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            bench(name, make_model_dir(name, Path(tmp), lines), lines, args)


if __name__ == "__main__":
    main()
