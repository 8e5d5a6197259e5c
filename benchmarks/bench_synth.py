"""The synthetic-data teacher's speed: generated tokens/s on the synth stage's own prompts, three ways.

1. `phiforge serve --model M` (a subprocess, continuous batching) with 32 requests in flight (`Client`,
   concurrency 32), then 2. with one in flight (concurrency 1), 3. the in-process backend (`LocalClient`
   over an fp32 Engine, batches of 8): what `data synth` uses when no --teacher-url is given.
Each mode asks the same --requests prompts (plan() over a few topics, kinds in turn), greedy, --max-tokens
each, with no cache; generated tokens are the answers re-tokenized with the model's tokenizer. The server
loads the GGUF as it ships (int4 blocks); the in-process teacher dequantizes to fp32 (faster prefill).

    OMP_NUM_THREADS=1 python benchmarks/bench_synth.py [--model smollm2-135m-instruct] [--requests 32]
        [--max-tokens 96] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from phiforge.data.synth.prompts import plan
from phiforge.infer.engine import Engine
from phiforge.teacher import Client, LocalClient

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is not a package
from bench_serve import httpx, start_server  # noqa: E402

TOPICS = ["list comprehensions", "the json module", "dictionaries", "string formatting", "recursion"]


def measure(client, requests, tok) -> tuple[float, int, int]:
    """(generated tokens/s, tokens, failed requests) of one client over the requests."""
    t0 = time.perf_counter()
    answers = client.ask(requests)
    secs = time.perf_counter() - t0
    n = sum(len(tok.encode(a.text)) for a in answers if a.ok)
    if failed := [a.error for a in answers if not a.ok]:
        print(f"{len(failed)} failed, e.g. {failed[0]}")
    return n / secs, n, len(failed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    reqs = [p.request(max_tokens=a.max_tokens, temperature=0.0) for p in plan(TOPICS, a.requests)]
    engine = Engine.load(a.model, dtype=torch.float32)
    rows = {}
    proc, url = start_server(a.model, max_batch=32, threads=a.threads)
    try:
        served = httpx.get(url + "/v1/models").json()["data"][0]["id"]  # the server checks the name
        for inflight in (32, 1):
            c = Client(url + "/v1", served, concurrency=inflight, timeout=600)
            rows[f"serve, {inflight} in flight"] = measure(c, reqs, engine.tok)
            c.close()
    finally:
        proc.terminate()
        proc.wait(30)
    rows["in-process (LocalClient, batch 8)"] = measure(LocalClient(engine, batch_size=8), reqs, engine.tok)
    print(f"{a.model}, {a.requests} synth requests x <= {a.max_tokens} tokens, greedy, {a.threads} thread(s)")
    one = rows["serve, 1 in flight"][0]
    for name, (tps, n, failed) in rows.items():
        print(
            f"{name:<36} {tps:8.1f} tok/s  {n:6d} tokens  {failed} failed  x{tps / max(one, 1e-9):.2f} vs 1 in flight"
        )


if __name__ == "__main__":
    main()
