"""fp32 y = x @ W.T at the engine's shapes for 1-512 rows: PyTorch's F.linear (MKL sgemm) against the ways
around MKL's per-call packing of W, all in one process, taking turns call by call (so load hits all alike):

  F.linear      what DecodeLinear used for more than one row
  mkl-packed    torch.ops.mkl._mkl_reorder_linear_weight(W, M) once + torch.ops.mkl._mkl_linear (inductor's
                freezing path; the pack is made for one batch size M)
  onednn        torch.ops.mkldnn._reorder_linear_weight(W, M) once + torch.ops.mkldnn._linear_pointwise
  onednn-dense  torch.ops.mkldnn._linear_pointwise on W as stored (no packed copy)
  native        kernels.sgemm: W broadcast in place (6 weight rows) against x packed 16 rows at a time
  gemv          kernels.gemv, one row only
DecodeLinear takes gemv for one row, native from kernels.SGEMM_ROWS to SGEMM_MAX_ROWS rows and onednn-dense
for the other rows from kernels.DNN_ROWS. Earlier hand-written AVX2 kernels with the usual roles (a packed
weight, 6x16 and 4x24 tiles) and dot products on the unpacked weight (4x3) were measured and dropped (RESULTS.md; their code is in
git history: commit e361a73).

--cold cycles each call through copies of W (>= 160 MB in all), so W streams from memory as it does in a
forward; without it the same W stays in L2/L3 between calls, which flatters kernels that re-read it.
GMAC/s (multiply-adds per second), medians of --reps; 1 thread timed in process CPU seconds (the wait for a
core on a shared machine is not counted), more threads in wall seconds. The last column is the engine's path
(gemv, native or onednn-dense, as DecodeLinear chooses for that many rows) over F.linear.

    python benchmarks/bench_sgemm.py [--models small,mini] [--rows 1,8,32,128,512] [--threads 1,2] [--reps 5]

--forward MODEL (bench_engine's shapes: tiny, small, mini4) times the whole model's forward instead, 1 thread:
a 32- and 512-token prefill and one decode step of 32 rows, with DecodeLinear's many-row path switched in turn
between MKL (F.linear), oneDNN on W, oneDNN on a packed copy of W and the engine's choice (native up to SGEMM_MAX_ROWS rows, then oneDNN on W).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from phiforge.infer import kernels

# (N, K) of the engine's linear layers: the ~160M `small` model of bench_quant and a Phi-3-mini layer
SHAPES = {
    "small": {"qkv": (2304, 768), "out": (768, 768), "gate_up": (6144, 768), "down": (768, 3072),
              "lm_head": (32064, 768)},
    "mini": {"qkv": (9216, 3072), "out": (3072, 3072), "gate_up": (16384, 3072), "down": (3072, 8192)},
}  # fmt: skip
VARIANTS = ("F.linear", "mkl-packed", "onednn", "onednn-dense", "native", "gemv")


def calls(x: torch.Tensor, w: torch.Tensor, variants: list[str]) -> dict:
    M = x.shape[0]
    fns = {"F.linear": lambda: F.linear(x, w)}
    if "mkl-packed" in variants:
        pk = torch.ops.mkl._mkl_reorder_linear_weight(w, M)
        fns["mkl-packed"] = lambda: torch.ops.mkl._mkl_linear(x, pk, w, None, M)
    if "onednn" in variants:
        pd = torch.ops.mkldnn._reorder_linear_weight(w, M)
        fns["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(x, pd, None, "none", [], "")
    if "onednn-dense" in variants:
        fns["onednn-dense"] = lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    if "native" in variants and M > 1:
        fns["native"] = lambda: kernels.sgemm(x, w, None)
    if "gemv" in variants and M == 1:
        fns["gemv"] = lambda: kernels.gemv(x, w, None)
    return fns


def timed(fns: dict, reps: int, clock) -> dict[str, float]:
    """Median seconds per call of each function; each rep times every function once, in turn."""
    for f in fns.values():
        f()
    t = clock()
    fns["F.linear"]()
    inner = max(
        1, int(0.02 / max(clock() - t, 1e-6))
    )  # >= ~20 ms per timing: the clock's grain is not the result
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = clock()
            for _ in range(inner):
                f()
            times[k].append((clock() - t) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


def forward_ab(name: str, reps: int) -> None:
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from bench_engine import MODELS
    from phiforge.infer.engine import use_native_gemv
    from phiforge.model import KVCache, ModelConfig, build

    torch.set_num_threads(1)
    cfg = ModelConfig(
        max_position_embeddings=2048, eos_token_id=0, pad_token_id=0, bos_token_id=None, **MODELS[name]
    )
    model = build(cfg, seed=0).eval()
    use_native_gemv(model)
    packs = {}
    plain = kernels.DecodeLinear.forward

    def packed(self, x):  # oneDNN on a packed copy, made once per layer (the variant not taken)
        if x.numel() // x.shape[-1] < kernels.DNN_ROWS or torch.is_grad_enabled():
            return plain(self, x)
        if self not in packs:
            packs[self] = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), 32)
        return torch.ops.mkldnn._linear_pointwise(x, packs[self], self.bias, "none", [], "")

    ids = torch.randint(0, cfg.vocab_size, (32, 552), generator=torch.Generator().manual_seed(0))

    def step(rows: int, T: int) -> float:
        cache = KVCache(cfg, rows, T + 48)
        with torch.inference_mode():
            if T > 1:
                t = time.process_time()
                model(ids[:rows, :T], pos=0, cache=cache, last_only=True)
                return time.process_time() - t
            model(ids[:rows, :40], pos=0, cache=cache, last_only=True)  # the prompt, not timed
            t = time.process_time()
            model(ids[:rows, 40:41], pos=40, cache=cache, last_only=True)
            return time.process_time() - t

    dnn_rows, sg_rows = kernels.DNN_ROWS, kernels.SGEMM_ROWS
    print(f"{name}, 1 thread, ms of process time, medians of {reps - 1} after one warm-up")
    for case, (rows, T) in {
        "prefill 32": (1, 32),
        "prefill 512": (1, 512),
        "decode step, 32 rows": (32, 1),
    }.items():
        times = {"mkl": [], "onednn": [], "onednn-packed": [], "native": []}
        for _ in range(reps):
            for k in times:
                kernels.DNN_ROWS = 10**9 if k == "mkl" else dnn_rows
                kernels.SGEMM_ROWS = sg_rows if k == "native" else 10**9
                kernels.DecodeLinear.forward = packed if k == "onednn-packed" else plain
                times[k].append(step(rows, T))
        med = {k: statistics.median(v[1:]) for k, v in times.items()}
        print(f"{case:<22}" + "".join(f"{k} {1e3 * v:7.0f}  " for k, v in med.items())
              + f"onednn/native {med['onednn'] / med['native']:.2f}x  mkl/native {med['mkl'] / med['native']:.2f}x",
              flush=True)  # fmt: skip
    kernels.DNN_ROWS, kernels.SGEMM_ROWS, kernels.DecodeLinear.forward = dnn_rows, sg_rows, plain
    print(f"load average {os.getloadavg()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="small,mini")
    ap.add_argument("--rows", default="1,8,32,128,512")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--forward", help="time the whole model (tiny, small, mini4) instead of single layers")
    ap.add_argument(
        "--cold",
        action="store_true",
        help="cycle through copies of each weight (>= 160 MB in all) so W comes from memory, as in a forward;"
        " the variants that pack a copy per weight are skipped",
    )
    a = ap.parse_args()
    if a.forward:
        forward_ab(a.forward, a.reps)
        return
    variants = a.variants.split(",")
    if a.cold:
        variants = [v for v in variants if v not in ("mkl-packed", "onednn")]
    assert kernels.library() is not None, "native kernels unavailable (no C compiler?)"
    print(f"kernels: {kernels.isa()}, torch {torch.__version__}, load {os.getloadavg()}")
    for nt in (int(t) for t in a.threads.split(",")):
        torch.set_num_threads(nt)
        clock = time.process_time if nt == 1 else time.perf_counter
        print(f"\n{nt} thread(s), GMAC/s per {'CPU' if nt == 1 else 'wall'} second, medians of {a.reps}")
        print(f"{'shape':<26}" + "".join(f"{v:>13}" for v in variants) + f"{'engine/F':>10}")
        for model in a.models.split(","):
            for name, (N, K) in SHAPES[model].items():
                torch.manual_seed(0)
                w = torch.randn(N, K) * 0.02
                for M in (int(r) for r in a.rows.split(",")):
                    x = torch.randn(M, K)
                    fns, copies = calls(x, w, variants), 1
                    if a.cold:
                        copies = max(2, int(160e6 // (N * K * 4)))
                        per = [fns] + [calls(x, w.clone(), variants) for _ in range(copies - 1)]
                        fns = {k: (lambda fs=[p[k] for p in per]: [f() for f in fs]) for k in fns}
                    med = timed(fns, a.reps, clock)
                    g = {k: copies * M * N * K / s / 1e9 for k, s in med.items()}
                    native = kernels.SGEMM_ROWS <= M <= kernels.SGEMM_MAX_ROWS
                    engine = "gemv" if M == 1 else "native" if native else "onednn-dense"
                    fast = g.get(engine, g["F.linear"])
                    cells = "".join(f"{g[v]:>13.1f}" if v in g else f"{'-':>13}" for v in variants)
                    print(
                        f"{f'{model} {name} {N}x{K} M={M}':<26}{cells}{fast / g['F.linear']:>9.2f}x",
                        flush=True,
                    )
                    del fns
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
