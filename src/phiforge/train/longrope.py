"""Context extension: LongRoPE's evolutionary search over per-dimension RoPE rescale factors, YaRN and
position interpolation (PI) as baselines, and a short fine-tune at the target length.

Every method ends as a rope_scaling that model/rope.py (and transformers) already run:
  pi:       {"type": "linear", "factor": s}                       (every frequency divided by s)
  yarn:     transformers' yarn parameters {"type": "yarn", "factor": s}
            (transformers' Phi3Config accepts longrope only: on phi3 both are written as longrope factors
            with short = long, so the same rope runs at every length, and their own attention factor)
  longrope: {"type": "longrope", "short_factor", "long_factor"} + original_max_position_embeddings;
            long factors searched at the target length, short factors re-searched at the original length
            (the model switches to the long ones past it, and both tables carry LongRoPE's attention factor
            sqrt(1 + ln s / ln L_orig), so short = 1 would not give back the original model below the switch).
A factor f_i divides frequency i: inv_freq_i = 1 / (f_i * theta^(2i/d)); f = 1 extrapolates, f = s interpolates.
The paper's other knob, a number of initial positions left unscaled, is not implemented: transformers'
longrope has no field for it, so a checkpoint using it would not load elsewhere.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..model import ModelConfig, Transformer
from ..model.config import ARCHS
from ..model.rope import RopeTables, attention_scaling, inv_freq, yarn_inv_freq

METHODS = ("longrope", "yarn", "pi")


# ---- the factors each method writes -------------------------------------------------------------------


def _yarn(cfg: ModelConfig, scale: float, orig: int) -> ModelConfig:
    # arch llama: phi3 would read "yarn" as longrope; the rope fields are all YaRN's formulas look at
    rs = {"type": "yarn", "factor": scale}
    return cfg.replace(arch="llama", rope_scaling=rs, original_max_position_embeddings=orig)


def yarn_factors(cfg: ModelConfig, scale: float, orig: int) -> list[float]:
    """YaRN's per-dimension factors (transformers' defaults beta_fast 32, beta_slow 1) as longrope factors."""
    return (inv_freq(cfg) / yarn_inv_freq(_yarn(cfg, scale, orig))).tolist()


def ntk_factors(cfg: ModelConfig, scale: float) -> list[float]:
    """NTK-aware scaling (theta * s^(d/(d-2))) as factors: 1 at the highest frequency, s at the lowest."""
    half = cfg.rotary_dim // 2
    return [scale ** (i / max(half - 1, 1)) for i in range(half)]


def extended_config(
    cfg: ModelConfig,
    length: int,
    orig: int,
    method: str,
    long_factor: list[float] | None = None,
    short_factor: list[float] | None = None,
) -> ModelConfig:
    """`cfg` stretched from `orig` (the length it was trained at) to `length` tokens by `method`."""
    if method not in METHODS:
        raise ValueError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    if length <= orig:
        raise ValueError(f"--length {length}: must exceed the original context {orig}")
    s = length / orig
    base = cfg.replace(
        rope_scaling=None, original_max_position_embeddings=orig, max_position_embeddings=length
    )
    half = cfg.rotary_dim // 2
    native = not ARCHS[cfg.arch].yarn_is_longrope  # transformers' Phi3Config accepts longrope only
    if method == "pi" and native:
        return base.replace(
            rope_scaling={"type": "linear", "factor": s}, original_max_position_embeddings=None
        )
    if method == "yarn" and native:
        return base.replace(rope_scaling={"type": "yarn", "factor": s})
    if method != "longrope":  # PI or YaRN as longrope factors, short = long: the same rope at every length
        f = [s] * half if method == "pi" else yarn_factors(cfg, s, orig)
        att = 1.0 if method == "pi" else attention_scaling(_yarn(cfg, s, orig))
        rs = {"type": "longrope", "short_factor": f, "long_factor": f, "attention_factor": att}
        return base.replace(rope_scaling=rs)
    rs = {
        "type": "longrope",
        "short_factor": list(short_factor or [1.0] * half),
        "long_factor": list(long_factor or yarn_factors(cfg, s, orig)),
    }
    return base.replace(rope_scaling=rs)


def set_rope(model: Transformer, cfg: ModelConfig) -> Transformer:
    """Give a model another rope configuration in place (weights untouched): what the search evaluates."""
    model.cfg = cfg
    model.rope = RopeTables(cfg)
    return model


# ---- fitness: perplexity on held-out long documents ---------------------------------------------------


def long_windows(ids: list[int], length: int, n: int) -> torch.Tensor:
    """Up to n disjoint windows of length + 1 tokens (every token after the first is a target)."""
    k = min(n, len(ids) // (length + 1))
    if k < 1:
        raise ValueError(f"held-out text has {len(ids)} tokens, fewer than one window of {length + 1}")
    return torch.tensor([ids[i * (length + 1) : (i + 1) * (length + 1)] for i in range(k)])


@torch.inference_mode()
def perplexity(model: Transformer, windows: torch.Tensor) -> float:
    """exp(mean next-token loss) over the windows, one row at a time (a long row is memory enough)."""
    total = sum(float(model(w[None, :-1], targets=w[None, 1:], reduction="sum")) for w in windows)
    return math.exp(total / windows[:, 1:].numel())


# ---- LongRoPE's evolutionary search ------------------------------------------------------------------


@dataclass
class SearchConfig:
    population: int = 16
    generations: int = 6
    parents: int = 4  # the best candidates kept each generation (elitism); children come from them
    mutation_rate: float = 0.3  # chance that each factor moves
    mutation_sigma: float = 0.25  # log-space step of a move
    seed: int = 0


def monotone(factors: list[float], lo: float, hi: float) -> list[float]:
    """Clip to [lo, hi] and make non-decreasing across dimensions (LongRoPE's dim_mono constraint: a
    lower frequency is never interpolated less than a higher one)."""
    out, prev = [], lo
    for f in factors:
        prev = max(prev, min(max(f, lo), hi))
        out.append(prev)
    return out


def mutate(f: list[float], rng: random.Random, sc: SearchConfig, lo: float, hi: float) -> list[float]:
    g = [x * math.exp(rng.gauss(0, sc.mutation_sigma)) if rng.random() < sc.mutation_rate else x for x in f]
    return monotone(g, lo, hi)


def crossover(a: list[float], b: list[float], rng: random.Random, lo: float, hi: float) -> list[float]:
    # one cut point: the high-frequency head of one parent, the low-frequency tail of the other
    k = rng.randrange(1, len(a))
    return monotone(a[:k] + b[k:], lo, hi)


def search(
    fitness: Callable[[list[float]], float],
    seeds: list[list[float]],
    lo: float,
    hi: float,
    sc: SearchConfig,
    log: Callable[[str], None] | None = None,
) -> tuple[list[float], float, list[dict]]:
    """Minimise fitness over non-decreasing factor vectors in [lo, hi]. The first population is the seeds
    (made monotone) and mutations of them; each generation keeps the best `parents` and breeds the rest by
    crossover + mutation. Returns (best factors, best fitness, history: one row per generation)."""
    rng = random.Random(sc.seed)
    seen: dict[tuple, float] = {}

    def score(f):
        key = tuple(round(x, 4) for x in f)
        if key not in seen:
            seen[key] = fitness(f)
        return seen[key]

    pop = [monotone(s, lo, hi) for s in seeds]
    while len(pop) < sc.population:
        pop.append(mutate(rng.choice(seeds), rng, sc, lo, hi))
    history = []
    for gen in range(sc.generations + 1):
        ranked = sorted(pop, key=score)
        best = score(ranked[0])
        history.append({"generation": gen, "best": best, "evaluated": len(seen)})
        if log:
            log(f"generation {gen}: best perplexity {best:.3f} ({len(seen)} candidates evaluated)")
        if gen == sc.generations:
            return ranked[0], best, history
        elite = ranked[: sc.parents]
        pop = list(elite)
        while len(pop) < sc.population:
            a, b = rng.sample(elite, 2) if len(elite) > 1 else (elite[0], elite[0])
            pop.append(mutate(crossover(a, b, rng, lo, hi), rng, sc, lo, hi))
    raise AssertionError("unreachable")


def search_longrope(
    model: Transformer,
    long_ids: list[int],
    length: int,
    orig: int,
    sc: SearchConfig,
    docs: int = 2,
    short_sc: SearchConfig | None = None,
    log: Callable[[str], None] | None = None,
    search_short: bool = True,
) -> tuple[ModelConfig, dict]:
    """Search long factors at `length` (seeded with PI, YaRN and NTK), then short factors at `orig`
    (seeded with 1s) so text below the switch keeps its quality (search_short=False: short factors stay 1).
    Leaves the model on the winning config."""
    cfg0 = model.cfg
    s = length / orig
    half = cfg0.rotary_dim // 2
    win_long = long_windows(long_ids, length, docs)

    def fit_long(f):
        return perplexity(set_rope(model, extended_config(cfg0, length, orig, "longrope", f)), win_long)

    seeds = [[s] * half, yarn_factors(cfg0, s, orig), ntk_factors(cfg0, s)]
    long_f, long_ppl, hist_long = search(fit_long, seeds, 1.0, 2 * s, sc, log)

    def fit_short(f):
        return perplexity(
            set_rope(model, extended_config(cfg0, length, orig, "longrope", long_f, f)), win_short
        )

    short_sc = short_sc or dataclasses.replace(sc, generations=max(1, sc.generations // 2))
    # perplexity below the switch: the same text cut in windows of the original length
    win_short = long_windows(long_ids, orig, docs * max(1, length // orig // 2)) if search_short else None
    if search_short:
        short_f, short_ppl, hist_short = search(fit_short, [[1.0] * half], 1.0, s, short_sc, log)
    else:
        short_f, short_ppl, hist_short = [1.0] * half, None, []
    cfg = extended_config(cfg0, length, orig, "longrope", long_f, short_f)
    set_rope(model, cfg)
    report = {
        "long_ppl": long_ppl,
        "short_ppl": short_ppl,
        "history_long": hist_long,
        "history_short": hist_short,
    }
    return cfg, report


# ---- the fine-tune at the target length -------------------------------------------------------------


def finetune(
    model_dir: str | Path,
    shards: list[str],
    out: str | Path,
    length: int,
    tokens: int,
    lr: float = 3e-4,
    micro_batch: int = 1,
    seed: int = 0,
    quiet: bool = False,
) -> Path:
    """One training phase at seq_len = `length` starting from the extended checkpoint (resumable: a
    re-run continues from out/ckpt). Returns the final checkpoint directory."""
    from .config import Dataset, Phase, TrainConfig
    from .pretrain import pretrain

    cfg = TrainConfig(
        name=Path(out).name,
        out=str(out),
        init_from=str(model_dir),
        phases=[Phase(f"extend-{length}", tokens, [Dataset(str(s)) for s in shards])],
        seq_len=length,
        micro_batch=micro_batch,
        lr=lr,
        warmup_steps=max(1, tokens // (micro_batch * length) // 10),
        eval_every=0,
        eval_tokens=2 * (length + 1),
        save_every=50,
        keep_last=1,
        seed=seed,
    )
    return pretrain(cfg, resume=True, quiet=quiet)


# ---- held-out long documents and the whole `phiforge extend` ---------------------------------------------


def package_text(package: str, exclude: set[Path] = frozenset()) -> str:
    """The .py files of an installed package (stdlib or site-packages) concatenated in path order: long,
    coherent documents. `exclude`: files the model was trained on (they would not be held out)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"held-out package {package!r}: not an installed package")
    root = Path(spec.submodule_search_locations[0])
    files = [p for p in sorted(root.rglob("*.py")) if p.resolve() not in exclude]
    return "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)


