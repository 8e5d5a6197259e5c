"""`phiforge serve`: the OpenAI-compatible server and chat page (phiforge.serve.app)."""

from __future__ import annotations

from pathlib import Path

import typer


def serve_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="Model directory (Hugging Face layout, with tokenizer.json)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind. The default is loopback only; 0.0.0.0 exposes the server to the network."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: str = typer.Option(None, "--api-key", envvar="PHIFORGE_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1/* (the chat page has a field for it)."),
    max_batch: int = typer.Option(16, help="Most requests decoded together; more wait in a queue and join between decode steps."),
    log_level: str = typer.Option("info", help="uvicorn log level (debug, info, warning, error)."),
):  # fmt: skip
    """Serve a model over OpenAI's API (/v1/models, /v1/completions, /v1/chat/completions, streaming
    included) with continuous batching, plus a chat page at http://HOST:PORT/."""
    from ..serve.app import serve

    if not (model / "config.json").is_file():
        raise FileNotFoundError(f"no model at {model} (config.json not found)")
    if not (model / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{model} has no tokenizer.json; the server needs a tokenizer")
    if max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {max_batch}")
    print(f"phiforge: serving {model} on http://{host}:{port}/ (chat page) and http://{host}:{port}/v1")
    serve(model, host=host, port=port, api_key=api_key, max_batch=max_batch, log_level=log_level)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
