"""The int4/int8 kernel alone on Phi-3-mini's layer shapes: GMAC/s of `qgemm` for 1, 32 and 512 activation rows
against the ways prefill could go instead: dequantize the whole weight per call (what QuantLinear did for more
than 16 rows), dequantize into a reused buffer + fp32 GEMM, and the fp32 GEMM alone (the ceiling of that route).

Each kernel variant (instruction set, tile shape) is built with PHIFORGE_KERNEL_FLAGS and timed in its own
process; medians of --reps calls after one warm-up. Timed in process CPU seconds (`time.process_time`), not wall
time, so that on a shared machine the time this process waits for a core is not counted: a 1-thread figure is
then what one core does, whatever the load (with more threads it is the total work, not the latency).

    python benchmarks/bench_qgemm.py [--threads 1] [--rows 1,32,512] [--bits 4] [--variants native,...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

SHAPES = {"qkv": (9216, 3072), "out": (3072, 3072), "gate_up": (16384, 3072), "down": (3072, 8192)}
# name -> extra compiler flags (kernels.py's PHIFORGE_KERNEL_FLAGS); MR x NR: activation rows x weight rows per tile
VARIANTS = {
    "native": "",
    "tile2x2": "-DPF_MR=2 -DPF_NR=2",
    "tile4x1": "-DPF_MR=4 -DPF_NR=1",
    "tile4x3": "-DPF_MR=4 -DPF_NR=3",
    "scalar": "-mno-avx2",
}


def _median_s(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times)


def dequant_into(buf, qweight, scales, mins, group: int) -> torch.Tensor:
    """int4 -> fp32 into `buf` (N, K) without a new (N, K) allocation"""
    N, K = buf.shape
    v, b = buf.view(N, K // 32, 2, 16), qweight.view(N, K // 32, 16)
    v[:, :, 0].copy_(b & 15)
    v[:, :, 1].copy_(b >> 4)
    g = buf.view(N, K // group, group)
    return g.mul_(scales.float()[..., None]).add_(mins.float()[..., None]).view(N, K)


def _calls(x, w, q, s, m, buf, bits: int) -> dict:
    from phiforge.infer import kernels, quant

    return {
        "int": lambda: kernels.qgemm(x, q, s, m, None, bits, 128),
        "dequant-alloc": lambda: x @ quant.dequantize_weight(q, s, m, bits, 128).t(),
        "dequant-buffer": lambda: x @ dequant_into(buf, q, s, m, 128).t(),
        "fp32": lambda: x @ w.t(),
    }


def worker(kind: str, rows: list[int], bits: int, reps: int) -> dict:
    from phiforge.infer import kernels, quant

    out = {"isa": kernels.isa()}
    for name, (N, K) in SHAPES.items():
        torch.manual_seed(0)
        w = torch.randn(N, K) * 0.02
        q, s, m = quant.quantize_weight(w, bits, 128)
        buf = torch.empty(N, K)
        for M in rows:
            x = torch.randn(M, K)
            fns = _calls(x, w, q, s, m, buf, bits)
            keys = (
                ["int"]
                if kind != "torch"
                else [k for k in fns if k != "int" and (bits == 4 or k != "dequant-buffer")]
            )
            for k in keys:
                out[f"{name} M={M} {k}"] = M * N * K / _median_s(fns[k], reps) / 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", default="1,32,512")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--variants", default="native,tile2x2,tile4x1,tile4x3,torch")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    rows = [int(r) for r in a.rows.split(",")]
    if a.worker:
        torch.set_num_threads(a.threads)
        print(json.dumps(worker(a.worker, rows, a.bits, a.reps)))
        return
    res = {}
    for v in a.variants.split(","):
        env = {**os.environ, "PHIFORGE_KERNEL_FLAGS": VARIANTS.get(v, ""), "OMP_NUM_THREADS": str(a.threads)}
        cmd = [sys.executable, __file__, "--worker", v, "--rows", a.rows, "--bits", str(a.bits), "--reps", str(a.reps),
               "--threads", str(a.threads)]  # fmt: skip
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        res[v] = json.loads(p.stdout.strip().splitlines()[-1])
        print(f"{v}: {res[v].pop('isa')} load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    cols = [(v, "int") for v in res if v != "torch"]
    cols += [("torch", k) for k in ("dequant-alloc", "dequant-buffer", "fp32") if "torch" in res]
    print(
        f"int{a.bits} g128, {a.threads} thread(s), GMAC/s (multiply-adds per CPU second), medians of {a.reps}"
    )
    print(f"{'shape':<22}" + "".join(f"{(v if v != 'torch' else k):>16}" for v, k in cols))
    for name, (N, K) in SHAPES.items():
        for M in rows:
            cells = [res[v].get(f"{name} M={M} {k}") for v, k in cols]
            print(
                f"{f'{name} {N}x{K} M={M}':<22}"
                + "".join(f"{c:>16.1f}" if c else f"{'-':>16}" for c in cells)
            )
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
