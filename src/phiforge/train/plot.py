"""Loss and learning-rate curves from metrics.jsonl: `phiforge plot RUN` and the speedrun report draw them here;
DPO runs also get their reward curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import pyplot, read_metrics, save_png


def plot_training(
    runs: dict[str, list[dict]], path: Path, lr_path: Path | None = None, dpi: int = 90
) -> None:
    """Train loss (smoothed) and val loss against tokens, one colour per run, one line style per phase.

    The learning rate goes in a second panel of the same PNG, or in its own PNG when `lr_path` is given.
    """
    plt = pyplot()
    if lr_path is None:
        fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(13, 4.2))
        figs = [(fig, path)]
    else:
        fig, ax = plt.subplots(figsize=(7, 4))
        fig_lr, ax_lr = plt.subplots(figsize=(7, 3))
        figs = [(fig, path), (fig_lr, lr_path)]
    for i, (name, rows) in enumerate(runs.items()):
        color = f"C{i}"
        train = [r for r in rows if r.get("type") == "train"]
        if not train:
            continue
        for j, phase in enumerate(dict.fromkeys(r["phase"] for r in train)):
            pr = [r for r in train if r["phase"] == phase]
            x = np.array([r["tokens"] for r in pr], dtype=float)
            y = np.array([r["loss"] for r in pr])
            k = max(1, len(y) // 30)  # smooth over ~1/30 of the phase: the trend, not the batch noise
            ys = np.convolve(y, np.ones(k) / k, mode="valid") if len(y) > k else y
            ax.plot(
                x[len(x) - len(ys) :], ys, color=color, ls=("-", "--", ":")[j % 3], label=f"{name}: {phase}"
            )
        ax_lr.plot([r["tokens"] for r in train], [r["lr"] for r in train], color=color, label=name)
        steps = {r["step"]: r["tokens"] for r in train}
        evals = [r for r in rows if r.get("type") == "eval"]
        for ds in dict.fromkeys(k for r in evals for k in r["val_loss"]):
            pts = [(steps.get(r["step"]), r["val_loss"][ds]) for r in evals if ds in r["val_loss"]]
            pts = [p for p in pts if p[0] is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), "o", color=color, ms=4, alpha=0.7)
    ax.set(xlabel="tokens (within the run)", ylabel="loss (nats/token)")
    ax.set_title("training loss (lines) and validation loss (dots)")
    ax.legend(fontsize=8)
    ax_lr.set(xlabel="tokens", ylabel="learning rate", title="learning rate")
    ax_lr.legend(fontsize=8)
    for f, p in figs:
        save_png(f, p, dpi)


def plot_run(run: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write loss.png and lr.png (and rewards.png for DPO) of one training run (into RUN/plots by default);
    returns their paths."""
    run = Path(run)
    path = run / "metrics.jsonl" if run.is_dir() else run
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl (not a training run directory?)")
    rows = read_metrics(path)
    if not any(r.get("type") == "train" for r in rows):
        raise ValueError(f"{path}: no training steps logged yet")
    out = Path(out) if out else path.parent / "plots"
    paths = [out / "loss.png", out / "lr.png"]
    plot_training({path.parent.name: rows}, *paths, dpi=110)
    dpo = [r for r in rows if r.get("type") == "train" and "rewards/chosen" in r]
    if dpo:
        paths.append(plot_rewards(dpo, out / "rewards.png", title=path.parent.name, dpi=110))
    return paths


def plot_rewards(rows: list[dict], path: Path, title: str = "", dpi: int = 90) -> Path:
    """DPO's reward curves (TRL's names): chosen, rejected and margin rewards, and how often chosen wins."""
    fig, (ax, acc) = pyplot().subplots(2, 1, figsize=(7, 6), sharex=True)
    x = [r["step"] for r in rows]
    for k in ("chosen", "rejected", "margins"):
        ax.plot(x, [r[f"rewards/{k}"] for r in rows], lw=1, label=k)
    ax.axhline(0, color="gray", lw=0.5)
    ax.set(ylabel="reward (beta * log-ratio)", title=f"{title}: DPO rewards")
    ax.legend()
    acc.plot(x, [r["rewards/accuracies"] for r in rows], lw=1)
    acc.set(xlabel="step", ylabel="rewards/accuracies", ylim=(-0.02, 1.02))
    return save_png(fig, path, dpi)
