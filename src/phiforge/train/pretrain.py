"""Entry points: `pretrain(recipe)`, `sft(model_dir, data, cfg)` and `dry_run(recipe)`.

They turn a recipe into a model, a tokenizer and per-phase data, then hand over to loop.train. The
model's vocabulary follows the tokenizer unless the recipe sets model_overrides.vocab_size (or starts
from a checkpoint); every mismatch between tokenizer, shards and model is a one-line error here,
before any compute.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from pathlib import Path

import torch

from ..model import Transformer, build, get_preset, load_config, load_model
from ..tokenizer import Tokenizer
from . import checkpoint as ckpt
from .config import RecipeError, TrainConfig, load_recipe
from .dist import Dist, setup, teardown
from .loop import LM, PhaseData, make_optimizer, measure_peak_flops, train, train_flops_per_token
from .mixture import Mixture, TrainDataError, val_batches
from .sft import build_sft_data, sft_inputs


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _tokenizer_dir(cfg: TrainConfig) -> Path | None:
    if cfg.tokenizer:
        return Path(cfg.tokenizer)
    if cfg.init_from and (Path(cfg.init_from) / "tokenizer.json").is_file():
        return Path(cfg.init_from)
    import json

    for p in cfg.phases:  # data runs record their tokenizer in index.json
        for ds in p.datasets:
            idx = Path(ds.path) / "index.json"
            if idx.is_file():
                t = json.loads(idx.read_text()).get("tokenizer")
                if t and Path(t).exists():
                    return Path(t)
    return None


def load_tokenizer(cfg: TrainConfig) -> Tokenizer | None:
    d = _tokenizer_dir(cfg)
    if d is None:
        return None
    try:
        return Tokenizer.from_file(d)
    except (FileNotFoundError, ValueError) as e:
        raise TrainDataError(f"tokenizer: {e}") from None


def model_config(cfg: TrainConfig, tok: Tokenizer | None):
    """The ModelConfig this recipe trains (vocab from the tokenizer unless set explicitly)."""
    if cfg.init_from:
        mc = load_config(cfg.init_from)
        extra = set(cfg.model_overrides) - {"dropout"}
        if extra:
            raise RecipeError(
                f"model_overrides: only dropout can change when init_from is set (got {sorted(extra)})"
            )
        mc = mc.replace(**cfg.model_overrides)
    else:
        mc = get_preset(cfg.preset)
        over = dict(cfg.model_overrides)
        if tok is not None and "vocab_size" not in over:
            over.update(vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
            over.update(bos_token_id=tok.bos_id)
        if "num_attention_heads" in over and mc.num_key_value_heads == mc.num_attention_heads:
            over.setdefault("num_key_value_heads", over["num_attention_heads"])  # keep "no GQA"
        try:
            mc = mc.replace(**over)
        except (TypeError, ValueError) as e:
            raise RecipeError(f"model_overrides: {e}") from None
    if tok is not None and tok.vocab_size > mc.vocab_size:
        raise TrainDataError(
            f"tokenizer vocab {tok.vocab_size} > model vocab_size {mc.vocab_size}: the model cannot embed "
            "every token (tokenizer/model mismatch)"
        )
    if mc.max_position_embeddings < cfg.seq_len:
        raise RecipeError(
            f"seq_len {cfg.seq_len} > model max_position_embeddings {mc.max_position_embeddings}"
        )
    return mc


def _check_shards_vs_tokenizer(cfg: TrainConfig, tok: Tokenizer | None) -> None:
    import json

    if tok is None:
        return
    for p in cfg.phases:
        for ds in p.datasets:
            idx = Path(ds.path) / "index.json"
            if not idx.is_file():
                continue  # Mixture reports the missing folder
            meta = json.loads(idx.read_text())
            v, eos = meta.get("vocab_size"), meta.get("eos_id")
            if v is not None and v != tok.vocab_size or eos is not None and eos != tok.eos_id:
                raise TrainDataError(
                    f"{idx}: shards have vocab {v} / eos {eos}, the tokenizer has vocab {tok.vocab_size} / "
                    f"eos {tok.eos_id} (tokenizer/shards mismatch)"
                )


def _init_model(cfg: TrainConfig, mc, resume: Path | None) -> Transformer:
    src = resume or cfg.init_from
    if src is None:
        return build(mc, seed=cfg.seed)
    # weights from the checkpoint, module from the recipe's config: config.json does not carry
    # training-only fields such as dropout
    loaded = load_model(src, dtype=torch.float32)
    if loaded.cfg.replace(dropout=mc.dropout) != mc:
        raise TrainDataError(f"{src}: checkpoint config differs from the recipe's model (vocab/shape)")
    if loaded.cfg == mc:
        return loaded
    model = build(mc, device="meta")
    model.load_state_dict(loaded.state_dict(), assign=True)
    if mc.tie_word_embeddings:
        model.lm_head.weight = model.embed.weight
    return model


def _resume_point(cfg: TrainConfig, resume: bool | str | Path) -> Path | None:
    if not resume:
        return None
    if resume is True:
        return ckpt.latest(Path(cfg.out) / "ckpt")
    p = Path(resume)
    if not (p / ckpt.STATE).is_file():
        raise TrainDataError(f"{p}: no {ckpt.STATE} (not a training checkpoint)")
    return p


def pretrain(
    cfg: TrainConfig | str | Path, resume: bool | str | Path = False, overrides=(), quiet=False
) -> Path:
    """Train all phases of a recipe; returns the final checkpoint dir. Works under torchrun (DDP/FSDP2)."""
    if not isinstance(cfg, TrainConfig):
        cfg = load_recipe(cfg, list(overrides))
    if not cfg.phases:
        raise RecipeError("recipe has no phases")
    d = setup()
    try:
        con = None if quiet or not d.main else _console()
        tok = load_tokenizer(cfg)
        mc = model_config(cfg, tok)
        _check_shards_vs_tokenizer(cfg, tok)
        steps = cfg.phase_steps(d.world)
        n_global = cfg.micro_batch * cfg.grad_accum * d.world
        start = _resume_point(cfg, resume)
        model0 = _init_model(cfg, mc, None) if any(p.kind == "dpo" for p in cfg.phases) else None
        phases = []
        for i, (p, n) in enumerate(zip(cfg.phases, steps, strict=True)):
            if p.kind == "dpo":
                phases.append(_dpo_phase(cfg, p, tok, mc, model0, d, con))
                continue
            mix = Mixture(p.datasets, cfg.seq_len, mc.vocab_size, cfg.seed, i)

            def batch(step, lo, hi, mix=mix):
                x = mix.batch(step, n_global, lo, hi)
                return x[:, :-1], x[:, 1:], None, None

            phases.append(PhaseData(p.name, n, batch, lambda step: n_global * cfg.seq_len, LM))
        evals = {}
        for p in cfg.phases:
            for ds in p.datasets:
                vb = val_batches(ds, cfg.seq_len, mc.vocab_size, cfg.eval_tokens, cfg.micro_batch)
                if vb:
                    evals[ds.label()] = [(b[:, :-1], b[:, 1:], None, None) for b in vb]
                elif con:
                    con.print(f"note: {ds.path} has no usable val split; no validation loss for it")
        if resume and start is None and con:
            con.print(f"note: --resume: no checkpoint in {Path(cfg.out) / 'ckpt'} yet, starting from step 0")
        model = model0 if model0 is not None and start is None else _init_model(cfg, mc, start)
        del model0  # DPO's reference lives on disk as log-probs: one model in memory while training
        if con:
            _announce(con, cfg, model, [p.steps for p in phases], d, start)
        return train(cfg, model, tok, phases, evals, d, start, con)
    finally:
        teardown(d)


def _dpo_phase(
    cfg: TrainConfig, p, tok: Tokenizer | None, mc, model0: Transformer, d: Dist, con
) -> PhaseData:
    """Pairs of a dpo phase with reference log-probs of the run's starting model (cached beside the data)."""
    from .dpo import dpo_phase, load_pairs
    from .dpo_ref import attach

    if tok is None:
        raise TrainDataError(
            f"{p.data}: a dpo phase needs the model's tokenizer (set `tokenizer` or init_from)"
        )
    pairs = load_pairs(tok, p.data, cfg.seq_len + 1, mc.vocab_size)
    pad = tok.token_to_id(tok.pad_token) if tok.pad_token else tok.eos_id
    pad = pad if pad is not None else 0
    path, computed = attach(pairs, p.data, model0, cfg.micro_batch, pad, d, cfg.dtype)
    n_global = cfg.micro_batch * cfg.grad_accum * d.world
    phase = dpo_phase(p.name, pairs, p, n_global, cfg.seed, pad)
    if con:
        how = f"computed for {computed}" if computed else "all reused"
        con.print(
            f"[bold]dpo[/] {p.name}: {len(pairs)} pairs ({pairs.dropped} dropped: prompt >= seq_len), "
            f"{p.loss_type} beta {p.beta}, sft weight {p.sft_weight}; reference log-probs {how} ({path.name})"
        )
    return phase