def extend(
    model: str | Path,
    out: str | Path,
    length: int,
    heldout: str,
    method: str = "longrope",
    orig: int | None = None,
    sc: SearchConfig | None = None,
    docs: int = 2,
    finetune_tokens: int = 0,
    shards: list[str] = (),
    lr: float = 3e-4,
    log: Callable[[str], None] | None = None,
    search_short: bool = True,
) -> dict:
    """Stretch `model` (a directory, .gguf or short name) to `length` tokens by `method`; LongRoPE searches
    its factors on `heldout` text. Writes out/extended (HF layout + tokenizer) and, with finetune_tokens,
    out/finetune/ckpt/... Returns {"model": final dir, "config": rope fields, "search": ..., ...}."""
    from ..infer.load import load
    from ..model import save_model

    m, tok = load(model, dtype=torch.float32)
    if m.cfg.rope_scaling:
        raise ValueError(f"{model}: already has rope_scaling {m.cfg.rope_kind!r}; extend an unscaled model")
    if tok is None:
        raise ValueError(f"{model}: no tokenizer.json (the held-out text must be tokenized)")
    orig = orig or m.cfg.max_position_embeddings  # unscaled: the context it was made for
    rep: dict = {"method": method, "length": length, "orig": orig, "scale": length / orig}
    if method == "longrope":
        cfg, rep["search"] = search_longrope(m, tok.encode(heldout), length, orig, sc or SearchConfig(), docs,
                                             log=log, search_short=search_short)  # fmt: skip
    else:
        cfg = extended_config(m.cfg, length, orig, method)
    set_rope(m, cfg)
    out = Path(out)
    save_model(m, out / "extended")
    tok.save(out / "extended")
    rep["model"] = str(out / "extended")
    if finetune_tokens:
        if not shards:
            raise ValueError("--finetune-steps needs token shards (--shards) to train on")
        rep["model"] = str(
            finetune(out / "extended", list(shards), out / "finetune", length, finetune_tokens, lr)
        )
    rep["rope_scaling"] = cfg.rope_scaling
    return rep


