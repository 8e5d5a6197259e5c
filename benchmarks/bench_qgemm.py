"""The int4/int8 kernel alone on Phi-3-mini's (or SmolLM2-135M's) layer shapes: GMAC/s of `qgemm` for 1 to 512
activation rows, group sizes 32 and 128, against the ways prefill could go instead: dequantize the whole weight per call (what QuantLinear did for more
than 16 rows), dequantize into a reused buffer + fp32 GEMM, and the fp32 GEMM alone (the ceiling of that route).

Each kernel variant (instruction set, tile shape) is built with PHIFORGE_KERNEL_FLAGS and timed in its own
process; medians of --reps calls after one warm-up. Timed in process CPU seconds (`time.process_time`), not wall
time, so that on a shared machine the time this process waits for a core is not counted: a 1-thread figure is
then what one core does, whatever the load (with more threads it is the total work, not the latency).

    python benchmarks/bench_qgemm.py [--threads 1] [--rows 1,8,32,128,512] [--groups 32,128] [--bits 4]
                                     [--shapes mini|smol] [--variants native,...]
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

SHAPE_SETS = {
    "mini": {"qkv": (9216, 3072), "out": (3072, 3072), "gate_up": (16384, 3072), "down": (3072, 8192)},
    "smol": {"qkv": (960, 576), "out": (576, 576), "gate_up": (3072, 576), "down": (576, 1536), "lm_head": (49152, 576)},
}  # fmt: skip
# name -> extra compiler flags (kernels.py's PHIFORGE_KERNEL_FLAGS). int4 tiles: MR4 activation rows x 8 weight rows,
# CU 4-weight chunks per inner iteration; int8 tiles: MR x NR
VARIANTS = {
    "native": "",
    "mr2": "-DPF_MR4=2",
    "mr6": "-DPF_MR4=6",
    "mr8": "-DPF_MR4=8",
    "cu1": "-DPF_CU=1",
    "cu4": "-DPF_CU=4",
    "tile2x2": "-DPF_MR=2 -DPF_NR=2",
    "tile4x1": "-DPF_MR=4 -DPF_NR=1",
    "scalar": "-mno-avx2",
    "q8tiles": "-DPF_Q8_TILE_ROWS=2",  # int8 tiles from 2 rows (before the sixth session: from 8)
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


def _calls(x, w, q, s, m, buf, bits: int, group: int) -> dict:
    from phiforge.infer import kernels, quant

    return {
        "int": lambda: kernels.qgemm(x, q, s, m, None, bits, group),
        "dequant-alloc": lambda: x @ quant.dequantize_weight(q, s, m, bits, group).t(),
        "dequant-buffer": lambda: x @ dequant_into(buf, q, s, m, group).t(),
        "fp32": lambda: x @ w.t(),
    }


def worker(kind: str, shapes: dict, rows: list[int], groups: list[int], bits: int, reps: int) -> dict:
    from phiforge.infer import kernels, quant

    out = {"isa": kernels.isa()}
    for name, (N, K) in shapes.items():
        torch.manual_seed(0)
        w = torch.randn(N, K) * 0.02
        buf = torch.empty(N, K)
        for group in [g for g in groups if K % g == 0]:  # SmolLM2's 576 is not a multiple of 128
            q, s, m = quant.quantize_weight(w, bits, group)
            for M in rows:
                x = torch.randn(M, K)
                fns = _calls(x, w, q, s, m, buf, bits, group)
                keys = (
                    ["int"]
                    if kind != "torch"
                    else [k for k in fns if k != "int" and (bits == 4 or k != "dequant-buffer")]
                )
                for k in keys:
                    out[f"{name} g{group} M={M} {k}"] = M * N * K / _median_s(fns[k], reps) / 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", default="1,8,32,128,512")
    ap.add_argument("--groups", default="32,128")
    ap.add_argument("--shapes", default="mini", choices=sorted(SHAPE_SETS))
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--variants", default="native,mr2,mr6,mr8,torch")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    rows, groups = [int(r) for r in a.rows.split(",")], [int(g) for g in a.groups.split(",")]
    shapes = SHAPE_SETS[a.shapes]
    if a.worker:
        torch.set_num_threads(a.threads)
        print(json.dumps(worker(a.worker, shapes, rows, groups, a.bits, a.reps)))
        return
    res = {}
    for v in a.variants.split(","):
        env = {**os.environ, "PHIFORGE_KERNEL_FLAGS": VARIANTS.get(v, ""), "OMP_NUM_THREADS": str(a.threads)}
        cmd = [sys.executable, __file__, "--worker", v, "--rows", a.rows, "--groups", a.groups, "--shapes", a.shapes,
               "--bits", str(a.bits), "--reps", str(a.reps), "--threads", str(a.threads)]  # fmt: skip
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        res[v] = json.loads(p.stdout.strip().splitlines()[-1])
        print(f"{v}: {res[v].pop('isa')} load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    cols = [(v, "int") for v in res if v != "torch"]
    cols += [("torch", k) for k in ("dequant-alloc", "dequant-buffer", "fp32") if "torch" in res]
    print(f"int{a.bits}, {a.threads} thread(s), GMAC/s (multiply-adds per CPU second), medians of {a.reps}")
    print(f"{'shape':<28}" + "".join(f"{(v if v != 'torch' else k):>16}" for v, k in cols))
    for name, (N, K) in shapes.items():
        for group in groups:
            for M in rows:
                cells = [res[v].get(f"{name} g{group} M={M} {k}") for v, k in cols]
                print(
                    f"{f'{name} {N}x{K} g{group} M={M}':<28}"
                    + "".join(f"{c:>16.1f}" if c else f"{'-':>16}" for c in cells)
                )
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