def sft(
    model_dir: str | Path,
    data: str | Path,
    cfg: TrainConfig | None = None,
    resume: bool | str | Path = False,
    val_data: str | Path | None = None,
    quiet: bool = False,
) -> Path:
    """Fine-tune `model_dir` on conversations (jsonl of {"messages": [...]}) for cfg.sft_epochs epochs."""
    cfg = cfg or TrainConfig(lr=1e-3, warmup_steps=5, eval_every=0, out="runs/sft")
    cfg.init_from = str(model_dir)
    d = setup()
    try:
        con = None if quiet or not d.main else _console()
        tok = load_tokenizer(cfg)
        if tok is None:
            raise TrainDataError(f"{model_dir}: no tokenizer.json (SFT needs the chat template's tokenizer)")
        mc = model_config(cfg, tok)
        packed = build_sft_data(tok, data, cfg.seq_len, mc.vocab_size)
        n_global = cfg.micro_batch * cfg.grad_accum * d.world
        steps = max(1, math.ceil(cfg.sft_epochs * len(packed) / n_global))
        cfg.phases = []

        @functools.lru_cache(maxsize=4)
        def perm(epoch):  # an epoch is a seeded permutation of the packed rows
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            return torch.randperm(len(packed), generator=g)

        def rows(step):
            js = range(step * n_global, (step + 1) * n_global)
            return torch.tensor([int(perm(j // len(packed))[j % len(packed)]) for j in js])

        def batch(step, lo, hi):
            return sft_inputs(packed, rows(step)[lo:hi], cfg.sft_doc_mask)

        def targets(step):
            return int(sft_inputs(packed, rows(step), False)[1].ne(-100).sum())

        evals = {}
        if val_data:
            vp = build_sft_data(tok, val_data, cfg.seq_len, mc.vocab_size)
            evals["sft_val"] = [
                sft_inputs(vp, r, cfg.sft_doc_mask) for r in torch.arange(len(vp)).split(cfg.micro_batch)
            ]
        start = _resume_point(cfg, resume)
        model = _init_model(cfg, mc, start)
        if con:
            con.print(
                f"[bold]sft[/]: {len(packed)} packed rows of {cfg.seq_len + 1} tokens "
                f"({packed.truncated} conversations truncated), {steps} steps of {n_global} rows"
            )
        phase = PhaseData("sft", steps, batch, targets, LM)  # the mask is in the labels: plain LM loss
        return train(cfg, model, tok, [phase], evals, d, start, con)
    finally:
        teardown(d)


def measure_throughput(cfg: TrainConfig, steps: int = 12) -> float:
    """Training tokens/s of this recipe's model on this machine (one process, one micro-batch of random
    tokens): the median of the steps after the first 4, which warm up allocators and thread pools."""
    model = build(model_config(cfg, load_tokenizer(cfg)), seed=cfg.seed).train()
    opt = make_optimizer(model, cfg, fsdp=False)
    x = torch.randint(0, model.cfg.vocab_size, (cfg.micro_batch, cfg.seq_len + 1))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        model(x[:, :-1], targets=x[:, 1:]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    warm = sorted(times[4:])
    return cfg.micro_batch * cfg.seq_len / warm[len(warm) // 2]


def _announce(con, cfg: TrainConfig, model: Transformer, steps: list[int], d: Dist, start) -> None:
    n = model.num_params()
    con.print(
        f"[bold]train[/] {cfg.name}: {n / 1e6:.2f}M params, {d.world} process(es), "
        f"{cfg.tokens_per_step(d.world):,} tokens/step, phases "
        + ", ".join(f"{p.name} {s} steps" for p, s in zip(cfg.phases, steps, strict=True))
        + (f"; resuming from {start}" if start else "")
    )


def dry_run(cfg: TrainConfig, world: int = 1, peak_flops: float | None = None, mfu: float = 0.4) -> dict:
    """What a recipe costs, without allocating it: params, memory per process, tokens, FLOPs, time."""
    try:  # sizing a recipe must not need its data: without the tokenizer, the preset's vocab is used
        tok = load_tokenizer(cfg)
    except TrainDataError:
        tok = None
    mc = model_config(cfg, tok)
    model = build(mc, device="meta")
    n = model.num_params()
    h, L, T, B = mc.hidden_size, mc.num_hidden_layers, cfg.seq_len, cfg.micro_batch
    act_bytes = 2 if cfg.dtype == "bf16" else 4
    # activations kept for backward, per layer per token ~ 17 * hidden values (Korthikanti et al. 2022,
    # flash attention, no recompute) + fp32 logits and their gradient
    acts = B * T * (L * 17 * h * act_bytes + 2 * 4 * mc.vocab_size)
    if cfg.activation_checkpointing:
        acts = B * T * (L * h * act_bytes + 17 * h * act_bytes + 2 * 4 * mc.vocab_size)
    shard = world if cfg.fsdp else 1
    mem = {
        "weights": 4 * n / shard,
        "grads": 4 * n / shard,
        "adamw": 8 * n / shard,
        "activations": acts,
    }
    mem["total"] = sum(mem.values())
    tokens = sum(p.tokens for p in cfg.phases)
    steps = cfg.phase_steps(world)
    real_tokens = sum(steps) * cfg.tokens_per_step(world)
    flops = train_flops_per_token(model, T) * real_tokens
    peak = peak_flops or measure_peak_flops(torch.device("cpu"))
    return {
        "params": n,
        "model": mc,
        "memory_bytes": mem,
        "tokens": tokens,
        "tokens_trained": real_tokens,
        "steps": steps,
        "flops": flops,
        "flops_6ND": 6 * n * real_tokens,
        "peak_flops": peak,
        "peak_measured": peak_flops is None,
        "world": world,
        "seconds_at_mfu": flops / (peak * world * mfu),
        "mfu_assumed": mfu,
    }


def print_dry_run(r: dict, file=None) -> None:
    # file=None, not sys.stdout: a default is bound at import, and would miss a later redirect_stdout
    gib = 2**30
    m = r["memory_bytes"]
    src = "measured fp32 matmul peak of this process" if r["peak_measured"] else "given"
    lines = [
        f"params: {r['params']:,} ({r['params'] / 1e6:.1f}M)",
        "memory per process: "
        + ", ".join(f"{k} {v / gib:.2f} GiB" for k, v in m.items() if k != "total")
        + f"; total {m['total'] / gib:.2f} GiB",
        f"tokens: {r['tokens']:,} budget, {r['tokens_trained']:,} trained in {sum(r['steps']):,} steps "
        f"({', '.join(map(str, r['steps']))} per phase)",
        f"training FLOPs: {r['flops']:.3e} (6ND alone {r['flops_6ND']:.3e})",
        f"peak: {r['peak_flops'] / 1e9:,.1f} GFLOP/s per process ({src}), {r['world']} process(es)",
        f"estimated time at {r['mfu_assumed']:.0%} MFU: {_dur(r['seconds_at_mfu'])}"
        f" (at 100%: {_dur(r['seconds_at_mfu'] * r['mfu_assumed'])})",
    ]
    print("\n".join(lines), file=file or sys.stdout)


def _dur(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"
