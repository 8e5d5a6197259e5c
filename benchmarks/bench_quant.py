"""phiforge fp32 / int8 / int4 vs llama.cpp F32 / Q8_0 / Q4_0 on the same random weights: prefill, decode, batch.

For each model (random weights, saved, quantized with `quantize_checkpoint` and exported with `export_gguf`
exactly as the CLI does), each engine in its own process, engines alternating (benchmarks/timing.py):
  prefill ms of a 32-token and a --long-token prompt (time to the first token's logits),
  batch-1 decode tokens/s after the 32-token prompt (per-token timestamps),
  phiforge only: decode tokens/s of --batch rows at once (summed over rows) and its ratio to one row,
  and decode's share of the memory-bandwidth floor: (weight bytes read per token, from the checkpoint's
  tensors: every weight once, the embedding table one row unless tied) / (a streaming read's bandwidth,
  measured here at --threads), times decode tokens/s. 100% = decode streams the weights at that bandwidth.
Medians over --reps processes with [min-max]; ratios against llama.cpp at the same bits (>1: phiforge faster).
llama.cpp columns need llama-cpp-python (`CMAKE_ARGS=-DGGML_NATIVE=ON pip install llama-cpp-python`).

    python benchmarks/bench_quant.py [--models small,mini4] [--kinds fp32,int4] [--threads 2] [--reps 3]
        [--baseline DIR]   (DIR: another tree's src/, e.g. `git archive main src | tar -x -C /tmp/main`)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from timing import alternate, llama_run, median, phiforge_run, spread

GGUF = {"fp32": "f32", "int8": "q8_0", "int4": "q4_0"}  # phiforge kind -> llama.cpp type of the same bits


def prepare(name: str, kinds: list[str], work: Path, llama: bool) -> dict[str, list[str]]:
    """Write the checkpoints and GGUF files; engine name -> worker arguments."""

    from bench_engine import MODELS  # the same shapes as the engine benchmark (ANCHORS.md)
    from phiforge.infer.gguf_export import export_gguf
    from phiforge.infer.quant import quantize_checkpoint
    from phiforge.model import ModelConfig, build, save_model
    from phiforge.tokenizer import train_bpe

    cfg = ModelConfig(
        max_position_embeddings=2048, eos_token_id=0, pad_token_id=0, bos_token_id=None, **MODELS[name]
    )
    src = work / "fp32"
    save_model(build(cfg, seed=0), src)
    train_bpe(["def f(x):\n    return x + 1\n" * 50], vocab_size=300, out_dir=src)  # GGUF pads the vocab
    engines = {}
    for k in kinds:
        d = src if k == "fp32" else work / k
        if k != "fp32":
            quantize_checkpoint(src, d, int(k[3:]), 128)
        engines[f"phiforge {k}"] = ["phiforge", str(d)]
    if llama:
        for k in kinds:
            f = export_gguf(src, work / f"{GGUF[k]}.gguf", GGUF[k])
            engines[f"llama.cpp {GGUF[k]}"] = ["llama", str(f)]
    return engines


def weight_bytes(path: str) -> int:
    """Bytes of a checkpoint's tensors that one decoded token reads (quantized weights with their scales and
    mins; the untied embedding table counts one row). From the files, not bench_engine's
    weight_bytes_per_token(model): a quantized model keeps its weights in buffers, not parameters."""
    from safetensors import safe_open

    cfg = json.loads((Path(path) / "config.json").read_text())
    total = 0
    for f in sorted(Path(path).glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            for k in st.keys():
                t = st.get_slice(k)
                n = 1
                for d in t.get_shape():
                    n *= d
                n *= {"F32": 4, "F16": 2, "BF16": 2, "U8": 1, "I8": 1, "I32": 4, "I64": 8}[t.get_dtype()]
                if "embed" in k and not cfg.get("tie_word_embeddings"):
                    n //= t.get_shape()[0]  # one row of the table (and of its per-row scales)
                total += n
    return total


def worker(kind: str, path: str, a) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(300, 32000, (a.batch, a.long), generator=g).tolist()
    short, long = prompts[0][:32], prompts[0]
    if kind == "llama":
        from llama_cpp import Llama

        llm = Llama(
            path,
            n_ctx=a.long + 64,
            n_threads=a.threads,
            n_threads_batch=a.threads,
            n_batch=a.long,
            verbose=False,
        )
        llama_run(llm, short[:8], 4)  # warm-up
        out = llama_run(llm, short, a.new)
        out["prefill_long_ms"] = llama_run(llm, long, 1)["prefill_ms"]
        return out
    if kind.startswith("phiforge="):  # --baseline: the phiforge of another source tree
        sys.path.insert(0, kind.split("=", 1)[1])
    from phiforge.infer.engine import Engine

    engine = Engine.load(path)
    phiforge_run(engine, [short[:8]], 4)  # warm-up
    out = phiforge_run(engine, [short], a.new)
    out["prefill_long_ms"] = phiforge_run(engine, [long], 1)["prefill_ms"]
    if a.batch > 1:
        out["batch_tps"] = phiforge_run(engine, [p[:32] for p in prompts], a.new)["decode_tps"]
    return out


def report(name: str, res: dict, a) -> None:
    print(
        f"\n{name}: {a.threads} thread(s), prompt 32 / {a.long}, {a.new} new, medians of {a.reps} [min-max]"
    )
    head = ("engine", "prefill 32 ms", f"prefill {a.long} ms", "decode tok/s", f"batch {a.batch} tok/s")
    head += ("floor",)
    print(f"{head[0]:<16}" + "".join(f"{h:>22}" for h in head[1:-1]) + f"{head[-1]:>7}"
          + "   vs llama.cpp: pre32 pre-long decode")  # fmt: skip
    for e, runs in res.items():
        if "skipped" in runs[0]:
            print(f"{e:<16} skipped: {runs[0]['skipped']}")
            continue
        cells = [spread(runs, k, ".0f") for k in ("prefill_ms", "prefill_long_ms")]
        cells += [spread(runs, "decode_tps")]
        bt, one = median(runs, "batch_tps"), median(runs, "decode_tps")
        cells.append(f"{bt:.1f} ({bt / one:.1f}x)" if bt else "-")
        wb = a.wbytes.get(e.split()[-1]) if e.startswith("phiforge") else None
        cells.append(f"{100 * wb / a.bandwidth * one:.0f}%" if wb else "-")
        ref = res.get(f"llama.cpp {GGUF.get(e.split()[-1], '')}", [{}])
        ratios = ""
        if e.startswith("phiforge") and ref and "skipped" not in ref[0]:
            r = [median(ref, k) / median(runs, k) for k in ("prefill_ms", "prefill_long_ms")]
            r.append(median(runs, "decode_tps") / median(ref, "decode_tps"))
            ratios = "   " + " ".join(f"{x:5.2f}x" for x in r)
        print(f"{e:<16}" + "".join(f"{c:>22}" for c in cells[:-1]) + f"{cells[-1]:>7}" + ratios, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="small,mini4")
    ap.add_argument("--kinds", default="fp32,int4", help="phiforge kinds among fp32,int8,int4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=64, help="decode steps timed")
    ap.add_argument("--long", type=int, default=512, help="the long prompt's tokens")
    ap.add_argument("--batch", type=int, default=32, help="rows of the batched decode (phiforge; 1: skip)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--baseline", help="also time phiforge from this src dir (e.g. main's), taking turns")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(*a.worker, a)))
        return
    try:
        import llama_cpp  # noqa: F401

        llama = True
    except ImportError:
        llama = False
        print("llama.cpp: skipped (llama-cpp-python not installed)")
    import torch

    from bench_engine import read_bandwidth

    torch.set_num_threads(a.threads)
    a.bandwidth = read_bandwidth()
    print(f"measured read bandwidth, {a.threads} thread(s): {a.bandwidth / 1e9:.1f} GB/s")
    flags = ["--threads", str(a.threads), "--new", str(a.new), "--long", str(a.long), "--batch", str(a.batch)]
    for name in a.models.split(","):
        with tempfile.TemporaryDirectory() as d:
            engines = prepare(name, a.kinds.split(","), Path(d), llama)
            a.wbytes = {k: weight_bytes(engines[f"phiforge {k}"][1]) for k in a.kinds.split(",")}
            if a.baseline:
                for k in a.kinds.split(","):
                    engines[f"phiforge-base {k}"] = [f"phiforge={a.baseline}", engines[f"phiforge {k}"][1]]
            res = alternate(__file__, {e: [*args, *flags] for e, args in engines.items()}, a.reps)
        report(name, res, a)
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
