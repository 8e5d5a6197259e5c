"""Engine speed vs transformers on the same random weights, side by side in one process.

For each model: batch-1 greedy decode tokens/s (32-token prompt, 128 new tokens) and prefill tokens/s
(512-token prompt), phiforge / transformers ratios, and the fraction of the memory-bandwidth floor
(weight bytes streamed per token / measured read bandwidth, divided by the measured time per token).
Runs alternate between the two implementations and report medians, because this machine is shared.

    python benchmarks/bench_engine.py [--models tiny,small,mini4] [--threads 2] [--new 128] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from phiforge.infer.engine import Engine
from phiforge.infer.sampling import SamplingParams
from phiforge.model import ModelConfig, build, save_model

MODELS = {
    # the shapes quoted in issue 2 / ANCHORS.md
    "tiny": dict(
        vocab_size=8192, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8
    ),
    "small": dict(
        vocab_size=32064,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
    ),
    "mini4": dict(
        vocab_size=32064,
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=4,
        num_attention_heads=32,
    ),
}


def read_bandwidth(mb: int = 512) -> float:
    """Bytes/s of a streaming read (sum) over a buffer far larger than the L3 cache, best of 5."""
    x = torch.ones(mb * 2**20 // 4)
    x.sum()
    best = min(_timed(lambda: x.sum()) for _ in range(5))
    return x.numel() * 4 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def weight_bytes_per_token(model) -> int:
    """Every weight read once per decoded token, except the embedding table (one row), unless tied."""
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if name == "embed.weight" and not model.cfg.tie_word_embeddings:
            continue
        total += p.numel() * p.element_size()
    return total


def bench_model(name: str, new: int, reps: int) -> dict:
    import transformers

    cfg = ModelConfig(
        max_position_embeddings=2048, eos_token_id=None, pad_token_id=0, bos_token_id=None, **MODELS[name]
    )
    model = build(cfg, seed=0)
    with tempfile.TemporaryDirectory() as d:
        save_model(model, d)
        hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    engine = Engine(model)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, cfg.vocab_size, (1, 32), generator=g)
    long = torch.randint(0, cfg.vocab_size, (1, 512), generator=g)

    def ours(ids, n):
        return engine.generate([ids[0].tolist()], SamplingParams(max_new_tokens=n, ignore_eos=True))[0]

    def theirs(ids, n):
        with torch.inference_mode():
            return hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    # same tokens, or the comparison is meaningless
    same = ours(prompt, 16).tokens == theirs(prompt, 16)[0, 32:].tolist()
    res = {k: [] for k in ("ours_dec", "hf_dec", "ours_pre", "hf_pre")}
    for _ in range(reps):
        # decode: time(n new) - time(1 new) removes the prefill for both sides alike
        res["ours_dec"].append(
            (new - 1) / (_timed(lambda: ours(prompt, new)) - _timed(lambda: ours(prompt, 1)))
        )
        res["hf_dec"].append(
            (new - 1) / (_timed(lambda: theirs(prompt, new)) - _timed(lambda: theirs(prompt, 1)))
        )
        res["ours_pre"].append(512 / _timed(lambda: ours(long, 1)))
        res["hf_pre"].append(512 / _timed(lambda: theirs(long, 1)))
    out = {k: statistics.median(v) for k, v in res.items()}
    out.update(name=name, params=model.num_params(), same=same, wbytes=weight_bytes_per_token(model))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,small,mini4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bw = read_bandwidth()
    print(f"torch {torch.__version__}, {args.threads} threads, measured read bandwidth {bw / 1e9:.1f} GB/s")
    hdr = "model      params   same | decode tok/s ours / hf = ratio | floor% ours / hf | prefill tok/s ours / hf = ratio"
    print(hdr)
    for name in args.models.split(","):
        r = bench_model(name, args.new, args.reps)
        floor = r["wbytes"] / bw  # seconds per token if weights streamed at the measured bandwidth
        print(
            f"{name:8s} {r['params'] / 1e6:7.1f}M {str(r['same']):5s} | "
            f"{r['ours_dec']:8.1f} / {r['hf_dec']:7.1f} = {r['ours_dec'] / r['hf_dec']:4.2f}x | "
            f"{100 * floor * r['ours_dec']:5.1f} / {100 * floor * r['hf_dec']:5.1f} | "
            f"{r['ours_pre']:7.0f} / {r['hf_pre']:7.0f} = {r['ours_pre'] / r['hf_pre']:4.2f}x",
            flush=True,
        )
    print("llama.cpp on the same shapes (F32 and Q4_0, separate processes): benchmarks/bench_quant.py")


if __name__ == "__main__":
    main()
