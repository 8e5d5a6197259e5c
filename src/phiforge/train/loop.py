"""The one training loop: pretraining phases and SFT both run through `train()`.

A step is: the global batch of this step (a pure function of the step, see mixture.py/sft.py) -> this
rank's micro-batches -> forward/backward with the summed loss scaled by world/targets so DDP's and FSDP's
gradient averaging yields the exact global mean -> clip -> AdamW -> lr for the next step. Everything exact
resume needs lives in the checkpoint; a resumed run replays the same steps bit for bit.

The loop knows no loss: each phase brings a collator (its `batch`) and an `Objective` (the loss and the
units it is summed over). Pretraining and SFT share `LM` (SFT's assistant-only mask is in its labels); a
preference loss such as DPO is another Objective plus a collator, not another loop.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import progress_bar, read_metrics, write_jsonl
from ..model import Transformer, build
from . import checkpoint as ckpt
from .config import TrainConfig, to_dict
from .dist import Dist, all_max, all_sum, barrier, full_state, load_optimizer, sync_context, wrap


class TrainingError(RuntimeError):
    """Training stopped (non-finite loss, bad data): one line saying where and what was kept."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT: a checkpoint was saved; `--resume` continues."""


Batch = tuple  # LM: (x, y, positions | None, mask | None); other objectives define their own tuples


def lm_loss(net, b: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-token cross-entropy summed over the targets != -100 (no extra metrics)."""
    x, y, pos, mask = b
    return net(x, positions=pos, mask=mask, targets=y, reduction="sum"), {}


def target_tokens(b: Batch) -> int:
    return int((b[1] != -100).sum())


@dataclass(frozen=True)
class Objective:
    """What a phase minimises. `loss(model, batch)` returns the loss *summed* over the batch's units and a
    dict of metrics summed the same way; `units(batch)` counts those units (target tokens, preference
    pairs). The loop divides loss and metrics by the global batch's units (PhaseData.targets), so both are
    exact means over the global batch whatever the micro-batching (DPO's rewards are means over pairs)."""

    loss: Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]
    units: Callable[[Batch], int]


LM = Objective(lm_loss, target_tokens)


@dataclass
class PhaseData:
    name: str
    steps: int
    batch: Callable[[int, int, int], Batch]  # the collator: (step, lo, hi) -> rows lo..hi of the global batch
    targets: Callable[[int], int]  # step -> objective units in the global batch (LM: labels != -100)
    objective: Objective = LM


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate for 0-based `step` of `total`: linear warmup, then cosine / WSD / constant."""
    w = min(cfg.warmup_steps, max(total - 1, 0))
    if step < w:
        return cfg.lr * (step + 1) / w
    lo = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        t = (step - w) / max(total - w - 1, 1)
        return lo + (cfg.lr - lo) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    decay = max(1, round(cfg.decay_fraction * (total - w)))  # wsd: stable, then linear decay at the end
    start = total - decay
    if step < start:
        return cfg.lr
    return cfg.lr + (lo - cfg.lr) * (step - start + 1) / decay


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, fsdp: bool) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if not fsdp:  # fused AdamW: one kernel over all params (CPU and CUDA); FSDP's DTensors take foreach
        try:
            return torch.optim.AdamW(groups, fused=True, **kw)
        except (RuntimeError, TypeError):
            pass
    return torch.optim.AdamW(groups, foreach=True, **kw)


def train_flops_per_token(model: Transformer, seq_len: int) -> float:
    """6N (forward + backward matmuls) + causal attention 6 * L * T * d (QK^T and AV, halved for causal)."""
    c = model.cfg
    n = model.num_params() - c.vocab_size * c.hidden_size * (0 if c.tie_word_embeddings else 1)
    return 6 * n + 6 * c.num_hidden_layers * seq_len * c.num_attention_heads * c.head_dim


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """torch's clip_grad_norm_ (same norm, same scaling: bit for bit), less its multiply of every gradient
    by 1.0 when nothing is clipped: torch keeps that pass to spare a GPU a host sync, which a CPU tensor
    does not need (76 tensors, ~1% of a ~160M CPU step). Returns the total norm before clipping."""
    params = [p for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    # `not >= 1` rather than `< 1`: a NaN norm clips too, as in torch (every gradient becomes NaN)
    if (
        type(total) is not torch.Tensor
        or total.device.type != "cpu"
        or not bool(max_norm / (total + 1e-6) >= 1)
    ):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)  # DTensors, GPUs, or clipping
    return total


def measure_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1536) -> float:
    """Dense matmul FLOP/s of this process (the MFU denominator when no --peak-flops is given)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - t) / 4)
    return 2 * n**3 / best


