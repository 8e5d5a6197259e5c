"""`phiforge serve`: the OpenAI-compatible server and chat page (phiforge.serve.app)."""

from __future__ import annotations

import typer

from .infer import MODEL_HELP


def serve_cmd(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    host: str = typer.Option("127.0.0.1", help="Address to bind. The default is loopback only; 0.0.0.0 exposes the server to the network."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: str = typer.Option(None, "--api-key", envvar="PHIFORGE_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1/* (the chat page has a field for it)."),
    max_batch: int = typer.Option(16, help="Most requests decoded together; more wait in a queue and join between decode steps."),
    log_level: str = typer.Option("info", help="uvicorn log level (debug, info, warning, error)."),
    index: str = typer.Option(None, "--index", help="Answer chat requests with retrieval from this index (phiforge rag index); replies carry a 'sources' field and the chat page lists them."),
):  # fmt: skip
    """Serve a model over OpenAI's API (/v1/models, /v1/completions, /v1/chat/completions, streaming
    included) with continuous batching, plus a chat page at http://HOST:PORT/."""
    from ..infer.load import resolve
    from ..serve.app import serve

    path = resolve(model)  # a missing file or an uninstalled short name fails here, before the model loads
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model at {path} (config.json not found)")
    if path.is_dir() and not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path} has no tokenizer.json; the server needs a tokenizer")
    if max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {max_batch}")
    print(f"phiforge: serving {model} on http://{host}:{port}/ (chat page) and http://{host}:{port}/v1")
    serve(model, host=host, port=port, api_key=api_key, max_batch=max_batch, log_level=log_level, index=index)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
