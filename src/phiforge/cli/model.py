"""`phiforge info`: a preset's or a model directory's parameters and weight memory; `phiforge grow`: a trained
model grown into a bigger preset (phiforge.model)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return ""


def _config(spec: str):
    """A model's config without its weights (a GGUF's from its metadata)."""
    from ..infer.load import resolve
    from ..model import load_config

    path = resolve(spec)
    if path.is_dir():
        return load_config(path)
    from ..infer.gguf_import import read_gguf
    from ..model.hf import config_from_hf

    return config_from_hf(read_gguf(path)[0], str(path))


def info(
    preset: str = typer.Option(None, help="A preset name (see `phiforge info --list`)."),
    model: str = typer.Option(None, help="A model: directory (HF layout), .gguf file or short name."),
    group_size: int = typer.Option(128, help="Quantization group size for the int8/int4 estimates."),
    bits: int = typer.Option(
        None, help="4 or 8: break the quantized size down by part (phiforge quantize's format)."
    ),
    list_presets: bool = typer.Option(False, "--list", help="List the presets and exit."),
):
    """Parameters and weight memory at fp32/bf16/int8/int4, built on the meta device (nothing allocated)."""
    from rich.console import Console
    from rich.table import Column, Table

    from ..model import PRESETS, build, get_preset, memory_table

    console = Console(width=None if sys.stdout.isatty() else 120)  # pipes: no truncated cells
    if list_presets or (preset is None and model is None):
        heads = ("preset", "arch", "layers", "hidden", "heads", "kv", "vocab", "context", "params")
        table = Table(*(Column(h, no_wrap=True) for h in heads))  # never truncate what users type
        for name, c in PRESETS.items():
            n = c.num_params()
            size = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
            row = (
                name,
                c.arch,
                c.num_hidden_layers,
                c.hidden_size,
                c.num_attention_heads,
                c.num_key_value_heads,
                c.vocab_size,
                c.max_position_embeddings,
                size,
            )
            table.add_row(*map(str, row))
        console.print(table)
        return
    cfg = _config(model) if model else get_preset(preset)
    n = build(cfg, device="meta").num_params()
    table = Table(title=f"{model or preset} ({cfg.arch}): {n:,} parameters", show_header=True)
    table.add_column("precision")
    table.add_column("weights", justify="right")
    for k, v in memory_table(cfg, group_size).items():
        table.add_row(k if "int" not in k else f"{k} (g{group_size}, weight-only)", _fmt_bytes(v))
    console.print(table)
    if bits is not None:
        from ..model.config import quantized_bytes

        if bits not in (4, 8):
            raise ValueError(f"--bits must be 4 or 8, got {bits}")
        parts = quantized_bytes(cfg, bits, group_size)
        detail = Table(
            title=f"int{bits} g{group_size} (phiforge quantize): {_fmt_bytes(sum(parts.values()))}"
        )
        detail.add_column("part")
        detail.add_column("bytes", justify="right")
        for k, v in parts.items():
            detail.add_row(k, _fmt_bytes(v))
        console.print(detail)
        console.print(
            "Published 4-bit Phi-3-mini figures (~1.8 GB) count the transformer blocks' weights at 4 bits only; "
            "here each group of weights also carries an fp16 scale and min, lm_head is quantized like the "
            "blocks and the embedding table is int8."
        )
    console.print(
        f"layers {cfg.num_hidden_layers}, hidden {cfg.hidden_size}, intermediate {cfg.intermediate_size}, "
        f"heads {cfg.num_attention_heads}/{cfg.num_key_value_heads} kv, head_dim {cfg.head_dim}, "
        f"rotary dim {cfg.rotary_dim}, vocab {cfg.vocab_size}, context {cfg.max_position_embeddings}"
        + (f" (longrope from {cfg.original_max_position_embeddings})" if cfg.rope_scaling else "")
    )


def grow(
    model: str = typer.Option(..., "--model", "-m", help="The trained small model: a directory (HF layout)."),
    preset: str = typer.Option(
        ..., help="The bigger preset of the same family (see `phiforge info --list`)."
    ),
    out: Path = typer.Option(
        ..., help="Directory for the grown checkpoint (HF layout + the small tokenizer)."
    ),
    noise: float = typer.Option(
        0.1, help="Symmetry-breaking noise on split weights, in stds of each tensor."
    ),
    seed: int = typer.Option(0, help="Seed of that noise."),
):
    """Grow a trained model into a bigger preset, function-preserving (Net2Net widths, identity blocks): the
    grown model starts at the small model's loss; train it with a recipe's `init_from: OUT`."""
    from ..infer.load import resolve
    from ..model.grow import grow_checkpoint

    path = resolve(model)
    if not path.is_dir():
        raise ValueError(
            f"{path}: grow reads an HF-layout directory (convert a .gguf with `phiforge convert`)"
        )
    info = grow_checkpoint(path, preset, out, noise=noise, seed=seed)
    print(
        f"{out}: {info['small_params'] / 1e6:.2f}M -> {info['params'] / 1e6:.2f}M params ({preset}); "
        f"max |logit difference| from the small model on a probe batch: {info['max_logit_diff']:.2e}"
    )


def register(app: typer.Typer) -> None:
    app.command("info")(info)
    app.command("grow")(grow)