# ---- the cluster recipe (`phiforge extend --dry-run`) ---------------------------------------------------


def cluster_recipe(
    preset: str = "phi-3-mini-4k",
    length: int = 131072,
    world: int = 64,
    peak_flops: float = 989e12,
    mfu: float = 0.35,
    finetune_tokens: int = 400 * 8 * 131072,
    sc: SearchConfig | None = None,
    docs: int = 5,
    context_parallel: int = 8,
) -> list[str]:
    """What extending `preset` to `length` costs on `world` accelerators, as lines of text. Assumptions, stated
    in the output: the search evaluates population x (generations + 1) candidates, each a forward pass over
    `docs` documents of `length` tokens, candidates spread over the GPUs; the fine-tune is one phase at
    seq_len = length (default 400 steps x 8 sequences, LongRoPE's Llama-2 128k stage), bf16, FSDP and
    activation checkpointing, each sequence split over `context_parallel` GPUs (ring attention)."""
    from ..model import get_preset
    from .config import Dataset, Phase, TrainConfig
    from .pretrain import dry_run

    sc = sc or SearchConfig(population=64, generations=40)
    mc = get_preset(preset)
    orig = mc.original_max_position_embeddings or mc.max_position_embeddings
    cfg = TrainConfig(
        preset=preset,
        model_overrides={"max_position_embeddings": length, "sliding_window": None},
        phases=[Phase("extend", finetune_tokens, [Dataset("-")])],
        seq_len=length,
        micro_batch=1,
        dtype="bf16",
        fsdp=True,
        activation_checkpointing=True,
    )
    r = dry_run(cfg, world=world, peak_flops=peak_flops, mfu=mfu)
    m = r["memory_bytes"]
    per_token = r["flops"] / r["tokens_trained"]  # training FLOPs per token at this length (fwd + bwd)
    evals = sc.population * (sc.generations + 1)
    search_flops = evals * docs * length * per_token / 3  # forward only
    gib, t_search = 2**30, search_flops / (peak_flops * world * mfu)
    states = m["weights"] + m["grads"] + m["adamw"]
    acts = m["activations"] / context_parallel
    seqs = max(1, world // context_parallel)  # sequences per step: each spans context_parallel GPUs
    return [
        f"extend {preset} ({r['params'] / 1e9:.2f}B) from {orig:,} to {length:,} tokens ({length / orig:g}x) "
        f"on {world} GPUs at {peak_flops / 1e12:,.0f} TFLOP/s peak, {mfu:.0%} MFU (assumed)",
        f"1. factor search (LongRoPE): population {sc.population} x {sc.generations + 1} generations = {evals:,} "
        f"candidates x {docs} docs x {length:,} tokens = {evals * docs * length / 1e9:.1f}B tokens forward, "
        f"{search_flops:.2e} FLOPs: {_dur(t_search)}",
        f"2. fine-tune at seq_len {length:,}: {r['tokens_trained'] / 1e9:.2f}B tokens ({r['tokens_trained'] // (seqs * length)} steps "
        f"of {seqs} sequences), {r['flops']:.2e} FLOPs: {_dur(r['seconds_at_mfu'])}",
        f"   memory per GPU: weights + grads + AdamW {states / gib:.1f} GiB (FSDP over {world}), activations "
        f"{acts / gib:.1f} GiB (checkpointed, sequence over {context_parallel} GPUs), total {(states + acts) / gib:.1f} GiB",
        "3. short factors: the same search at the original length (a few % of step 1), then perplexity and "
        "passkey at 4k..128k (`phiforge extend` writes the checkpoint; benchmarks/longctx.py measures it)",
    ]


def _dur(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min"