class _Signals:
    """SIGTERM/SIGINT set a flag; the loop saves and stops at the end of the step."""

    def __init__(self):
        self.hit = 0
        self.old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            with suppress(ValueError):  # not the main thread: no handlers, no save on signal
                self.old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.hit = signum

    def __exit__(self, *a):
        for s, h in self.old.items():
            signal.signal(s, h)


class Metrics:
    """metrics.jsonl (rank 0), truncated to the resume step so a resumed file reads like an unbroken run."""

    def __init__(self, path: Path, resume_step: int, enabled: bool, tensorboard: bool):
        self.path, self.enabled = path, enabled
        self.tb = None
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = read_metrics(path) if resume_step else []
        write_jsonl(path, [r for r in rows if r.get("step", 0) <= resume_step])
        self.f = path.open("a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(path.parent / "tb"))
            except ImportError:
                print("note: tensorboard is not installed; metrics go to metrics.jsonl only")

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, float):
                    self.tb.add_scalar(k, v, row["step"])
                elif isinstance(v, dict):
                    for kk, vv in v.items():
                        self.tb.add_scalar(f"{k}/{kk}", vv, row["step"])

    def close(self) -> None:
        if self.enabled:
            self.f.close()
            if self.tb is not None:
                self.tb.close()


def _forward_loss(net, b: Batch, device, autocast, objective: Objective = LM):
    b = tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in b)
    with autocast:
        return objective.loss(net, b)


@torch.no_grad()
def evaluate(
    net, evals: dict[str, list[Batch]], device, autocast, objective: Objective = LM
) -> dict[str, float]:
    was = net.training
    net.eval()
    out = {}
    for name, batches in evals.items():
        total, n = 0.0, 0
        for b in batches:
            total += float(_forward_loss(net, b, device, autocast, objective)[0])
            n += objective.units(b)
        out[name] = total / max(n, 1)
    net.train(was)
    return out


def _apply_activation_checkpointing(model: Transformer) -> None:
    from torch.utils.checkpoint import checkpoint

    for block in model.blocks:
        fwd = block.forward
        block.forward = lambda *a, _f=fwd: checkpoint(_f, *a, use_reentrant=False)


def _save(run: Path, step: int, raw: Transformer, net, opt, tokenizer, cfg, d: Dist, phase: int) -> Path:
    msd, osd = full_state(net if cfg.fsdp else raw, opt, cfg.fsdp, d)
    path = ckpt.step_dir(run / "ckpt", step)
    if d.main:
        plain = raw
        if cfg.fsdp and d.on:  # rebuild an ordinary module from the gathered full state
            plain = build(raw.cfg, device="meta")
            plain.load_state_dict(msd, assign=True)
            if raw.cfg.tie_word_embeddings:
                plain.lm_head.weight = plain.embed.weight
        state = {
            "step": step,
            "phase": phase,
            "optimizer": osd,
            "rng": ckpt.rng_state(),
            "recipe": to_dict(cfg),
            "world": d.world,
        }
        path = ckpt.save(run / "ckpt", step, plain, tokenizer, state, cfg.keep_last)
    barrier(d)
    return path


