"""Scaled knowledge transfer (issue 21): the speedrun's `tiny` model grown into `tiny-10m` vs `tiny-10m` from scratch.

    python benchmarks/grow.py --size smoke                 # the plumbing (~2 min with the data stages)
    python benchmarks/grow.py --size default --seeds 0 1   # the measurement in RESULTS.md (1 thread)

Every step leaves files under OUT and is skipped on a re-run with the same settings (stages/*.json):
1. data: the speedrun's own data stages at its smoke budget (tokenizer/, shards/, shards_all/,
   shards_instruct/); an OUT that already holds them (a speedrun run dir) is used as it is;
2. small/: `tiny` trained as the speedrun pretrains it (phase 1 all code, phase 2 the textbook-quality mixture)
   for T0 tokens, seed 0: the small model every seed grows;
3. per seed s: grown-s/ (`phiforge grow` to tiny-10m, noise seed s; its held-out loss at step 0 beside the small
   model's) then N more tokens of the phase-2 mixture; scratch-s/: tiny-10m from random weights on N tokens of
   that mixture; scratch-long-s/: tiny-10m from random weights on the small model's phases + the N tokens (equal
   data to small + grown); same recipe, learning rate and schedule shape everywhere;
4. results.json and the held-out loss curves on one plot (x: tokens after the grow point), HumanEval bits/byte.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import time
from pathlib import Path

import torch

from phiforge.io import pyplot, read_metrics, save_png, write_json

sr = importlib.import_module("phiforge.speedrun.run")  # the package's `run` attribute is the function

SIZES = {  # tokens: T0 (small model: the speedrun smoke budget's 180k) and N (after the grow point); evals every
    # `eval_every` steps of micro_batch x 256 tokens. default: ~22 min on 1 thread of the loaded 2-core VM
    "smoke": dict(small=2048, more=1024, micro_batch=2, eval_every=1, eval_tokens=512, bpb_docs=2),
    "default": dict(
        small=180_000, more=100_000, micro_batch=8, eval_every=10, eval_tokens=4096, bpb_docs=None
    ),
}
BIG = "tiny-10m"


def data(out: Path, st: sr.Stages) -> None:
    if all((out / d / f).is_file() for d, f in [("tokenizer", "tokenizer.json"), ("shards", "index.json"),
                                                  ("shards_all", "index.json"), ("shards_instruct", "index.json")]):  # fmt: skip
        return
    cfg, b = sr.SpeedrunConfig(out=str(out), budget="smoke"), sr.BUDGETS["smoke"]
    key = {"budget": {k: v for k, v in dataclasses.asdict(b).items() if k != "post"}}
    st("data", key, lambda: sr.data_stage(out, b, cfg))
    st("all-code", key, lambda: sr.allcode_stage(out))
    st("instruct", key, lambda: sr.instruct_stage(out))


def phases(out: Path, t0: int, n: int) -> tuple[list, list]:
    """The speedrun's two pretraining phases over t0 tokens, and the phase of n more tokens."""
    from phiforge.train import Dataset, Phase

    mixture = [
        Dataset(str(out / "shards"), 0.7, "quality"),
        Dataset(str(out / "shards_instruct"), 0.3, "instruct"),
    ]
    t1 = int(t0 * sr.BUDGETS["smoke"].phase1_share)
    small = [Phase("phase1-all-code", t1, [Dataset(str(out / "shards_all"), 1.0, "all-code")]),
             Phase("phase2-textbook", t0 - t1, mixture)]  # fmt: skip
    return small, [Phase("more", n, mixture)]


def train(out: Path, arm: str, b: sr.Budget, size: dict, ph: list, seed: int, preset: str, init=None) -> dict:
    from phiforge.train import pretrain

    cfg = sr.train_config(out, out / arm, b, ph, seed)
    cfg.preset, cfg.init_from, cfg.progress = preset, init, False
    cfg.eval_every, cfg.eval_tokens, cfg.save_every = size["eval_every"], size["eval_tokens"], 0
    t = time.perf_counter()
    ckpt = pretrain(cfg, resume=True, quiet=True)
    per = cfg.tokens_per_step()
    curve = [(r["step"] * per, r["val_loss"]["quality"]) for r in read_metrics(out / arm / "metrics.jsonl")
             if r.get("type") == "eval"]  # fmt: skip
    return {"ckpt": str(ckpt), "curve": curve, "seconds": round(time.perf_counter() - t, 1)}


def measure(model_dir: str | Path, out: Path, b: sr.Budget, size: dict) -> dict:
    """Held-out loss on the quality shards' val split (the training curve's windows) and HumanEval bits/byte."""
    from phiforge.eval.tasks.code import humaneval_solutions
    from phiforge.infer.engine import Engine
    from phiforge.infer.score import bits_per_byte

    engine = Engine.load(model_dir)
    docs = humaneval_solutions()[: size["bpb_docs"]]
    bb = dataclasses.replace(b, eval_tokens=size["eval_tokens"])
    return {"val_loss": sr.val_loss(engine, out / "shards", bb), "humaneval_bpb": bits_per_byte(engine, docs),
            "params": engine.model.num_params()}  # fmt: skip


