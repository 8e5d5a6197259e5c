"""Evaluation speed, with references measured in the same run.

    python benchmarks/bench_eval.py [--workers 1,2,4] [--items 60] [--preset tiny] [--threads 1]

- sandbox: executions/s of the 164 HumanEval canonical solutions with 1 and N parallel sandboxes, and a bare
  `python -I prog.py` subprocess per program (no limits, no namespaces, no audit hook) as the reference for
  what the sandbox layers cost
- multiple-choice scoring: items/s (4 options each, random-weight model of --preset) scoring one (context,
  option) pair at a time (reference), in token-budget batches, and in batches with the shared context run
  once per question; the same log-likelihoods every way. HellaSwag 0-shot (short contexts) and MMLU 5-shot
  (long contexts, 1-token options)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from phiforge.eval.tasks import mc
from phiforge.eval.tasks.code import humaneval_program, load_humaneval
from phiforge.infer import score
from phiforge.infer.engine import Engine
from phiforge.model import build, get_preset
from phiforge.sandbox import Limits, run_many
from phiforge.tokenizer import train_bpe

BENCH = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"


def bare(progs: list[str]) -> float:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        for i, p in enumerate(progs):
            f = Path(d) / f"p{i}.py"
            f.write_text(p)
            subprocess.run([sys.executable, "-I", str(f)], cwd=d, capture_output=True, check=True)
    return time.perf_counter() - t0


def bench_sandbox(workers: list[int]) -> None:
    items = load_humaneval(None, None, 0)
    progs = [humaneval_program(it, it.meta["canonical_solution"]) for it in items]
    ref = bare(progs)
    print(f"sandbox: {len(progs)} HumanEval canonical solutions, {os.cpu_count()} CPUs")
    print(f"  bare subprocess, 1 at a time: {len(progs) / ref:6.1f} exec/s (reference)")
    base = None
    for w in workers:
        t0 = time.perf_counter()
        res = run_many(progs, Limits(timeout=20, cpu_seconds=20), workers=w)
        dt = time.perf_counter() - t0
        ok = sum(r.passed for r in res)
        base = base or dt
        print(
            f"  sandbox, {w} worker(s):        {len(progs) / dt:6.1f} exec/s  passed {ok}/{len(progs)}  "
            f"x{base / dt:.2f} vs 1 worker, x{ref / dt:.2f} vs bare"
        )


def bench_scoring(n_items: int, preset: str) -> None:
    text = (BENCH / "tinyshakespeare" / "input.txt").read_text()[:400_000]
    tok = train_bpe([text], vocab_size=get_preset(preset).vocab_size)
    cfg = get_preset(preset).replace(vocab_size=tok.vocab_size)
    eng = Engine(build(cfg, seed=0), tok)
    print(
        f"MC scoring: preset {preset} ({cfg.num_params() / 1e6:.1f}M params), {torch.get_num_threads()} threads"
    )
    hs = mc.load_hellaswag(BENCH, n_items, 0)
    mmlu = mc.load_mmlu(BENCH, 1, 5)[:n_items]  # one question per subject
    for name, items in (("HellaSwag 0-shot", hs), ("MMLU 5-shot", mmlu)):
        score_items(eng, name, items)


def score_items(eng, name, items) -> None:
    pairs = [p for it in items for p in it.pairs]
    ntok = sum(len(eng.tok.encode(c + x)) for c, x in pairs) / len(pairs)
    print(f" {name}: {len(items)} items, {len(pairs)} pairs, {ntok:.0f} tokens per pair")
    score.loglikelihood(eng, pairs[:8])  # warm up
    runs = [
        ("one pair at a time", dict(batch_size=1)),
        ("batched (4096 tok)", dict(share_context=False)),
        ("batched + shared ctx", dict()),
    ]
    ref = None
    for name, kw in runs:
        t0 = time.perf_counter()
        lls = score.loglikelihood(eng, pairs, **kw)
        dt = time.perf_counter() - t0
        if ref is None:
            ref, base = lls, dt
        same = all(abs(a[0] - b[0]) < 1e-3 for a, b in zip(ref, lls, strict=True))
        print(f"  {name:22s} {len(items) / dt:7.1f} items/s  x{base / dt:.2f}  same lls: {same}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--items", type=int, default=60)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--threads", type=int, default=1)  # tiny models: 1 thread beats 2 on a busy 2-core box
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}")
    bench_sandbox([int(w) for w in a.workers.split(",")])
    bench_scoring(a.items, a.preset)


if __name__ == "__main__":
    main()
