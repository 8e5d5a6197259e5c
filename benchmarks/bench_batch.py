"""Where batched decode's time goes, and the most the 32-rows-vs-one ratio can be with these linear kernels.

Issue 14 goal 3 asks 32 concurrent rows for >= 8x the tokens/s of one row. One row streams every weight once per
token (memory-bound); 32 rows do 32x the arithmetic on the same bytes (compute-bound). So the ratio is capped by
how fast the linear layers run at 32 rows relative to the whole one-row step, whatever else is made faster:

    ratio = 32 * step(1) / step(32)  <=  bound = 32 * step(1) / linears(32)

and, whatever the linear kernels, by the core's arithmetic peak (`arith_peak.c`: register-only loops of the
instruction each kind's kernels are built on, fp32 FMA or int8 `maddubs` / VNNI `vpdpbusd`, on every thread):

    hw bound = 32 * step(1) / (32 rows' multiply-adds / arithmetic peak)

This prints, per kind (fp32, int4 g128) on the ~160M shapes (random weights), or for the installed SmolLM2-135M-Instruct
(`--kinds smollm2`: int4 g32 with an int8 head, as imported), in one process, one thread by default:
the one-row and 32-row decode steps (Engine.generate, per-token timestamps, medians; the 32-row one also without
the native RowsDecoder, as the reference for it), the model's linear layers
alone at 1 and 32 rows (the modules the engine calls: DecodeLinear -> gemv / oneDNN, QuantLinear -> qgemm, each
with an input of its real width), their GFLOP/s against a measured fp32 matmul peak, the ratio and the bound.

    python benchmarks/bench_batch.py [--kinds fp32,int4] [--rows 32] [--threads 1] [--reps 5]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def arith_peak(threads: int) -> dict[str, float]:
    """{"fp32": GFLOP/s, "int8": GMAC/s[, "vnni": GMAC/s]} of `arith_peak.c` on `threads` threads; {} where it
    cannot be built (no gcc, not x86-64). Same -march=native (and PHIFORGE_KERNEL_FLAGS) as the kernels."""
    import os
    import platform
    import shutil
    import subprocess

    cc = os.environ.get("CC") or shutil.which("gcc")
    if cc is None or platform.machine() not in ("x86_64", "AMD64"):
        return {}
    extra = os.environ.get("PHIFORGE_KERNEL_FLAGS", "").split()
    src = Path(__file__).with_name("arith_peak.c")
    with tempfile.TemporaryDirectory() as d:
        exe = Path(d) / "arith_peak"
        try:
            cmd = [cc, "-O2", "-march=native", *extra, "-fopenmp", str(src), "-o", str(exe)]
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            out = subprocess.run(
                [str(exe)], check=True, capture_output=True, text=True, env=env, timeout=300
            ).stdout
        except (OSError, subprocess.SubprocessError) as e:
            detail = (getattr(e, "stderr", "") or str(e)).strip().splitlines()
            print(
                f"arith_peak.c: not measured ({detail[0][:200] if detail else e}); the hw bound column is n/a"
            )
            return {}
    return {line.split()[0]: float(line.split()[-1]) for line in out.splitlines()}


def linears(model) -> list[tuple[torch.nn.Module, int, int]]:
    """(module, in_features, out_features) of every linear layer a decode step runs, once each."""
    out = []
    for b in model.blocks:
        for m in (b.attn.qkv, b.attn.out, b.mlp.up, b.mlp.down):
            out.append((m, m.in_features, m.out_features))
    h = model.lm_head
    out.append((h, h.in_features, h.out_features))
    return out


def time_linears(model, rows: int, reps: int) -> float:
    """Median seconds of one pass over all the linears with `rows` input rows."""
    mods = linears(model)
    xs = [torch.randn(rows, k) for _, k, _ in mods]
    ts = []
    with torch.no_grad():
        for _ in range(reps + 1):
            t = time.perf_counter()
            for (m, _, _), x in zip(mods, xs, strict=True):
                m(x)
            ts.append(time.perf_counter() - t)
    return statistics.median(ts[1:])


def decode_step(engine, rows: int, new: int, reps: int, lo: int, vocab: int) -> float:
    """Median seconds per decode step of `rows` rows (equal-length 32-token prompts, no padding)."""
    from timing import phiforge_run

    g = torch.Generator().manual_seed(rows)
    prompts = torch.randint(lo, vocab, (rows, 32), generator=g).tolist()
    phiforge_run(engine, prompts, 4)  # warm-up
    tps = [phiforge_run(engine, prompts, new)["decode_tps"] for _ in range(reps)]
    return rows / statistics.median(tps)


@contextlib.contextmanager
def pytorch_path():
    """The engine's many-row step without kernels.RowsDecoder: the reference the native step is measured against."""
    from phiforge.infer import kernels

    old = kernels.RowsDecoder.supports
    kernels.RowsDecoder.supports = staticmethod(lambda model: False)
    try:
        yield
    finally:
        kernels.RowsDecoder.supports = old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--kinds", default="fp32,int4", help="comma-separated: fp32, int4 (g128), smollm2 (the real model)"
    )
    ap.add_argument("--rows", type=int, default=32, help="rows of the batched decode")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the kernels use as many)")
    ap.add_argument("--new", type=int, default=24, help="tokens generated per timed call")
    ap.add_argument("--reps", type=int, default=5, help="timed calls per measurement (medians are reported)")
    a = ap.parse_args()
    if a.rows < 2 or a.threads < 1 or a.reps < 1 or a.new < 2:
        ap.error(
            f"need --rows >= 2, --threads/--reps >= 1, --new >= 2 (got {a.rows}, {a.threads}, {a.reps}, {a.new})"
        )
    torch.set_num_threads(a.threads)

    from bench_engine import MODELS
    from phiforge.model import ModelConfig
    from phiforge.train.loop import measure_peak_flops

    peak = measure_peak_flops(torch.device("cpu"))
    cfg = ModelConfig(
        max_position_embeddings=2048, eos_token_id=0, pad_token_id=0, bos_token_id=None, **MODELS["small"]
    )
    ap = arith_peak(a.threads)
    print(f"torch {torch.__version__}, {a.threads} thread(s), fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    if ap:
        print("arithmetic peak (arith_peak.c): " + ", ".join(f"{k} {v:.1f}" for k, v in ap.items()))
    print(f"{a.rows} rows vs 1, {a.new} new tokens, median of {a.reps}")
    print(f"'vs torch': the {a.rows}-row step with every op between the linears in PyTorch (no RowsDecoder)")
    head = (
        "kind",
        "step 1 ms",
        f"step {a.rows} ms",
        "ratio",
        "lin 1 ms",
        f"lin {a.rows} ms",
        "GF/s",
        "peak",
        "bound",
        "vs torch",
        "hw bound",
    )
    print("{:7s} {:>9s} {:>10s} {:>6s} {:>8s} {:>9s} {:>6s} {:>5s} {:>6s} {:>8s} {:>8s}".format(*head))
    with tempfile.TemporaryDirectory() as d:
        for kind in a.kinds.split(","):
            engine = load(kind, Path(d), cfg)
            s1 = decode_step(engine, 1, a.new, a.reps, 300, engine.cfg.vocab_size)
            sb = decode_step(engine, a.rows, a.new, a.reps, 300, engine.cfg.vocab_size)
            with pytorch_path():
                sp = decode_step(engine, a.rows, a.new, a.reps, 300, engine.cfg.vocab_size)
            l1 = time_linears(engine.model, 1, a.reps)
            lb = time_linears(engine.model, a.rows, a.reps)
            flops = 2 * a.rows * sum(i * o for _, i, o in linears(engine.model))
            # the least time the linears' arithmetic can take: fp32 FMAs, or int8 multiply-adds (int4 and int8
            # weights meet int8 activations: maddubs on AVX2, vpdpbusd where the build has VNNI)
            rate = ap.get("fp32", 0) * 1e9 if kind == "fp32" else ap.get("vnni", ap.get("int8", 0)) * 1e9 * 2
            hw = f"{s1 * a.rows / (flops / rate):7.2f}x" if rate else "     n/a"
            print(
                f"{kind:7s} {1e3 * s1:9.1f} {1e3 * sb:10.1f} {s1 * a.rows / sb:5.2f}x {1e3 * l1:8.1f} {1e3 * lb:9.1f}"
                f" {flops / lb / 1e9:6.1f} {flops / lb / peak:5.0%} {s1 * a.rows / lb:5.2f}x {sp / sb:7.2f}x {hw}"
            )


def load(kind: str, work: Path, cfg):
    """fp32 / int4 (g128) of the ~160M random model, or "smollm2": the real model as installed (Q4_1 import)."""
    from phiforge.infer.engine import Engine
    from phiforge.infer.load import resolve
    from phiforge.infer.quant import quantize_checkpoint
    from phiforge.model import build, save_model
    from phiforge.tokenizer import train_bpe

    if kind == "smollm2":
        return Engine.load(resolve("smollm2-135m-instruct"))
    if kind not in ("fp32", "int4"):
        raise SystemExit(f"--kinds: unknown kind {kind!r} (fp32, int4, smollm2)")
    src = work / "fp32"
    if not src.exists():
        save_model(build(cfg, seed=0), src)
        train_bpe(["def f(x):\n    return x + 1\n" * 50], vocab_size=300, out_dir=src)
    if kind == "fp32":
        return Engine.load(src)
    quantize_checkpoint(src, work / "int4", 4, 128)
    return Engine.load(work / "int4")


if __name__ == "__main__":
    main()
