"""OpenAI-compatible HTTP server: /v1/models, /v1/completions, /v1/chat/completions and a chat page at /.

Requests are validated here (OpenAI-style 400 bodies naming the bad field), turned into token ids and
SamplingParams, and handed to the Batcher's scheduler thread; tokens come back through an asyncio queue
and go out as JSON or as server-sent events in OpenAI's chunk format. Extensions beyond OpenAI's schema
follow vLLM's names: `top_k`, `ignore_eos`. `logprobs` / `top_logprobs` come back in OpenAI's two layouts
(chat: a list of token objects; completions: parallel lists), as vLLM writes them, on non-streamed replies.

With an index (`phiforge serve --index IDX`), a chat request is answered with retrieval: the last user message
is searched for, the best chunks that fit the context go in front of it (rag.answer.build_prompt, the same
prompt as `rag ask`), and the reply carries them in an extra top-level field, `sources`: [{n, doc_id, chunk,
title, score}] (n as cited, [n]), on the response object, or on the first chunk of a stream (the one with the
assistant role, so a client can show them while the answer streams). /v1/completions takes raw prompts and
does no retrieval.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..infer.engine import Engine
from ..infer.sampling import SamplingParams
from ..rag.answer import ANSWER_TOKENS, build_prompt, cite
from ..rag.index import Index, RagError
from ..tokenizer import CHAT_ROLES, _bytes_to_unicode
from .batcher import Batcher
from .batcher import Request as GenRequest


class APIError(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status
        self.type = "invalid_request_error" if status < 500 else "server_error"

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---- request validation ------------------------------------------------------------------------------
def _num(body: dict, key: str, lo: float, hi: float, default, integer: bool = False, lo_open: bool = False):
    v = body.get(key)
    if v is None:
        return default
    ok_type = isinstance(v, int) if integer else isinstance(v, int | float)
    if isinstance(v, bool) or not ok_type:
        raise APIError(f"'{key}' must be {'an integer' if integer else 'a number'}, got {v!r}", key)
    if v < lo or v > hi or (lo_open and v == lo):
        raise APIError(f"'{key}' must be in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}", key)
    return v


def _flag(body: dict, key: str) -> bool:
    v = body.get(key, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise APIError(f"'{key}' must be a boolean, got {v!r}", key)
    return v


def _stop(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 4:
        raise APIError(f"'stop' must be a non-empty string or a list of at most 4 of them, got {v!r}", "stop")
    return stops


def _reject_unsupported(body: dict) -> None:
    if body.get("n") not in (None, 1):
        raise APIError(f"only n=1 is supported, got n={body['n']!r}", "n")
    if body.get("best_of") not in (None, 1):
        raise APIError(f"only best_of=1 is supported, got {body['best_of']!r}", "best_of")
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise APIError(f"'{key}' is not supported (only 0)", key)
    for key in ("echo", "suffix", "tools", "logit_bias"):
        if body.get(key) not in (None, False, 0, [], {}):
            raise APIError(f"'{key}' is not supported by this server", key)


def _max_tokens(body: dict, chat: bool) -> tuple[str, int | None]:
    """(the field that names it, the completion budget asked for or None); chat takes either name."""
    key = "max_completion_tokens" if chat else "max_tokens"
    v = _num(body, key, 1, 10**9, None, integer=True)
    if v is None and chat:
        v = _num(body, "max_tokens", 1, 10**9, None, integer=True)
    return key, v


def _logprobs(body: dict, chat: bool) -> int | None:
    """Alternatives wanted per token (0 = the chosen token's logprob only), or None for no logprobs.
    Chat: `logprobs: true` + `top_logprobs: k`; completions: `logprobs: k` (vLLM allows up to 20)."""
    if chat:
        want = _flag(body, "logprobs")
        top = _num(body, "top_logprobs", 0, 20, None, integer=True)
        if top is not None and not want:
            raise APIError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        k = (top or 0) if want else None
    else:
        k = _num(body, "logprobs", 0, 20, None, integer=True)
    if k is not None and body.get("stream"):
        raise APIError("logprobs are returned on non-streamed replies only (set stream: false)", "logprobs")
    return k


class Server:
    """What the routes share: the engine, its batcher, the served model name, the API key, the index."""

    def __init__(
        self, engine: Engine, model_name: str, api_key: str | None, max_batch: int, index: Index | None = None
    ):
        self.engine, self.tok, self.name, self.api_key = engine, engine.tokenizer, model_name, api_key
        self.ctx = engine.cfg.max_position_embeddings
        self.batcher = Batcher(engine, max_batch=max_batch)
        self.index = index.ready() if index is not None else None
        self.rag_lock = threading.Lock()  # one search at a time: the embedder's tokenizer is not thread-safe

    def check_model(self, body: dict) -> None:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise APIError("'model' is required (a string; see /v1/models)", "model")
        if model != self.name:
            raise APIError(f"The model `{model}` does not exist", "model", "model_not_found", 404)

    def params(self, body: dict, n_prompt: int, chat: bool = False) -> SamplingParams:
        _reject_unsupported(body)
        room = self.ctx - n_prompt
        max_key, max_tokens = _max_tokens(body, chat)
        if max_tokens is not None and max_tokens > room:
            raise APIError(
                f"This model's maximum context length is {self.ctx} tokens. However, you requested "
                f"{n_prompt + max_tokens} tokens ({n_prompt} in the prompt, {max_tokens} for the completion).",
                max_key,
                "context_length_exceeded",
            )
        top_k = _num(body, "top_k", -1, 10**9, 0, integer=True)
        return SamplingParams(
            max_new_tokens=max_tokens if max_tokens is not None else room,
            temperature=float(_num(body, "temperature", 0, 2, 1.0)),
            top_p=float(_num(body, "top_p", 0, 1, 1.0, lo_open=True)),
            top_k=max(top_k, 0),  # vLLM: -1 = off
            seed=_num(body, "seed", -(2**63), 2**64 - 1, None, integer=True),
            stop=_stop(body),
            ignore_eos=_flag(body, "ignore_eos"),
            logprobs=_logprobs(body, chat),
        )

    def check_prompt(self, ids: list[int], param: str) -> list[int]:
        if not ids:
            raise APIError("the prompt is empty", param)
        if len(ids) >= self.ctx:
            raise APIError(
                f"This model's maximum context length is {self.ctx} tokens. However, your prompt has "
                f"{len(ids)} tokens, which leaves no room for a completion.",
                param,
                "context_length_exceeded",
            )
        vocab = self.engine.cfg.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise APIError(f"token id {bad[0]} is outside the vocabulary (size {vocab})", param)
        return ids

    def completion_ids(self, body: dict) -> list[int]:
        p = body.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str | list):
            p = p[0]  # a batch of one
        if isinstance(p, str):
            return self.check_prompt(self.tok.encode(p), "prompt")
        if isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            return self.check_prompt(p, "prompt")
        raise APIError(
            "'prompt' must be a string, a list of token ids, or a list of one of those (n=1 batches only)",
            "prompt",
        )

    def chat_messages(self, body: dict) -> list[dict]:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise APIError("'messages' must be a non-empty list of {role, content} objects", "messages")
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise APIError(f"messages[{i}] must be an object", f"messages.[{i}]")
            role, content = m.get("role"), m.get("content")
            if role == "developer":  # OpenAI's newer name for the system role
                role = "system"
            if isinstance(content, list):  # content parts: text only
                if not all(isinstance(c, dict) and c.get("type") == "text" for c in content):
                    raise APIError(f"messages[{i}].content: only text parts are supported", f"messages.[{i}]")
                content = "".join(str(c.get("text", "")) for c in content)
            if content is None and role == "assistant":
                content = ""
            if role not in CHAT_ROLES:
                want = ", ".join(CHAT_ROLES)
                raise APIError(
                    f"messages[{i}].role must be one of {want}, got {role!r}", f"messages.[{i}].role"
                )
            if not isinstance(content, str):
                raise APIError(f"messages[{i}].content must be a string", f"messages.[{i}].content")
            out.append({"role": role, "content": content})
        return out

    def chat_ids(self, body: dict) -> list[int]:
        out = self.chat_messages(body)
        if _flag(body, "continue_final_message"):  # vLLM's name: the reply continues the last message
            return self.check_prompt(self._continue(out), "messages")
        gen = body.get("add_generation_prompt", True) is not False
        ids = self.tok.apply_chat_template(out, add_generation_prompt=gen)
        return self.check_prompt(ids, "messages")

    def rag_ids(self, body: dict) -> tuple[list[int], list[dict]]:
        """(prompt ids, sources): the chat with the best chunks for its last user message in front of that
        message, fitted to the context less the reply's budget (max_tokens, else up to ANSWER_TOKENS)."""
        messages = self.chat_messages(body)
        if (
            messages[-1]["role"] != "user"
            or _flag(body, "continue_final_message")
            or body.get("add_generation_prompt", True) is False
        ):
            raise APIError(
                "with an index, a chat request must end with the user message to answer (retrieval searches "
                "for it; no continue_final_message or add_generation_prompt: false)",
                "messages",
            )
        question = messages[-1]["content"]
        if not question.strip():
            raise APIError("the last user message is empty: there is nothing to search for", "messages")
        key, reserve = _max_tokens(body, chat=True)
        reserve = reserve or min(ANSWER_TOKENS, self.ctx // 2)
        if reserve >= self.ctx:
            raise APIError(
                f"This model's maximum context length is {self.ctx} tokens. However, you requested {reserve} "
                "tokens for the completion, which leaves no room for a prompt.",
                key,
                "context_length_exceeded",
            )
        try:
            with self.rag_lock:
                prompt, used, _ = build_prompt(
                    self.engine, self.index, question, max_new_tokens=reserve, history=messages[:-1]
                )
        except RagError as e:  # the conversation alone does not fit
            raise APIError(str(e), "messages", "context_length_exceeded") from None
        sources = [{k: v for k, v in s.items() if k != "text"} for s in cite(used)]
        return self.check_prompt(self.tok.encode(prompt), "messages"), sources

    def _continue(self, messages: list[dict]) -> list[int]:
        """The conversation rendered up to the end of its last (assistant) message's text, so that the
        reply goes on from there: G-Eval's "Score:" prefill, as vLLM's continue_final_message does."""
        last = messages[-1]["content"]
        if messages[-1]["role"] != "assistant" or not last:
            raise APIError(
                "continue_final_message needs a last assistant message with text to continue", "messages"
            )
        text = self.tok.render_chat(messages, add_generation_prompt=False)
        return self.tok.encode(text[: text.rfind(last) + len(last)])


# ---- streaming plumbing ------------------------------------------------------------------------------
async def _events(srv: Server, request: Request, ids: list[int], params: SamplingParams):
    """Yield ("text", str) ... then ("done", GenRequest) or ("error", str); cancel the row on exit."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()
    req = GenRequest(ids, params, sink=lambda kind, v: loop.call_soon_threadsafe(q.put_nowait, (kind, v)))
    srv.batcher.submit(req)
    checked = loop.time()
    try:
        while True:
            try:
                kind, v = await asyncio.wait_for(q.get(), timeout=0.25)
            except asyncio.TimeoutError:
                kind = None
            # poll for a vanished client even while tokens flow (a non-streamed reply sends nothing)
            if loop.time() - checked > 0.25:
                checked = loop.time()
                if await request.is_disconnected():
                    return
            if kind is None:
                continue
            # a client that fell behind gets what piled up as one chunk: fewer events, same text
            while kind == "text" and not q.empty():
                kind2, v2 = q.get_nowait()
                if kind2 != "text":
                    yield kind, v
                    kind, v = kind2, v2
                    break
                v += v2
            yield kind, v
            if kind != "text":
                return
    finally:
        if req.finish_reason is None:
            req.cancel()  # the client went away (or the stream was closed): free the batch row


def _usage(n_prompt: int, req: GenRequest) -> dict:
    n = len(req.tokens)
    return {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}


def _token_bytes(tok, tid: int) -> bytes:
    """A token's own bytes: a byte-level BPE token may be part of a UTF-8 character, which decode() would
    turn into U+FFFD; its vocabulary string maps back to the exact bytes (GPT-2's byte alphabet)."""
    text = tok.decode([tid])
    if "\ufffd" not in text:
        return text.encode()
    piece = tok.id_to_token(tid) or ""
    if piece.startswith("<0x") and piece.endswith(">"):  # SentencePiece byte fallback
        return bytes([int(piece[3:-1], 16)])
    if all(c in _BYTE_OF for c in piece):
        return bytes(_BYTE_OF[c] for c in piece)
    return text.encode()


_BYTE_OF = {c: b for b, c in _bytes_to_unicode().items()}


def _chat_logprobs(tok, done: GenRequest) -> dict:
    """OpenAI's chat layout: content[j] = {token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}."""

    def entry(tid: int, lp: float) -> dict:
        return {"token": tok.decode([tid]), "logprob": lp, "bytes": list(_token_bytes(tok, tid))}

    return {
        "content": [
            {**entry(t, lp), "top_logprobs": [entry(i, p) for i, p in top]}
            for t, lp, top in zip(done.tokens, done.logprobs, done.top_logprobs, strict=True)
        ]
    }


def _completion_logprobs(tok, done: GenRequest) -> dict:
    """The legacy completions layout: parallel lists; text_offset counts characters from the completion's
    start (vLLM without echo); top_logprobs maps token text to logprob, best first."""
    tokens = [tok.decode([t]) for t in done.tokens]
    offsets = [sum(map(len, tokens[:j])) for j in range(len(tokens))]
    tops = [{tok.decode([i]): p for i, p in reversed(top)} for top in done.top_logprobs]
    tops = [dict(sorted(d.items(), key=lambda kv: -kv[1])) for d in tops]  # equal texts: the best one kept
    return {"tokens": tokens, "token_logprobs": done.logprobs, "top_logprobs": tops, "text_offset": offsets}


def _sse(obj) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _respond(srv: Server, request: Request, body: dict, ids: list[int], params, chat: bool,
                   extra: dict | None = None):  # fmt: skip
    """`extra`: top-level fields beyond OpenAI's (the sources), on the response or the stream's first chunk."""
    extra = extra or {}
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    head = {
        "id": rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": srv.name,
    }
    stream = _flag(body, "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise APIError("'stream_options' must be an object", "stream_options")
    include_usage = stream and _flag(opts, "include_usage")

    def choice(text: str | None, finish: str | None, first: bool = False) -> dict:
        if not chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta = {"role": "assistant", "content": ""} if first else {} if text is None else {"content": text}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    if not stream:
        text, done = [], None
        async for kind, v in _events(srv, request, ids, params):
            if kind == "text":
                text.append(v)
            elif kind == "error":
                raise APIError(v, status=500)
            else:
                done = v
        if done is None:  # the client disconnected
            return JSONResponse({}, status_code=499)
        msg = {"role": "assistant", "content": "".join(text)}
        lps = None
        if params.logprobs is not None:
            lps = (_chat_logprobs if chat else _completion_logprobs)(srv.tok, done)
        c = {"index": 0, "logprobs": lps, "finish_reason": done.finish_reason}
        c.update({"message": msg} if chat else {"text": msg["content"]})
        obj = {**head, "object": "chat.completion" if chat else "text_completion", "choices": [c], **extra}
        return JSONResponse({**obj, "usage": _usage(len(ids), done)})

    async def sse():
        usage = {"usage": None} if include_usage else {}
        if chat:
            yield _sse({**head, "choices": [choice(None, None, first=True)], **extra, **usage})
        async for kind, v in _events(srv, request, ids, params):
            if kind == "text":
                yield _sse({**head, "choices": [choice(v, None)], **usage})
            elif kind == "error":
                yield _sse(APIError(v, status=500).body())
            else:
                yield _sse({**head, "choices": [choice(None, v.finish_reason)], **usage})
                if include_usage:
                    yield _sse({**head, "choices": [], "usage": _usage(len(ids), v)})
        yield b"data: [DONE]\n\n"

    return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# ---- the app -----------------------------------------------------------------------------------------
def create_app(engine: Engine, model_name: str, api_key: str | None = None, max_batch: int = 16,
               index: Index | None = None) -> FastAPI:  # fmt: skip
    """The app; with `index`, chat requests are answered with retrieval from it (checked here: Index.ready)."""
    srv = Server(engine, model_name, api_key, max_batch, index)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        srv.batcher.start()
        yield
        srv.batcher.stop()

    app = FastAPI(title="phiforge", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = srv

    @app.exception_handler(APIError)
    async def api_error(_req, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_req, e: StarletteHTTPException):
        code = "not_found" if e.status_code == 404 else None
        err = APIError(str(e.detail), code=code, status=e.status_code)
        return JSONResponse(err.body(), status_code=e.status_code)

    def auth(request: Request) -> None:
        if srv.api_key is None:
            return
        got = request.headers.get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {srv.api_key}".encode()):
            raise APIError("Incorrect or missing API key (send 'Authorization: Bearer KEY')", None,
                           "invalid_api_key", 401)  # fmt: skip

    async def json_body(request: Request) -> dict:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(f"the request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise APIError("the request body must be a JSON object")
        return body

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return (resources.files("phiforge.serve") / "web" / "index.html").read_text(encoding="utf-8")

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models():
        card = {
            "id": srv.name,
            "object": "model",
            "created": 0,
            "owned_by": "phiforge",
            "max_model_len": srv.ctx,
        }
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions", dependencies=[Depends(auth)])
    async def completions(request: Request):
        body = await json_body(request)
        srv.check_model(body)
        ids = srv.completion_ids(body)
        return await _respond(srv, request, body, ids, srv.params(body, len(ids)), chat=False)

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat_completions(request: Request):
        body = await json_body(request)
        srv.check_model(body)
        if srv.index is None:
            ids, extra = srv.chat_ids(body), None
        else:  # retrieval embeds the question: off the event loop, so other replies keep streaming
            ids, sources = await asyncio.to_thread(srv.rag_ids, body)
            extra = {"sources": sources}
        params = srv.params(body, len(ids), chat=True)
        return await _respond(srv, request, body, ids, params, chat=True, extra=extra)

    return app


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_batch: int = 16, log_level: str = "info", index: str | Path | None = None) -> None:  # fmt: skip
    """Load a model (directory, .gguf file or short name) and serve it until interrupted; with `index`, answer
    chat requests with retrieval from it. A bad index is refused (RagError) before the model loads."""
    import uvicorn

    from ..infer.load import SHORT_NAMES

    rag = Index.load(index).ready() if index is not None else None
    if rag is not None:
        print(f"phiforge: retrieval from {index}: {len(rag)} chunks, embedder {rag.meta['embedder']}")
    engine = Engine.load(model)
    # the name clients send as `model`: the short name as typed, else the directory's or file's name
    path = Path(model).resolve()
    name = str(model) if str(model) in SHORT_NAMES else path.stem if path.suffix == ".gguf" else path.name
    app = create_app(engine, name, api_key=api_key, max_batch=max_batch, index=rag)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