def train(
    cfg: TrainConfig,
    model: Transformer,
    tokenizer,
    phases: list[PhaseData],
    evals: dict[str, list[Batch]],
    d: Dist,
    resume_from: Path | None = None,
    console=None,
) -> Path:
    """Run all phases; returns the final checkpoint directory (HF layout + trainer_state.pt)."""
    run = Path(cfg.out)
    total = sum(p.steps for p in phases)
    mb, ga = cfg.micro_batch, cfg.grad_accum
    n_global = mb * ga * d.world
    torch.manual_seed(cfg.seed)
    raw = model.to(d.device)
    if cfg.activation_checkpointing:
        _apply_activation_checkpointing(raw)
    net = wrap(raw, d, cfg.fsdp)
    opt = make_optimizer(net, cfg, cfg.fsdp and d.on)
    start = 0
    if resume_from is not None:
        state = ckpt.load_state(resume_from)
        load_optimizer(net, opt, state["optimizer"], cfg.fsdp, d)
        ckpt.set_rng_state(state["rng"])
        start = state["step"]
    if cfg.compile:
        net = torch.compile(net)
    autocast = torch.autocast(d.device.type, dtype=torch.bfloat16) if cfg.dtype == "bf16" else nullcontext()
    peak = cfg.peak_flops or measure_peak_flops(
        d.device, torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
    )
    fpt = train_flops_per_token(raw, cfg.seq_len)
    metrics = Metrics(run / "metrics.jsonl", start, d.main, cfg.tensorboard)
    bounds = [sum(p.steps for p in phases[: i + 1]) for i in range(len(phases))]
    last_path = resume_from
    progress = _progress(cfg, d, console, total, start)
    net.train()
    t_run = time.perf_counter()
    try:
        with _Signals() as sig, progress or nullcontext():
            task = progress.add_task("train", total=total, completed=start) if progress else None
            for step in range(start, total):
                pi = next(i for i, b in enumerate(bounds) if step < b)
                phase = phases[pi]
                lr = lr_at(step, total, cfg)
                for g in opt.param_groups:
                    g["lr"] = lr
                t0 = time.perf_counter()
                n_tgt = phase.targets(step)
                scale = d.world / max(n_tgt, 1)
                loss_sum, extra = 0.0, {}
                base = d.rank * mb * ga
                for k in range(ga):
                    b = phase.batch(step, base + k * mb, base + (k + 1) * mb)
                    with sync_context(net, k == ga - 1):
                        loss, m = _forward_loss(net, b, d.device, autocast, phase.objective)
                        (loss * scale).backward()
                    loss_sum += float(loss.detach())
                    for key, v in m.items():
                        extra[key] = extra.get(key, 0.0) + float(v)
                loss_val = float(all_sum(loss_sum, d)) / max(n_tgt, 1)
                if extra:  # the objective's metrics, global means (every rank has the same keys)
                    sums = all_sum(torch.tensor(list(extra.values()), dtype=torch.float64), d)
                    extra = {key: float(v) / max(n_tgt, 1) for key, v in zip(extra, sums, strict=True)}
                if not math.isfinite(loss_val):
                    kept = f"last good checkpoint: {last_path}" if last_path else "no checkpoint saved yet"
                    raise TrainingError(
                        f"loss is {loss_val} at step {step + 1} (phase {phase.name}); stopped, {kept}"
                    )
                gn = clip_grad_norm(net.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
                gn = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)
                opt.step()
                opt.zero_grad(set_to_none=True)
                dt = time.perf_counter() - t0
                done = step + 1
                tps = n_global * cfg.seq_len / dt
                row = {
                    "type": "train", "step": done, "phase": phase.name, "loss": loss_val, "lr": lr,
                    "grad_norm": gn, "tokens": done * n_global * cfg.seq_len, "tokens_per_s": tps,
                    "mfu": fpt * tps / (peak * d.world), "time": time.perf_counter() - t_run, **extra,
                }  # fmt: skip
                metrics.log(row)
                end_of_phase = done == bounds[pi]
                if (cfg.eval_every and done % cfg.eval_every == 0) or end_of_phase:
                    ev = evaluate(net, evals, d.device, autocast, phase.objective)
                    if ev:
                        metrics.log({"type": "eval", "step": done, "phase": phase.name, "val_loss": ev})
                        if console is not None and d.main:
                            vals = "  ".join(f"{k} {v:.3f}" for k, v in ev.items())
                            console.print(f"step {done}/{total} [{phase.name}] val loss: {vals}")
                stop = all_max(sig.hit, d)
                if (cfg.save_every and done % cfg.save_every == 0) or done == total or stop:
                    last_path = _save(run, done, raw, net, opt, tokenizer, cfg, d, pi)
                if progress:
                    progress.update(
                        task, completed=done, description=f"{phase.name} loss {loss_val:.3f} {tps:,.0f} tok/s"
                    )
                if stop:
                    name = signal.Signals(stop).name
                    raise TrainingInterrupted(f"{name} at step {done}: saved {last_path}; --resume continues")
    finally:
        metrics.close()
    return last_path


def _progress(cfg: TrainConfig, d: Dist, console, total: int, start: int):
    if not (cfg.progress and d.main and console is not None):
        return None
    return progress_bar(console)
