"""`phiforge serve` as a user runs it: a subprocess on a free loopback port, queried with the openai client,
stopped with Ctrl-C; and its one-line errors for bad input."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx2 as httpx
import openai
import pytest

from phiforge.cli.serve import serve_cmd

CLI = [sys.executable, "-c", "from phiforge.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_serve_subprocess(random_model_dir):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = CLI + ["serve", "--model", str(random_model_dir), "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/v1/models").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "server did not come up"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        name = random_model_dir.resolve().name
        r = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0
        )
        assert r.model == name and r.usage.completion_tokens <= 8
        assert "<title>phiforge chat</title>" in httpx.get(url + "/").text
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}/" in out  # loopback unless --host says otherwise


def test_serve_bad_input(tmp_path, random_model_dir):
    r = subprocess.run(CLI + ["serve", "--model", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: no model at") and "config.json" in r.stderr
    kw = dict(host="127.0.0.1", port=0, api_key=None, log_level="info")  # in-process: saves a start-up
    with pytest.raises(ValueError, match="--max-batch must be >= 1, got 0"):
        serve_cmd(model=random_model_dir, max_batch=0, **kw)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
        serve_cmd(model=tmp_path, max_batch=1, **kw)