ARMS = ("grown", "scratch", "scratch-long")


def run(out: Path, size_name: str, seeds: list[int], arms=ARMS) -> dict:
    size = SIZES[size_name]
    b = dataclasses.replace(sr.BUDGETS["smoke"], micro_batch=size["micro_batch"])
    out.mkdir(parents=True, exist_ok=True)
    st = sr.Stages(out)
    data(out, st)
    small_ph, more_ph = phases(out, size["small"], size["more"])
    key = {"size": size, "budget": b.preset, "big": BIG}
    small = st("small", key, lambda: arm(out, "small", b, size, small_ph, 0, "tiny"))
    res = {
        "size": size_name,
        "seeds": seeds,
        "T0": size["small"],
        "N": size["more"],
        "small": small,
        "arms": {},
    }
    todo = {
        "grown": lambda s: grown(out, small["ckpt"], b, size, more_ph, s),
        "scratch": lambda s: arm(out, f"scratch-{s}", b, size, more_ph, s),
        "scratch-long": lambda s: arm(out, f"scratch-long-{s}", b, size, small_ph + more_ph, s),
    }
    for s in seeds:
        for name in arms:  # each arm is its own stage: separate invocations may run different arms at once
            res["arms"][f"{name}-{s}"] = st(
                f"{name}-{s}", {**key, "seed": s}, lambda name=name, s=s: todo[name](s)
            )
    return res


def grown(out: Path, small_ckpt: str, b, size, more_ph, seed: int) -> dict:
    from phiforge.model.grow import grow_checkpoint

    init = out / f"grown-{seed}" / "init"
    info = grow_checkpoint(small_ckpt, BIG, init, seed=seed)
    step0 = measure(init, out, b, size)
    r = train(out, f"grown-{seed}", b, size, more_ph, seed, BIG, init=str(init))
    r["curve"] = [(0, step0["val_loss"]), *r["curve"]]
    return {**r, "step0": step0, "max_logit_diff": info["max_logit_diff"], **measure(r["ckpt"], out, b, size)}


def arm(out: Path, name: str, b, size, ph, seed, preset=BIG) -> dict:
    r = train(out, name, b, size, ph, seed, preset)
    return {**r, **measure(r["ckpt"], out, b, size)}


def plot(res: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    t0 = res["T0"]
    xs, ys = zip(*res["small"]["curve"], strict=True)
    ax.plot(
        [x - t0 for x in xs], ys, "k.-", label=f"tiny ({res['small']['params'] / 1e6:.1f}M), the small model"
    )
    colors = {"grown": "#3b7dd8", "scratch": "#e0883a", "scratch-long": "#999"}
    labels = {"grown": f"{BIG} grown from it", "scratch": f"{BIG} from scratch, same N tokens",
              "scratch-long": f"{BIG} from scratch, T0 + N tokens"}  # fmt: skip
    for name, r in res["arms"].items():
        kind, seed = name.rsplit("-", 1)
        xs, ys = zip(*r["curve"], strict=True)
        shift = -t0 if kind == "scratch-long" else 0
        style = "-" if seed == str(res["seeds"][0]) else "--"
        ax.plot([x + shift for x in xs], ys, style, marker=".", color=colors[kind],
                label=f"{labels[kind]} (seed {seed})")  # fmt: skip
    ax.axvline(0, color="#ccc", lw=1)
    ax.set_xlabel(f"tokens trained, relative to the grow point (T0 = {t0:,} tokens before it)")
    ax.set_ylabel("held-out loss (quality code, nats/token)")
    ax.set_title(f"Scaled knowledge transfer: tiny -> {BIG} ({res['size']}, 1 thread)")
    ax.legend(fontsize=7)
    save_png(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=SIZES, default="default")
    ap.add_argument("--out", type=Path, default=None, help="Run dir (default runs/grow-SIZE).")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    ap.add_argument("--plot", type=Path, default=None, help="PNG path (default OUT/grow.png).")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    torch.set_num_threads(a.threads)
    out = a.out or Path(f"runs/grow-{a.size}")
    t = time.perf_counter()
    res = run(out, a.size, a.seeds, a.arms)
    res["seconds"] = round(time.perf_counter() - t)
    write_json(out / "results.json", res)
    plot(res, a.plot or out / "grow.png")
    print(summary(res))


def summary(res: dict) -> str:
    s = res["small"]
    lines = [
        f"small tiny: val loss {s['val_loss']:.4f}, HumanEval bpb {s['humaneval_bpb']:.4f} ({res['T0']:,} tokens)"
    ]
    for name, r in res["arms"].items():
        extra = f"; step 0 {r['step0']['val_loss']:.4f}" if "step0" in r else ""
        lines.append(f"{name}: val loss {r['val_loss']:.4f}, HumanEval bpb {r['humaneval_bpb']:.4f}, "
                     f"{r['seconds']:.0f} s{extra}")  # fmt: skip
    return "\n".join(lines + [f"{res.get('seconds', 0)} s in all"])


if __name__ == "__main__":
    main()
