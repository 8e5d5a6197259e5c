"""What the engine benchmarks share: one measurement per subprocess, engines alternating, per-step timestamps.

Two OpenMP runtimes in one process (torch's and llama.cpp's) slow each other down: llama.cpp's threads keep
spinning after a call and the next phiforge call pays for it (issue 14 measured 0.33x-0.88x in one process,
1.03x in separate ones). So every measurement runs in a fresh process that holds one engine, and the engines
take turns, rep after rep, so that a change in the machine's load falls on all of them alike.

Prefill and decode are timed apart from per-token timestamps: prefill is the prompt through the model up to the
first token's logits; decode is (tokens - 1) / (time of the last token - time of the first). The old
difference method (time of N tokens minus time of 1) went negative when the prefill varied more than the decode.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time


def phiforge_run(engine, prompts: list[list[int]], new: int) -> dict:
    """prefill_ms and decode_tps (summed over the rows) of one generate call with len(prompts) rows."""
    from phiforge.infer.sampling import SamplingParams

    stamps: list[float] = []

    def on_token(row: int, tid: int, text: str) -> None:
        if row == 0 and tid >= 0:
            stamps.append(time.perf_counter())

    sp = SamplingParams(max_new_tokens=new, ignore_eos=True)
    r = engine.generate(prompts, sp, on_token)[0]
    out = {"prefill_ms": 1e3 * r.prefill_s}
    if len(stamps) > 1:
        out["decode_tps"] = len(prompts) * (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return out


def llama_run(llm, prompt: list[int], new: int) -> dict:
    """The same for llama-cpp-python: the prompt in one eval, then one greedy token per eval."""
    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt)
    stamps = [time.perf_counter()]
    out = {"prefill_ms": 1e3 * (stamps[0] - t)}
    for _ in range(new - 1):
        llm.eval([int(llm.scores[llm.n_tokens - 1].argmax())])
        stamps.append(time.perf_counter())
    if new > 1:
        out["decode_tps"] = (new - 1) / (stamps[-1] - stamps[0])
    return out


def alternate(script: str, engines: dict[str, list[str]], reps: int, env: dict | None = None) -> dict:
    """Run `python script --worker ARGS` once per engine per rep, engines taking turns; each worker prints one
    JSON object (its last stdout line). Returns {engine: [result, ...]}, a failed engine as {"skipped": why}."""
    res: dict[str, list[dict]] = {e: [] for e in engines}
    for rep in range(reps):
        for e, args in engines.items():
            if res[e] and "skipped" in res[e][0]:
                continue
            cmd = [sys.executable, script, "--worker", *args]
            p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
            if p.returncode:
                why = (p.stderr.strip().splitlines() or ["?"])[-1]
                res[e] = [{"skipped": f"failed: {why}"}]
            else:
                res[e].append(json.loads(p.stdout.strip().splitlines()[-1]))
            load = os.getloadavg()[0]
            print(f"  rep {rep + 1} {e}: {res[e][-1]} (load {load:.2f})", file=sys.stderr, flush=True)
    return res


def median(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if key in r]
    return statistics.median(vals) if vals else None


def spread(runs: list[dict], key: str, fmt: str = ".1f") -> str:
    """'median [min-max]' of one field over the runs, '-' when absent"""
    vals = sorted(r[key] for r in runs if key in r)
    if not vals:
        return "-"
    m = statistics.median(vals)
    return f"{m:{fmt}} [{vals[0]:{fmt}}-{vals[-1]:{fmt}}]" if len(vals) > 1 else f"{m:{fmt}}"
