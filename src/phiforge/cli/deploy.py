"""`phiforge quantize` and `phiforge export gguf`: deployment formats for a trained model."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import typer

export_app = typer.Typer(help="Export a model to other runtimes' formats.", no_args_is_help=True)


@contextmanager
def _bar(what: str):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    cols = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*cols, console=Console(stderr=True), transient=True) as prog:
        task = prog.add_task(what, total=None)
        yield lambda done, total: prog.update(task, completed=done, total=total)


def _size(path: Path) -> str:
    n = sum(f.stat().st_size for f in ([path] if path.is_file() else path.iterdir()) if f.is_file())
    return f"{n / 1e6:.1f} MB"


def quantize_cmd(
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="fp32/bf16 model: a directory, a .gguf file (dequantized first) or a short name.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory for the quantized checkpoint."),
    bits: int = typer.Option(4, help="4 or 8: weight bits of every linear layer (lm_head included)."),
    group_size: int = typer.Option(
        128,
        help="Weights sharing one fp16 scale + min: 32, 64 or 128 (smaller = more accurate, larger file).",
    ),
):
    """Weight-only int8/int4 quantization (group-wise, asymmetric); the result loads in generate, chat
    and serve like any model directory. Embeddings are int8, norms fp32."""
    from ..infer.quant import quantize_checkpoint

    with _bar(f"quantizing to int{bits} g{group_size}") as progress:
        quantize_checkpoint(model, out, bits, group_size, progress)
    from ..infer.load import resolve

    src = _size(resolve(model))
    print(f"wrote {out} ({_size(out / 'model.safetensors')} weights; source {src})", file=sys.stderr)


@export_app.command("gguf")
def gguf_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="Phi-3 model directory (with tokenizer.json)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .gguf file."),
    type_: str = typer.Option(
        "f16", "--type", "-t", help="f16, q8_0 or q4_0 (q4_0 keeps token_embd in q8_0; norms stay f32)."
    ),
):
    """GGUF for llama.cpp / llama-cpp-python / ollama (Phi-3 architecture, tokenizer and chat template included)."""
    from ..infer.gguf_export import export_gguf

    with _bar(f"writing {type_} GGUF") as progress:
        export_gguf(model, out, type_.lower(), progress)
    print(f"wrote {out} ({_size(out)})", file=sys.stderr)


def convert_cmd(
    gguf_file: Path = typer.Argument(..., help="A .gguf file (llama.cpp; architectures llama and phi3)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (Hugging Face layout)."),
):
    """GGUF -> Hugging Face layout: fp32 safetensors (quantized blocks dequantized), config.json, tokenizer.json
    (rebuilt from the GGUF vocabulary, chat template included); transformers and every phiforge command load it."""
    from ..infer.gguf_import import convert_gguf
    from ..infer.load import resolve

    path = resolve(gguf_file)
    if not path.is_file() or path.suffix != ".gguf":
        raise ValueError(f"{gguf_file}: not a .gguf file")
    convert_gguf(path, out)
    print(f"wrote {out} ({_size(out)})", file=sys.stderr)


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize_cmd)
    app.command("convert")(convert_cmd)
    app.add_typer(export_app, name="export")
