"""`phiforge generate` and `phiforge chat`: a model through phiforge.infer's engine."""

from __future__ import annotations

import sys

import typer

# every command that takes a model takes all three kinds (infer/load.py resolves them): a str, not a Path
# with exists=True, so that a short name gets through to the one loader
MODEL_HELP = (
    "Model: a directory (Hugging Face layout, fp or `phiforge quantize`d), a .gguf file, or a short name "
    "(smollm2-135m-instruct)."
)


def _params(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop):
    from ..infer.sampling import SamplingParams

    return SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
        stop=list(stop or []),
    )


_MODEL = typer.Option(..., "--model", "-m", help=MODEL_HELP)
_MAXNEW = typer.Option(256, help="Maximum number of new tokens.")
_TEMP = typer.Option(0.0, help="Sampling temperature; 0 = greedy.")
_TOPK = typer.Option(0, help="Keep the k most likely tokens (0 = off).")
_TOPP = typer.Option(1.0, help="Nucleus sampling mass (1 = off).")
_REP = typer.Option(1.0, help="Repetition penalty (1 = off; 1.1-1.3 typical).")
_SEED = typer.Option(None, help="Random seed for sampling (same seed, same output).")
_STOP = typer.Option(None, help="Stop string (repeatable).")


def generate(
    model: str = _MODEL,
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
    from ..infer.engine import Engine

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


def chat(
    model: str = _MODEL,
    system: str = typer.Option(None, help="System message."),
    max_new_tokens: int = _MAXNEW,
    temperature: float = typer.Option(0.7, help="Sampling temperature; 0 = greedy."),
    top_k: int = _TOPK,
    top_p: float = typer.Option(0.95, help="Nucleus sampling mass (1 = off)."),
    repetition_penalty: float = _REP,
    seed: int = _SEED,
):
    """Interactive multi-turn chat through the model's own chat template (Phi-3's, SmolLM2's ChatML, ...).
    /reset clears, /exit quits."""
    from ..infer.engine import Engine

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


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("chat")(chat)
