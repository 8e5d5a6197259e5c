"""Phi-3-small's block-sparse attention vs dense causal attention of the same shapes, prefill and decode.

One attention layer of Phi-3-small (32 query heads, 8 KV heads, head_dim 128, blocks of 64, 16 local blocks,
vertical stride 8), random q/k/v, fp32 on CPU, in one process:
  prefill: model/attention.py's block_sparse_attention over T queries vs torch's causal
           scaled_dot_product_attention (the dense layers' path in transformer.py);
  decode:  one query at position T - 1 over a cache of T keys, sparse vs the dense decode matmuls;
  keys/query: the mean number of keys a query attends to (sparse) vs T/2 (dense, causal).
Medians of --reps runs, alternating sparse and dense, because this machine is shared.

    OMP_NUM_THREADS=1 python benchmarks/bench_blocksparse.py [--lengths 1024,2048,4096,8192] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from phiforge.model.attention import BlockSparseLayout, block_sparse_attention

H, KV, D = 32, 8, 128
LAYOUT = BlockSparseLayout(block=64, local=16, vert=8, num_heads=H)
SCALE = 1 / D  # muP: mup_attn_multiplier / head_dim


def keys_per_query(T: int) -> float:
    """Mean allowed keys per query (over heads and positions), counted from the layout, not timed."""
    bs, total = LAYOUT.block, 0
    for i in range(-(-T // bs)):
        rows = min(T, (i + 1) * bs) - i * bs
        local = sum(min(T, i * bs + r + 1) - max(0, i - LAYOUT.local + 1) * bs for r in range(rows))
        _, valid = LAYOUT.vertical_blocks(i, "cpu")
        vert = 0 if valid is None else int(valid.sum()) * bs * rows / H
        total += local + vert
    return total / T


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(T: int, reps: int) -> dict[str, float]:
    """Median seconds of sparse/dense prefill (ps, pd) and decode (ds, dd) at length T."""
    q, k, v = torch.randn(1, H, T, D), torch.randn(1, KV, T, D), torch.randn(1, KV, T, D)
    g = H // KV
    fns = {
        "ps": lambda: block_sparse_attention(q, k, v, 0, LAYOUT, SCALE),
        "pd": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, scale=SCALE),
        "ds": lambda: block_sparse_attention(q[:, :, -1:], k, v, T - 1, LAYOUT, SCALE),
        # the dense layers' decode (transformer.py's _decode_attention)
        "dd": lambda: torch.matmul(
            (torch.matmul(q[:, :, -1:].reshape(1, KV, g, D), k.transpose(-1, -2)) * SCALE).softmax(-1), v
        ),
    }
    runs = {key: [] for key in fns}
    with torch.inference_mode():
        for _ in range(reps):  # alternate, so load on the shared machine hits both sides alike
            for key, fn in fns.items():
                runs[key].append(timed(fn))
    return {key: statistics.median(x) for key, x in runs.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="1024,2048,4096,8192")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"threads={torch.get_num_threads()} heads={H} kv_heads={KV} head_dim={D} block=64 local=16 vert=8")
    print(
        "| T | prefill sparse s | prefill dense s | dense/sparse | decode sparse ms | decode dense ms "
        "| dense/sparse | keys/query sparse | dense |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for T in map(int, args.lengths.split(",")):
        m = measure(T, args.reps)
        print(
            f"| {T} | {m['ps']:.3f} | {m['pd']:.3f} | {m['pd'] / m['ps']:.2f} | {1e3 * m['ds']:.2f} | "
            f"{1e3 * m['dd']:.2f} | {m['dd'] / m['ds']:.2f} | {keys_per_query(T):.0f} | {(T + 1) / 2:.0f} |"
        )


if __name__ == "__main__":
    main()
