"""Fixtures every test folder shares: a scaled random-weights model factory, one random model directory, one
small trained model, the token shards the training tests use, `phiforge` run as a user runs it, and
`teacher_server`, a scripted OpenAI-compatible endpoint on 127.0.0.1 that the teacher client
(tests/test_teacher.py) and annotation (tests/data/test_annotate.py) talk to over real HTTP.

Session-scoped where they cost seconds, so each is built once per `pytest` run. Helpers are fixtures, not
`from conftest import ...`: with several test folders, the module named "conftest" at run time is whichever
folder's was imported last.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest-xdist worker per core: one thread each, in torch, in the native kernels'
    # OpenMP and in the phiforge subprocesses (inherited), or two-thread pools wait on descheduled peers
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

from phiforge.model import build, get_preset, save_model
from phiforge.tokenizer import train_bpe
from train_helpers import VOCAB, _texts, write_shards


@torch.no_grad()
def make_model(cfg, seed: int = 0, scale: float = 5.0):
    """Random weights: matrices std 0.02 * scale, random norm weights and biases, so greedy decoding is
    chaotic, not stuck on one token (batched-vs-alone equality over many steps then means something)."""
    m = build(cfg, seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    for name, p in m.named_parameters():
        if p.dim() == 1:
            noise = torch.randn(p.shape, generator=g) * 0.1
            p.copy_((1.0 + noise) if "norm" in name and name.endswith("weight") else noise * 0.2)
        else:
            p.mul_(scale)
    return m


@pytest.fixture(scope="session")
def model_factory():
    return make_model


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory):
    """A tiny random Phi-3 (context 64) with a 400-token BPE, in Hugging Face layout."""
    d = tmp_path_factory.mktemp("random-model")
    tok = train_bpe([inspect.getsource(json.decoder), inspect.getsource(subprocess)], vocab_size=400)
    cfg = get_preset("tiny").replace(
        vocab_size=tok.vocab_size, max_position_embeddings=64, eos_token_id=tok.eos_id
    )
    save_model(build(cfg, seed=0), d)
    tok.save(d)
    return d


def _local_python_files(max_bytes: int) -> dict:
    """The stdlib's source files, in the corpus's deterministic order, up to max_bytes: {path: text}."""
    from phiforge.data.sources import list_python_files, read_source

    files = ((p, read_source(p)[0]) for _, _, p in list_python_files(max_bytes, origins=("stdlib",)))
    return {p: t for p, t in files if t}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(model dir, held-out text): a tiny Phi-3 trained 200 steps on local Python code, for tests where
    perplexity and greedy comparisons must mean something (quantization, GGUF). Steps, not seconds, so a
    busy machine gets the same model (about 15 s on 2 quiet cores). Under pytest-xdist the workers share one
    copy: the first builds it in this run's shared temp folder under a file lock, the others load it."""
    train = _local_python_files(1_000_000)
    held = [t for p, t in _local_python_files(1_300_000).items() if p not in train]  # never seen in training
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _train_tiny(train, tmp_path_factory.mktemp("trained")), "\n".join(held)
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # this run's folder, above every worker's own
    with FileLock(str(shared / "trained.lock")):
        if not (shared / "trained" / "config.json").is_file():
            _train_tiny(train, shared / "trained.tmp")
            (shared / "trained.tmp").rename(shared / "trained")
    return shared / "trained", "\n".join(held)


