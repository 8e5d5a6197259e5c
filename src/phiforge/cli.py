"""The `phiforge` command line: a thin typer app, one subcommand per stage, each calling a library function.

Bad input (missing files, bad config fields, over-long prompts) ends with one line on stderr and exit
code 1; `phiforge --debug ...` shows the traceback instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

app = typer.Typer(
    help="phiforge: raw corpus -> textbook-quality data -> Phi model -> eval -> quantized model you can chat with.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_state = {"debug": False}


def _add_subapps() -> None:
    # each stage's commands live in their own module; the main job first in --help
    from . import cli_data, cli_deploy, cli_eval, cli_rag, cli_serve, cli_speedrun, cli_train

    for mod in (cli_speedrun, cli_train, cli_eval, cli_deploy, cli_serve, cli_rag):
        mod.register(app)
    app.add_typer(cli_data.app, name="data")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    _state["debug"] = debug


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return ""


@app.command()
def info(
    preset: str = typer.Option(None, help="A preset name (see `phiforge info --list`)."),
    model: Path = typer.Option(None, help="A model directory in Hugging Face layout."),
    group_size: int = typer.Option(128, help="Quantization group size for the int8/int4 estimates."),
    bits: int = typer.Option(
        None, help="4 or 8: break the quantized size down by part (phiforge quantize's format)."
    ),
    list_presets: bool = typer.Option(False, "--list", help="List the presets and exit."),
):
    """Parameters and weight memory at fp32/bf16/int8/int4, built on the meta device (nothing allocated)."""
    from rich.console import Console
    from rich.table import Column, Table

    from .model import PRESETS, build, get_preset, load_config, memory_table

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
    cfg = load_config(model) if model else get_preset(preset)
    n = build(cfg, device="meta").num_params()
    table = Table(title=f"{model or preset} ({cfg.arch}): {n:,} parameters", show_header=True)
    table.add_column("precision")
    table.add_column("weights", justify="right")
    for k, v in memory_table(cfg, group_size).items():
        table.add_row(k if "int" not in k else f"{k} (g{group_size}, weight-only)", _fmt_bytes(v))
    console.print(table)
    if bits is not None:
        from .model.config import quantized_bytes

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


def _params(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop):
    from .infer.sampling import SamplingParams

    return SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
        stop=list(stop or []),
    )


_MODEL = typer.Option(
    ..., "--model", "-m", help="Model directory (Hugging Face layout, with tokenizer.json)."
)
_MAXNEW = typer.Option(256, help="Maximum number of new tokens.")
_TEMP = typer.Option(0.0, help="Sampling temperature; 0 = greedy.")
_TOPK = typer.Option(0, help="Keep the k most likely tokens (0 = off).")
_TOPP = typer.Option(1.0, help="Nucleus sampling mass (1 = off).")
_REP = typer.Option(1.0, help="Repetition penalty (1 = off; 1.1-1.3 typical).")
_SEED = typer.Option(None, help="Random seed for sampling (same seed, same output).")
_STOP = typer.Option(None, help="Stop string (repeatable).")


@app.command()
def generate(
    model: Path = _MODEL,
    prompt: str = typer.Option(
        ..., "--prompt", "-p", help="Prompt text (plain completion, no chat template)."
    ),
    max_new_tokens: int = _MAXNEW,
    temperature: float = _TEMP,
    top_k: int = _TOPK,
    top_p: float = _TOPP,
    repetition_penalty: float = _REP,
    seed: int = _SEED,
    stop: list[str] = _STOP,
):
    """Complete a prompt, streaming tokens to stdout; speed goes to stderr."""
    from .infer.engine import Engine

    params = _params(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop)
    engine = Engine.load(model)
    sys.stdout.write(prompt)
    res = engine.complete(prompt, params, on_text=lambda t: (sys.stdout.write(t), sys.stdout.flush()))
    sys.stdout.write("\n")
    print(
        f"[{len(res.tokens)} tokens, prefill {res.prompt_tokens / max(res.prefill_s, 1e-9):.0f} tok/s, "
        f"decode {res.decode_tps:.1f} tok/s, finish: {res.finish_reason}]",
        file=sys.stderr,
    )


@app.command()
def chat(
    model: Path = _MODEL,
    system: str = typer.Option(None, help="System message."),
    max_new_tokens: int = _MAXNEW,
    temperature: float = typer.Option(0.7, help="Sampling temperature; 0 = greedy."),
    top_k: int = _TOPK,
    top_p: float = typer.Option(0.95, help="Nucleus sampling mass (1 = off)."),
    repetition_penalty: float = _REP,
    seed: int = _SEED,
):
    """Interactive multi-turn chat through the Phi-3 chat template. /reset clears, /exit quits."""
    from .infer.engine import Engine

    params = _params(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, None)
    engine = Engine.load(model)
    base = [{"role": "system", "content": system}] if system else []
    messages = list(base)
    print("phiforge chat: /reset to start over, /exit to quit", file=sys.stderr)
    while True:
        try:
            line = input(">>> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if line.strip() in ("/exit", "/quit"):
            return
        if line.strip() == "/reset":
            messages = list(base)
            print("[conversation reset]", file=sys.stderr)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        res = engine.chat(messages, params, on_text=lambda t: (sys.stdout.write(t), sys.stdout.flush()))
        messages.append({"role": "assistant", "content": res.text})
        print()
        print(f"[{len(res.tokens)} tokens, {res.decode_tps:.1f} tok/s]", file=sys.stderr)


_add_subapps()


def main() -> None:
    try:
        app(standalone_mode=False)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 — every failure becomes one line unless --debug
        import click

        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        if _state["debug"]:
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
