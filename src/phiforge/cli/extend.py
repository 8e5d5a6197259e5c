"""`phiforge extend`: stretch a model's context (LongRoPE search, YaRN, PI) and optionally fine-tune at the
target length (train/longrope.py); --dry-run prints what the same job costs on a cluster."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def extend(
    model: str = typer.Option(None, help="Model: directory (HF layout), .gguf file or short name."),
    length: int = typer.Option(..., help="Target context length in tokens."),
    method: str = typer.Option("longrope", help="longrope (searched factors), yarn or pi."),
    out: Path = typer.Option(Path("runs/extend"), help="Output folder: extended/ (+ finetune/)."),
    orig: int = typer.Option(
        None, help="Length the model was trained at (default: its max_position_embeddings)."
    ),
    heldout: str = typer.Option(
        "email", help="Held-out long text for the search: an installed package's .py files, or a text file."
    ),
    population: int = typer.Option(
        None, help="LongRoPE search: candidates per generation [16; --dry-run 64]."
    ),
    generations: int = typer.Option(
        None, help="LongRoPE search: generations after the first [6; --dry-run 40]."
    ),
    docs: int = typer.Option(2, help="LongRoPE search: windows of --length tokens in the fitness."),
    finetune_steps: int = typer.Option(0, help="Fine-tune steps at --length (1 sequence each); 0: none."),
    shards: list[str] = typer.Option([], help="Token shard folder(s) for the fine-tune. Repeatable."),
    lr: float = typer.Option(3e-4, help="Fine-tune learning rate."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the cluster recipe for --preset; run nothing."
    ),
    preset: str = typer.Option("phi-3-mini-4k", help="--dry-run: the model preset."),
    world: int = typer.Option(64, help="--dry-run: GPUs."),
    peak_flops: float = typer.Option(989e12, help="--dry-run: per-GPU peak FLOP/s (H100 bf16 dense)."),
):
    """Extend a model's context to --length tokens; prints a JSON summary (the model directory last)."""
    from ..train import longrope as lr_

    if dry_run:
        sc = lr_.SearchConfig(population=population or 64, generations=generations or 40)
        print("\n".join(lr_.cluster_recipe(preset, length, world, peak_flops, sc=sc)))
        return
    if model is None:
        raise ValueError("--model is required (or --dry-run)")
    text = Path(heldout).read_text() if Path(heldout).is_file() else lr_.package_text(heldout)
    sc = lr_.SearchConfig(population=population or 16, generations=generations or 6)
    rep = lr_.extend(model, out, length, text, method, orig, sc, docs, finetune_steps * length, shards, lr,
                     log=lambda s: typer.echo(s, err=True))  # fmt: skip
    rep.pop("rope_scaling")
    print(json.dumps(rep, indent=1))


def register(app: typer.Typer) -> None:
    app.command("extend")(extend)