def _train_tiny(train: dict, ckpt):
    torch.manual_seed(0)
    texts = list(train.values())
    tok = train_bpe(texts, vocab_size=1024)
    ids = torch.tensor([t for text in texts for t in tok.encode(text) + [tok.eos_id]])
    cfg = get_preset("tiny").replace(
        vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id, bos_token_id=None
    )
    model = build(cfg, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    steps, batch, seq = 200, 8, 128
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = (
                5e-3 * min(1.0, (step + 1) / 20) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))
            )
        starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=g)
        x = torch.stack([ids[s : s + seq + 1] for s in starts])
        loss = model(x[:, :-1], targets=x[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    save_model(model.eval(), ckpt)
    tok.save(ckpt)
    return ckpt


@pytest.fixture(scope="session")
def train_data(tmp_path_factory):
    """{"tok": tokenizer dir, "a": shards dir, "b": shards dir}: two corpora, one tokenizer (train_helpers.py)."""
    root = tmp_path_factory.mktemp("traindata")
    a, b = _texts("[a-j]*.py", 30), _texts("[k-z]*.py", 30)
    tok = train_bpe(a + b, vocab_size=VOCAB, out_dir=root / "tok")
    return {
        "tok": root / "tok",
        "a": write_shards(root / "code_a", tok, a),
        "b": write_shards(root / "code_b", tok, b),
    }


def _phiforge_subprocess(
    *args: str, stdin: str | None = None, timeout: int = 120
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "phiforge.cli", *map(str, args)]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)


def _phiforge(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`phiforge.cli.main()` in this process, as `python -m phiforge.cli` runs it: argv, stdin, stdout and
    stderr swapped, the exit code read from SystemExit, an escaping exception printed as the interpreter
    would. In process because each subprocess paid 2-3 s of `import torch` (50 calls in `make test-fast`)."""
    import contextlib
    import io
    import traceback
    from unittest import mock

    from phiforge import cli

    argv = ["phiforge", *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    rc = 0
    with (
        mock.patch.object(sys, "argv", argv),
        mock.patch.object(sys, "stdin", io.StringIO(stdin or "")),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            cli.main()
        except SystemExit as e:
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
            rc = 1 if isinstance(e.code, str) else (e.code or 0)
        except Exception:  # noqa: BLE001 -- what the interpreter does with an uncaught one (`--debug`)
            traceback.print_exc()
            rc = 1
        finally:
            cli._state["debug"] = False
    return subprocess.CompletedProcess(argv, rc, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def phiforge():
    """The command line, run in this process: phiforge(*args, stdin=None) -> CompletedProcess."""
    return _phiforge


@pytest.fixture(scope="session")
def phiforge_subprocess():
    """The command line in a subprocess (the real entry point): phiforge_subprocess(*args) -> CompletedProcess."""
    return _phiforge_subprocess


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0]


@pytest.fixture(scope="session")
def one_line_error():
    """Asserts exit code 1 and exactly one 'error: ...' line on stderr containing every needle."""
    return _one_line_error


# ---- teacher endpoint -------------------------------------------------------------------------------


class FakeTeacher:
    """POST /v1/chat/completions and /v1/completions. The answer is read from the prompt: a document containing
    SCORE=<n> gets "Score: <n>", one containing MALFORMED gets chatter with no score, one containing RATING=<n>
    gets "Rating: [[<n>]]" for the last such n (MT-bench), anything else 3.

    Logprobs: a prompt containing P={"tok": prob, ...} makes the first answer token the likeliest of those,
    with all of them as its top_logprobs (the G-Eval / Ask-LLM position); without one the first token is
    chatter ("The"). `ignore_prefill` makes the server answer as if it had not seen the assistant prefill:
    "Score", ":" come first, then that position.

    Scripting: `failures` are statuses returned (in order) before answering normally; `status` is returned for
    every request (the endpoint is down); `ok_budget` answers that many requests, then 503s; `delay` sleeps
    before answering; `raw` replaces the answer with any body (a url that is not an OpenAI endpoint);
    `script(prompt) -> text` replaces the answer text (the synthetic-data teacher).
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.log: list[tuple[str, int]] = []  # (prompt, status answered)
        self.bodies: list[dict] = []
        self.auth: list[str] = []
        self.in_flight = self.max_in_flight = 0
        self.failures: list[int] = []
        self.status: int | None = None
        self.ok_budget: int | None = None
        self.delay = 0.0
        self.ignore_prefill = False
        self.raw: tuple[str, bytes] | None = None  # (content type, body) sent with a 200 instead of an answer
        self.script = None  # prompt -> answer text
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    @property
    def prompts(self) -> list[str]:
        return [p for p, _ in self.log]

    def decide(self, prompt: str, body: dict, auth: str) -> int:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.status is not None:
                status = self.status
            elif self.failures:
                status = self.failures.pop(0)
            elif self.ok_budget is not None:
                status = 200 if self.ok_budget > 0 else 503
                self.ok_budget -= status == 200
            else:
                status = 200
            self.log.append((prompt, status))
            self.bodies.append(body)
            self.auth.append(auth)
            return status

    def done(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def answer_for(prompt: str) -> str:
    if "MALFORMED" in prompt:
        return "What a lovely piece of work, I enjoyed reading it!"
    if ratings := re.findall(r"RATING=(\d+)", prompt):  # MT-bench's judge: the last answer's script
        return f"The answer is scripted.\nRating: [[{ratings[-1]}]]"
    m = re.search(r"SCORE=(\d)", prompt)
    return f"Score: {m.group(1) if m else 3}\nReason: scripted answer"


def logprobs_for(prompt: str, ignore_prefill: bool) -> list[tuple[str, float, dict[str, float]]]:
    """(token, logprob, top alternatives) per answer token, from the P={...} script in the prompt."""
    m = re.search(r"P=(\{[^}]*\})", prompt)
    dist = json.loads(m.group(1)) if m else {"The": 0.9, " code": 0.1}
    top = {t: math.log(p) for t, p in dist.items()}
    best = max(top, key=top.get)
    head = [("Score", -0.1, {"Score": -0.1}), (":", -0.01, {":": -0.01})] if ignore_prefill else []
    return [*head, (best, top[best], top), ("\n", -0.5, {"\n": -0.5})]


def _choice(fake: FakeTeacher, body: dict, chat: bool, prompt: str, i: int) -> dict:
    lps = logprobs_for(prompt, fake.ignore_prefill)
    text = "".join(t for t, _, _ in lps) if body.get("logprobs") else (fake.script or answer_for)(prompt)
    if chat:
        out = {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        if body.get("logprobs"):
            k = body.get("top_logprobs") or 0
            out["logprobs"] = {
                "content": [
                    {
                        "token": t,
                        "logprob": lp,
                        "bytes": None,
                        "top_logprobs": [
                            {"token": a, "logprob": b, "bytes": None} for a, b in list(top.items())[:k]
                        ],
                    }
                    for t, lp, top in lps
                ]
            }
        return out
    out = {"index": i, "text": text, "finish_reason": "stop", "logprobs": None}
    if body.get("logprobs") is not None:
        k = body["logprobs"]
        out["logprobs"] = {
            "tokens": [t for t, _, _ in lps],
            "token_logprobs": [lp for _, lp, _ in lps],
            "top_logprobs": [dict(list(top.items())[:k]) for _, _, top in lps],
            "text_offset": [0] * len(lps),
        }
    return out


def _handler(fake: FakeTeacher):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            chat = self.path.endswith("/chat/completions")
            prompt = (
                next(m["content"] for m in body["messages"] if m["role"] == "user")
                if chat
                else body["prompt"]
            )
            status = fake.decide(prompt, body, self.headers.get("Authorization", ""))
            time.sleep(fake.delay)
            fake.done()  # before replying: the client's next request must not overlap this one's count
            if status == 200:
                payload = {
                    "id": "cmpl-test",
                    "object": "chat.completion" if chat else "text_completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [_choice(fake, body, chat, prompt, i) for i in range(body.get("n") or 1)],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            else:
                payload = {"error": {"message": f"scripted {status}", "type": "test"}}
            ctype, out = fake.raw or ("application/json", json.dumps(payload).encode())
            try:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)
            except OSError:  # the client timed out and hung up
                pass

    return Handler


@pytest.fixture
def teacher_server():
    f = FakeTeacher()
    yield f
    f.close()


# fixtures whose first use costs 10-50 s (a 200-step training run, the MiniLM embedder, the real model's GGUF:
# gguf's reader alone parses its 98k vocabulary strings in ~8 s): every test using one is `slow`, so `make
# test-fast` never builds them
SLOW_FIXTURES = {"trained", "embedding", "real_read", "hf_tokenizer"}


def pytest_collection_modifyitems(config, items):
    """Files holding `slow` tests run first (stable: each file's own order is kept). Under `make test`'s
    workers a file is one unit of work, and the smoke speedrun's file started last would run alone at the end."""
    for it in items:
        if SLOW_FIXTURES & set(getattr(it, "fixturenames", ())):
            it.add_marker(pytest.mark.slow)
    slow_files = {it.path for it in items if it.get_closest_marker("slow")}
    items.sort(key=lambda it: it.path not in slow_files)
