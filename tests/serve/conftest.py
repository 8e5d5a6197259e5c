"""Fixtures for the server tests: a tiny random Phi-3 model (tests/conftest.py's model_factory: chaotic
greedy decoding) with a small trained BPE, saved to disk, and a live uvicorn server on a random loopback
port (in a thread of the test process, so tests can look at the batcher's state)."""

from __future__ import annotations

import inspect
import json
import socket
import textwrap
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

from phiforge.infer.engine import Engine
from phiforge.model import get_preset, save_model
from phiforge.tokenizer import train_bpe


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, model_factory):
    path = tmp_path_factory.mktemp("serve-model")
    lines = inspect.getsource(json).splitlines(keepends=True) + inspect.getsource(textwrap).splitlines(True)
    tok = train_bpe(lines, 600, out_dir=path)
    cfg = get_preset("tiny").replace(
        vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=192,
        original_max_position_embeddings=192,
    )  # fmt: skip
    save_model(model_factory(cfg, seed=5), path)
    return path


@contextmanager
def run_server(model_dir, **kw):
    """uvicorn on 127.0.0.1, port chosen by the OS, in a daemon thread; yields base_url + the app."""
    import uvicorn

    from phiforge.serve.app import create_app

    app = create_app(Engine.load(model_dir), "tiny-test", **kw)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", app=app, srv=app.state.server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="session")
def start_server():
    return run_server


@pytest.fixture(scope="module")
def server(model_dir):
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is faster and immune to other jobs on the CPU
    with run_server(model_dir, max_batch=8) as s:
        yield s
    torch.set_num_threads(n)


# Three short documents for `serve --index`; one id carries markup, which the chat page must show as text.
RAG_DOCS = [
    {"id": "shells.txt", "text": "shlex.quote(s) returns a shell-escaped version of the string s."},
    {"id": "zips.txt", "text": "ZipFile.extractall unpacks every member of a ZIP archive."},
    {"id": "<b>bold</b>.txt", "text": "colorsys.rgb_to_hls converts red green blue to hue lightness."},
]


@pytest.fixture(scope="session")
def rag_index(tmp_path_factory):
    """A three-chunk index embedded with the real MiniLM (loaded offline; a few seconds, once)."""
    from phiforge.rag import Index

    idx = Index.create(tmp_path_factory.mktemp("rag") / "idx")
    idx.add(RAG_DOCS, progress=False)
    return idx
