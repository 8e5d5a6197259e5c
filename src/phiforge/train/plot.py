"""`phiforge plot RUN`: loss (train + per-dataset validation), learning-rate and, for DPO, reward PNGs from
metrics.jsonl."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_metrics(run: str | Path) -> tuple[list[dict], list[dict]]:
    path = Path(run) / "metrics.jsonl" if Path(run).is_dir() else Path(run)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl (not a training run directory?)")
    train, evals = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        (evals if row.get("type") == "eval" else train).append(row)
    if not train:
        raise ValueError(f"{path}: no training steps logged yet")
    return train, evals


def plot_run(run: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write loss.png and lr.png (into RUN/plots by default); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = read_metrics(run)
    run = Path(run) if Path(run).is_dir() else Path(run).parent
    out = Path(out) if out else run / "plots"
    out.mkdir(parents=True, exist_ok=True)
    steps = [r["step"] for r in train]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["loss"] for r in train], lw=1, alpha=0.8, label="train")
    names = sorted({k for e in evals for k in e["val_loss"]})
    for name in names:
        pts = [(e["step"], e["val_loss"][name]) for e in evals if name in e["val_loss"]]
        ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=f"val {name}")
    for a, b in zip(train, train[1:], strict=False):  # phase boundaries
        if a["phase"] != b["phase"]:
            ax.axvline(a["step"], color="gray", ls=":", lw=1)
    ax.set(xlabel="step", ylabel="loss (nats/token)", title=f"{run.name}: loss")
    ax.legend()
    paths = [_save(fig, out / "loss.png")]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(steps, [r["lr"] for r in train])
    ax.set(xlabel="step", ylabel="learning rate", title=f"{run.name}: learning rate")
    paths.append(_save(fig, out / "lr.png"))
    dpo = [r for r in train if "rewards/chosen" in r]
    if dpo:  # preference phases: TRL's reward curves, and how often the chosen answer wins
        fig, (ax, acc) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
        x = [r["step"] for r in dpo]
        for k in ("chosen", "rejected", "margins"):
            ax.plot(x, [r[f"rewards/{k}"] for r in dpo], lw=1, label=k)
        ax.axhline(0, color="gray", lw=0.5)
        ax.set(ylabel="reward (beta * log-ratio)", title=f"{run.name}: DPO rewards")
        ax.legend()
        acc.plot(x, [r["rewards/accuracies"] for r in dpo], lw=1)
        acc.set(xlabel="step", ylabel="rewards/accuracies", ylim=(-0.02, 1.02))
        paths.append(_save(fig, out / "rewards.png"))
    plt.close("all")
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path
