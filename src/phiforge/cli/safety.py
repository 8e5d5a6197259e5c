"""`phiforge safety pairs`: DPO preference pairs (refuse harmful, help with safe-looking) from the training
side of the safety split; calls phiforge.train.safety_pairs."""

from __future__ import annotations

import json
from pathlib import Path

import typer

safety_app = typer.Typer(help="Safety post-training data.", no_args_is_help=True)


@safety_app.command("pairs")
def pairs_cmd(
    out: Path = typer.Option(
        ..., "--out", help="Folder for pairs.jsonl, pairs.meta.jsonl, split.json, summary.json."
    ),
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="Model (directory, .gguf or short name) whose sampled answers become chosen/rejected.",
    ),
    data: Path = typer.Option(..., "--data", help="Benchmarks folder with safety/ (as shared/benchmarks)."),
    samples: int = typer.Option(4, help="Answers sampled per prompt."),
    max_new_tokens: int = typer.Option(256, help="Tokens per sampled answer."),
    temperature: float = typer.Option(0.8, help="Sampling temperature."),
    seed: int = typer.Option(0, help="Sampling seed."),
    limit: int = typer.Option(None, help="Train prompts per category (default: all of the train split)."),
    device: str = typer.Option("cpu", help="Where the model runs: cpu, cuda, ..."),
):
    """Sample the model on train-split safety prompts, judge refusals offline, write TRL preference rows."""
    import torch

    from ..infer.engine import Engine
    from ..train.safety_pairs import build_pairs

    # batched sampling: a GGUF's int4 blocks would be dequantized on every multi-row forward (infer/quant.py),
    # so dequantize once at load, as the in-process teacher does (a phiforge-quantized dir stays as it is)
    engine = Engine.load(model, device=device, dtype=torch.float32)
    summary = build_pairs(data, out, engine, samples, max_new_tokens, temperature, seed, limit)
    print(json.dumps(summary, indent=1))
    print(f"pairs: {out / 'pairs.jsonl'}")


def register(app: typer.Typer) -> None:
    app.add_typer(safety_app, name="safety")
