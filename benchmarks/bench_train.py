"""Training step speed vs transformers' Phi3ForCausalLM on the same weights, side by side in one process.

One step = forward with the loss + backward + clip + AdamW (fused, same hyper-parameters) on a batch of
8 x 256 tokens. phiforge's step is `train.loop`'s (sum-reduced loss scaled by 1/targets, fused AdamW);
transformers' is `model(input_ids, labels=...).loss.backward(); opt.step()`. Steps alternate between
the implementations and medians are reported. The machine is shared, so besides wall-clock tokens/s the ratio of
process CPU time per step is printed: it counts only this process's own work (a descheduled process accrues
none), which is the fairer comparison on an oversubscribed machine. MFU is against a fp32 matmul peak measured
in the same process at the same thread count, before every round of steps (the best of them).

`--baseline DIR` also times the phiforge of another source tree (DIR is its src/, e.g. a `git worktree add
/tmp/base main`'s), imported as `phiforge_base` and taking turns with this tree's: an A/B of a change in one
process. `--dpo` times the DPO step instead (policy forward + backward on chosen + rejected rows through
`train.dpo.dpo_loss`; the reference log-probs are computed once before training, so a step has none).

    python benchmarks/bench_train.py [--models tiny,small] [--steps 5] [--threads 2] [--baseline DIR] [--dpo]

(--steps timed steps for every model; before 2026-12-02 the ~160M model took half of them.)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import phiforge
from phiforge.train.loop import measure_peak_flops

MODELS = {  # the shapes of issue 4 (and ANCHORS.md): ~8M and ~160M, untied
    "tiny": dict(vocab_size=8192, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8),
    "small": dict(vocab_size=32064, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
}  # fmt: skip


def load_tree(src: str):
    """The phiforge package of another source tree, as `phiforge_base` (its imports are all relative)."""
    pkg = Path(src) / "phiforge"
    spec = importlib.util.spec_from_file_location(
        "phiforge_base", pkg / "__init__.py", submodule_search_locations=[str(pkg)]
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["phiforge_base"] = mod
    spec.loader.exec_module(mod)
    return mod


def _finish(model, opt, clip=torch.nn.utils.clip_grad_norm_):
    clip(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def _lm_step(clip):
    def step(model, opt, batch):
        x, y = batch
        loss = model(x, targets=y, reduction="sum") * (1.0 / y.numel())
        loss.backward()
        _finish(model, opt, clip)
        return float(loss.detach())

    return step


def _step_hf(model, opt, batch):
    x, y = batch
    loss = model(input_ids=x, labels=y, shift_labels=y).loss  # y is already shifted, as ours
    loss.backward()
    _finish(model, opt)
    return float(loss.detach())


def _dpo_step(dpo, clip):
    def step(model, opt, batch):
        loss, _ = dpo.dpo_loss(model, dpo.DPOBatch(*batch), beta=0.1)
        loss = loss * (2.0 / len(batch[0]))  # the loop divides the summed loss by the pair count
        loss.backward()
        _finish(model, opt, clip)
        return float(loss.detach())

    return step


def _dpo_batches(n: int, rows: int, seq: int, vocab: int) -> list[tuple]:
    """`rows` sequences (rows/2 pairs) of `seq` tokens: a shared prompt of seq/2, completions after it."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randint(0, vocab, (rows, seq), generator=g)
        x[rows // 2 :, : seq // 2] = x[: rows // 2, : seq // 2]  # rejected rows share the chosen prompt
        y = torch.roll(x, -1, 1)
        y[:, : seq // 2 - 1] = -100
        y[:, -1] = -100
        # a reference near the random-init policy's own log-probs (uniform over the vocabulary): loss ~ log 2
        ref = (y != -100).sum(1) * -math.log(vocab) + torch.randn(rows, generator=g)
        out.append((x, y, ref[: rows // 2].float(), ref[rows // 2 :].float()))
    return out


def _impl(pkg, cfg, dpo: bool):
    """(model, optimizer, step) of one phiforge tree: its own build, make_optimizer, clip and (DPO) loss."""
    model_mod = importlib.import_module(f"{pkg.__name__}.model")
    loop = importlib.import_module(f"{pkg.__name__}.train.loop")
    tc = importlib.import_module(f"{pkg.__name__}.train.config").TrainConfig(lr=1e-4, weight_decay=0.1)
    m = model_mod.build(model_mod.ModelConfig(**cfg), seed=0).train()
    clip = getattr(loop, "clip_grad_norm", torch.nn.utils.clip_grad_norm_)  # older trees: torch's
    step = _dpo_step(importlib.import_module(f"{pkg.__name__}.train.dpo"), clip) if dpo else _lm_step(clip)
    return m, loop.make_optimizer(m, tc, fsdp=False), step


def bench(name: str, steps: int, batch: int, seq: int, a) -> dict:
    from phiforge.model import save_model
    from phiforge.train.loop import train_flops_per_token

    cfg = dict(
        max_position_embeddings=2048, eos_token_id=None, pad_token_id=0, bos_token_id=None, **MODELS[name]
    )
    impls = {"ours": _impl(phiforge, cfg, a.dpo)}
    if a.baseline:
        impls["base"] = _impl(load_tree(a.baseline), cfg, a.dpo)
    if not a.dpo and not a.no_hf:
        import transformers

        from phiforge.train.config import TrainConfig
        from phiforge.train.loop import make_optimizer

        with tempfile.TemporaryDirectory() as d:
            save_model(impls["ours"][0], d)
            hf = transformers.AutoModelForCausalLM.from_pretrained(
                d, dtype=torch.float32, attn_implementation="sdpa"
            )
        hf.train()  # same parameter groups, same fused AdamW: the comparison is the model
        impls["hf"] = (hf, make_optimizer(hf, TrainConfig(lr=1e-4, weight_decay=0.1), fsdp=False), _step_hf)
    g = torch.Generator().manual_seed(0)
    vocab = cfg["vocab_size"]
    if a.dpo:
        data = _dpo_batches(steps + 1, batch, seq, vocab)
    else:
        d = torch.randint(0, vocab, (steps + 1, batch, seq + 1), generator=g)
        data = [(d[i, :, :-1], d[i, :, 1:].contiguous()) for i in range(steps + 1)]
    # same loss on the first step (same weights, same batch): the steps compute the same thing
    first = {k: step(m, o, data[0]) for k, (m, o, step) in impls.items()}
    wall = {k: [] for k in impls}
    cpu = {k: [] for k in impls}
    peaks = []  # measured again every round: on a shared machine one measurement can land in a busy second
    for i in range(1, steps + 1):
        peaks.append(measure_peak_flops(torch.device("cpu"), n=1536))
        for k in list(impls)[:: 1 if i % 2 else -1]:  # who goes first alternates too
            m, o, step = impls[k]
            t, c = time.perf_counter(), time.process_time()
            step(m, o, data[i])
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    fpt = train_flops_per_token(impls["ours"][0], seq)
    # the model-FLOPs formula counts the head on every position; rows without a target skip it (DPO's
    # prompts), so MFU also as the FLOPs actually done
    no_target = sum(int((b[1] == -100).sum()) for b in data[1:]) / steps / (batch * seq)
    done = fpt - 6 * cfg["vocab_size"] * cfg["hidden_size"] * no_target
    peak = max(peaks)
    out = {"params": impls["ours"][0].num_params(), "first": first, "peaks": peaks}
    for k in impls:
        tps = batch * seq / statistics.median(wall[k])
        spread = (min(wall[k]), max(wall[k]))
        out[k] = dict(
            tps=tps,
            cpu=statistics.median(cpu[k]),
            mfu=fpt * tps / peak,
            done=done * tps / peak,
            spread=spread,
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,small")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per implementation (after 1 warm-up)")
    ap.add_argument("--batch", type=int, default=8, help="rows per step (DPO: chosen + rejected rows)")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline", help="also time phiforge from this src dir (e.g. main's), taking turns")
    ap.add_argument("--dpo", action="store_true", help="time the DPO step (no transformers column)")
    ap.add_argument("--no-hf", action="store_true", help="leave out transformers")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads")
    what = "DPO step" if a.dpo else "step"
    print(f"batch {a.batch} x seq {a.seq}, {what}, median of steps (alternating) [min-max s]")
    for name in a.models.split(","):
        r = bench(name, a.steps, a.batch, a.seq, a)
        ours = r["ours"]
        p = [x / 1e9 for x in r["peaks"]]
        print(
            f"fp32 matmul peak (1536^3, each round) max {max(p):.1f} GFLOP/s [{min(p):.1f}-{max(p):.1f}]: the MFU denominator"
        )
        print(
            f"{name} {r['params'] / 1e6:.1f}M, first-step loss "
            + " ".join(f"{k} {v:.6f}" for k, v in r["first"].items())
        )
        for k in r["first"]:
            s = r[k]
            print(
                f"  {k:5s} {s['tps']:8.0f} tok/s [{s['spread'][0]:.2f}-{s['spread'][1]:.2f}]  MFU {s['mfu']:5.1%}  "
                + (f"(FLOPs done: {s['done']:5.1%})  " if a.dpo and k == "ours" else "")
                + f"ours/{k}: wall {ours['tps'] / s['tps']:.3f}x  CPU-time {s['cpu'] / ours['cpu']:.3f}x"
            )  # fmt: skip


if __name__ == "__main__":
    main()
