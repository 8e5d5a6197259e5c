"""Training step speed vs transformers' Phi3ForCausalLM on the same weights, side by side in one process.

One step = forward with the loss + backward + AdamW (foreach/fused, same hyper-parameters) on a batch of
8 x 256 tokens. phiforge's step is `train.loop`'s (sum-reduced loss scaled by 1/targets, fused AdamW);
transformers' is `model(input_ids, labels=...).loss.backward(); opt.step()`. Steps alternate between
the two and medians are reported. The machine is shared, so besides wall-clock tokens/s the ratio of process
CPU time per step is printed: it counts only this process's own work (a descheduled process accrues none),
which is the fairer comparison on an oversubscribed machine. MFU is against a measured fp32 matmul peak.

    python benchmarks/bench_train.py [--models tiny,small] [--steps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from phiforge.model import ModelConfig, build, save_model
from phiforge.train.config import TrainConfig
from phiforge.train.loop import make_optimizer, measure_peak_flops, train_flops_per_token

MODELS = {  # the shapes of issue 4 (and ANCHORS.md): ~8M and ~160M, untied
    "tiny": dict(vocab_size=8192, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8),
    "small": dict(vocab_size=32064, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
}  # fmt: skip


def _step_ours(model, opt, x, y):
    loss = model(x, targets=y, reduction="sum") * (1.0 / y.numel())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def _step_hf(model, opt, x, y):
    loss = model(input_ids=x, labels=y, shift_labels=y).loss  # y is already shifted, as ours
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def bench(name: str, steps: int, batch: int, seq: int, peak: float) -> dict:
    import transformers

    cfg = ModelConfig(
        max_position_embeddings=2048, eos_token_id=None, pad_token_id=0, bos_token_id=None, **MODELS[name]
    )
    ours = build(cfg, seed=0).train()
    with tempfile.TemporaryDirectory() as d:
        save_model(ours, d)
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            d, dtype=torch.float32, attn_implementation="sdpa"
        )
    hf.train()
    tc = TrainConfig(lr=1e-4, weight_decay=0.1)
    opt_ours = make_optimizer(ours, tc, fsdp=False)
    opt_hf = make_optimizer(hf, tc, fsdp=False)  # same groups, same fused AdamW: the comparison is the model
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, cfg.vocab_size, (steps + 1, batch, seq + 1), generator=g)
    # same loss on the first step (same weights, same batch): the two steps compute the same thing
    x0, y0 = data[0, :, :-1], data[0, :, 1:].contiguous()
    l_ours, l_hf = _step_ours(ours, opt_ours, x0, y0), _step_hf(hf, opt_hf, x0, y0)
    t_ours, t_hf, c_ours, c_hf = [], [], [], []
    for i in range(1, steps + 1):
        x, y = data[i, :, :-1], data[i, :, 1:].contiguous()
        for fn, ts, cs, m, o in (
            (_step_ours, t_ours, c_ours, ours, opt_ours),
            (_step_hf, t_hf, c_hf, hf, opt_hf),
        ):
            t, c = time.perf_counter(), time.process_time()
            fn(m, o, x, y)
            ts.append(time.perf_counter() - t)
            cs.append(time.process_time() - c)
    tok = batch * seq
    ours_tps, hf_tps = tok / statistics.median(t_ours), tok / statistics.median(t_hf)
    fpt = train_flops_per_token(ours, seq)
    return {
        "name": name, "params": ours.num_params(), "same_loss": abs(l_ours - l_hf) < 1e-4 * abs(l_hf),
        "ours": ours_tps, "hf": hf_tps, "cpu_ratio": statistics.median(c_hf) / statistics.median(c_ours), "mfu_ours": fpt * ours_tps / peak, "mfu_hf": fpt * hf_tps / peak,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,small")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per implementation (after 1 warm-up)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    peak = measure_peak_flops(torch.device("cpu"), n=2048)
    print(
        f"torch {torch.__version__}, {a.threads} threads, measured fp32 matmul peak {peak / 1e9:.1f} GFLOP/s"
    )
    print(f"batch {a.batch} x seq {a.seq}, median of {a.steps} steps each (alternating)")
    print("model   params  same | wall train tok/s ours / hf = ratio | CPU-time ratio | MFU ours / hf")
    for name in a.models.split(","):
        steps = a.steps if name == "tiny" else max(2, a.steps // 2)
        r = bench(name, steps, a.batch, a.seq, peak)
        print(
            f"{name:6s} {r['params'] / 1e6:6.1f}M {r['same_loss']!s:5s} | {r['ours']:9.0f} / {r['hf']:7.0f} = "
            f"{r['ours'] / r['hf']:.2f}x | {r['cpu_ratio']:.2f}x | {r['mfu_ours']:5.1%} / {r['mfu_hf']:5.1%}"
        )


if __name__ == "__main__":
    main()
