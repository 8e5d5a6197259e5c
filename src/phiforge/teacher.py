"""The one LLM client: ask a teacher model many prompts, pay once for each answer.

Annotation, synthetic data, judging and preference labelling all call this. Two backends, one interface
(`ask(requests) -> list[Answer]`, `stats`, `name`, `close()`):

- `Client`: any OpenAI-compatible endpoint (vLLM, SGLang, llama.cpp server, `phiforge serve`, OpenAI), chat
  or completion mode, up to `concurrency` requests in flight (a vLLM server needs hundreds to be busy),
  retries with backoff on 429/5xx/timeouts.
- `LocalClient`: an engine object in this process (a local model is the teacher without a server); logprobs
  are the engine's own, recorded while it decodes (no second forward pass).

Both keep every answer in a sqlite cache keyed by endpoint + model + prompt + parameters, written the moment
it arrives, so a re-run pays nothing for what it has and a killed job resumes. A request that fails for
good comes back as an `Answer` with `error` set; it never raises out of the batch. The caller decides
what a failure means (annotation fails the task so that a re-run retries it).

This module sits at the bottom: it imports nothing from phiforge's feature packages.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import random
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path


class TeacherError(ValueError):
    """A teacher that cannot be used as configured (bad cache file, bad parameters); one line."""


@dataclass(frozen=True)
class Request:
    prompt: str
    max_tokens: int = 256
    temperature: float = 0.0
    n: int = 1  # answers to this prompt
    stop: tuple[str, ...] = ()
    logprobs: bool = False  # per-token logprobs of each answer
    top_logprobs: int = 0  # alternatives per position (OpenAI allows up to 20)
    chat: bool = True  # chat: the prompt is one user message; else a raw completion prompt
    system: str | None = None  # chat mode: a system message first
    prefill: str = ""  # the answer starts with this text (G-Eval's "Score: "); the answer excludes it
    seed: int | None = None  # sampling seed: part of the cache key, so a new seed is a new answer

    def __post_init__(self):
        if self.max_tokens < 0 or self.n < 1 or self.temperature < 0 or not 0 <= self.top_logprobs <= 20:
            raise TeacherError(
                f"teacher request: need max_tokens >= 0, n >= 1, temperature >= 0, 0 <= top_logprobs <= 20; "
                f"got {self.max_tokens}, {self.n}, {self.temperature}, {self.top_logprobs}"
            )
        object.__setattr__(self, "stop", tuple(self.stop))


@dataclass(frozen=True)
class TokenLogprob:
    token: str  # the token's text
    logprob: float
    top: tuple[tuple[str, float], ...] = ()  # the most likely tokens at this position and their logprobs


@dataclass
class Answer:
    texts: list[str] = field(default_factory=list)  # n answers; empty when the request failed
    logprobs: list[list[TokenLogprob]] | None = None  # one list per text, when the request asked
    error: str | None = None  # why the request failed for good (one line); None: answered
    retryable: bool = False  # a failure that a later re-run may heal (endpoint down), not a bad request
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "texts": self.texts,
                "logprobs": self.logprobs and [[asdict(t) for t in lp] for lp in self.logprobs],
            }
        )

    @classmethod
    def from_json(cls, s: str) -> Answer:
        d = json.loads(s)
        lps = d.get("logprobs")
        if lps is not None:
            lps = [
                [TokenLogprob(t["token"], t["logprob"], tuple(map(tuple, t["top"]))) for t in lp]
                for lp in lps
            ]
        return cls(d["texts"], lps, cached=True)


STAT_KEYS = ("cached", "asked", "answered", "retried", "failed")  # the funnel: asked counts retries too


# --------------------------------------------------------------------------------------------------------------
# the answer cache


def cache_key(endpoint: str, model: str, req: Request) -> str:
    return hashlib.sha256(json.dumps([endpoint, model, asdict(req)], sort_keys=True).encode()).hexdigest()


class Cache:
    """Answers in sqlite by key. Safe across threads and the processes of one machine (a local disk).

    Every put is committed at once: an answer is paid for, so a crash must not lose it.
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = str(path or ":memory:")
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            # timeout: datatrove workers are processes that may share this file; wait for each other's writes
            self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
            # WAL + synchronous=NORMAL: a commit survives a crashed process without an fsync each (~50x faster
            # here, which matters with a fast local endpoint). WAL needs a local disk, not NFS.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL)"
            )
            self._db.commit()
        except sqlite3.Error as e:  # a directory, a file that is not sqlite, no permission
            raise TeacherError(f"teacher cache {self.path}: {e}") from e

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, value))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Backend(abc.ABC):
    """What both backends share: the cache in front, the counters. Subclasses answer what is not cached."""

    endpoint: str
    model: str

    def __init__(self, cache_path):
        self.cache = Cache(cache_path)
        self.stats: Counter = Counter(dict.fromkeys(STAT_KEYS, 0))
        self._stats_lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"{self.model} @ {self.endpoint}"

    def ask(self, requests: list[Request]) -> list[Answer]:
        """One answer per request, in order. Identical requests cost one; failures come back as answers."""
        keys = [cache_key(self.endpoint, self.model, r) for r in requests]
        answers: dict[str, Answer] = {}
        for k in dict.fromkeys(keys):
            if (hit := self.cache.get(k)) is not None:
                answers[k] = Answer.from_json(hit)
        self._count("cached", sum(k in answers for k in keys))
        todo = {k: r for k, r in zip(keys, requests, strict=True) if k not in answers}
        for k, ans in self._answer(todo):
            if ans.ok:  # failures are not cached: a re-run asks again
                self.cache.put(k, ans.to_json())
            answers[k] = ans
        self._count("failed", sum(not answers[k].ok for k in keys))
        return [answers[k] for k in keys]

    @abc.abstractmethod
    def _answer(self, todo: dict[str, Request]) -> Iterator[tuple[str, Answer]]:
        """Yield (cache key, answer) for every request not cached: the endpoint or the in-process engine."""

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:  # Counter += is a read-modify-write; worker threads race on it
            self.stats[key] += n

    def close(self) -> None:
        self.cache.close()


def _one_line(s, limit: int = 300) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _describe(e: BaseException | None) -> str:
    return _one_line(f"{type(e).__name__}: {e}", 200) if e is not None else "no error recorded"


# --------------------------------------------------------------------------------------------------------------
# OpenAI-compatible endpoints


class _Transient(Exception):
    """A failed request worth retrying; the error is its __cause__."""


class _Fatal(Exception):
    """The endpoint cannot answer any request (bad key, wrong path or model, not an OpenAI API)."""


_MAX_BACKOFF = 60.0


def _backoff_delay(backoff: float, attempt: int) -> float:
    """Exponential, capped, with jitter so parallel requests that failed together do not retry together."""
    return min(backoff * 2**attempt, _MAX_BACKOFF) * random.uniform(0.5, 1.0)


class Client(_Backend):
    """Requests to an OpenAI-compatible endpoint, `concurrency` in flight.

    Failures: 429, 5xx, timeouts and connection errors are retried with backoff; after `max_retries` the
    request fails (retryable). A 400/413/422 fails only that request (a prompt too long for the server).
    401/403/404, a body that is not JSON or not a completion fail every request the same way: the first
    one stops the batch. `give_up_after` requests failing for good in a row (the endpoint is down) also stop
    it; what was not sent comes back failed with the reason, and a re-run resumes from the cache.
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key_env: str = "PHIFORGE_TEACHER_KEY",  # the name of the variable, never the key: configs get saved
        concurrency: int = 32,
        max_retries: int = 5,
        timeout: float = 60.0,
        backoff: float = 1.0,  # the first retry waits ~backoff s, then doubles (capped at _MAX_BACKOFF)
        give_up_after: int = 3,
        cache_path: str | os.PathLike | None = None,
    ):
        if concurrency < 1 or max_retries < 0 or give_up_after < 1:
            raise TeacherError(
                f"teacher: need concurrency >= 1, max_retries >= 0, give_up_after >= 1; "
                f"got {concurrency}, {max_retries}, {give_up_after}"
            )
        super().__init__(cache_path)
        self.endpoint, self.model = url, model
        self.concurrency, self.max_retries, self.backoff = concurrency, max_retries, backoff
        self.give_up_after = give_up_after
        from openai import OpenAI  # imported here: callers that never ask should not pay a second for it

        # max_retries=0: retries are ours, so they are counted and a failure can say how many
        self._client = OpenAI(
            base_url=url, api_key=os.environ.get(api_key_env, "none"), timeout=timeout, max_retries=0
        )
        self._halt: tuple[str, bool] | None = (
            None  # once the batch stops: why, and whether a re-run may heal it
        )
        self._in_a_row = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self._client.close()
        super().close()

    def _answer(self, todo: dict[str, Request]) -> Iterator[tuple[str, Answer]]:
        if not todo:
            return
        self._halt, self._in_a_row = None, 0
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(todo))) as pool:
            futures = {pool.submit(self._ask_one, r): k for k, r in todo.items()}
            for fut in as_completed(futures):
                yield futures[fut], fut.result()  # the caller caches it now, not at the end of the batch

    def _ask_one(self, req: Request) -> Answer:
        """One answer, retrying what may heal. Never raises: a failure is an Answer with `error`."""
        last = None
        for attempt in range(self.max_retries + 1):
            if self._halt:
                return Answer(error=f"not sent: {self._halt[0]}", retryable=self._halt[1])
            if attempt:
                self._count("retried")
                time.sleep(_backoff_delay(self.backoff, attempt - 1))
            self._count("asked")
            try:
                ans = self._request(req)
            except _Transient as e:
                last = e.__cause__
                continue
            except _Fatal as e:
                with self._lock:
                    self._halt = self._halt or (str(e), False)
                return Answer(error=str(e))
            except TeacherError as e:  # this request only
                return Answer(error=str(e))
            self._count("answered")
            with self._lock:
                self._in_a_row = 0
            return ans
        msg = (
            f"teacher {self.endpoint} (model {self.model}) failed after {self.max_retries + 1} attempts, "
            f"last error {_describe(last)}"
        )
        with self._lock:
            self._in_a_row += 1
            if self._in_a_row >= self.give_up_after:
                self._halt = self._halt or (f"{self._in_a_row} requests in a row failed; last: {msg}", True)
        return Answer(error=msg, retryable=True)

    def _request(self, req: Request) -> Answer:
        """One HTTP request. _Transient: a retry may heal it; _Fatal: no request can succeed; TeacherError:
        this request cannot."""
        import openai

        url = self.endpoint
        try:
            resp = self._create(req)
        except openai.APIStatusError as e:
            if e.status_code == 429 or e.status_code >= 500:
                raise _Transient from e
            msg = f"teacher {url} answered HTTP {e.status_code} (not retried): {_describe(e)}"
            if e.status_code in (400, 413, 422):  # this prompt (too long, bad parameter), not the endpoint
                raise TeacherError(msg) from e
            raise _Fatal(msg) from e  # a bad key, model name or path: the same for every request
        except openai.APIConnectionError as e:  # APITimeoutError included
            raise _Transient from e
        except ValueError as e:  # a 200 whose body is not JSON
            raise _Fatal(f"teacher {url} answered with a body that is not JSON: {_describe(e)}") from e
        if getattr(resp, "choices", None) is None:  # an HTML page, or JSON from some other API
            what = "chat completion" if req.chat else "completion"
            raise _Fatal(
                f"teacher {url} answered with something that is not a {what}: {_one_line(resp, 120)}"
            )
        choices = sorted(resp.choices, key=lambda c: c.index)
        if req.chat:
            texts = [(c.message.content if c.message else None) or "" for c in choices]
        else:
            texts = [c.text or "" for c in choices]
        lps = [_logprobs_of(c, req.chat) for c in choices] if req.logprobs else None
        return Answer(texts, lps)

    def _create(self, req: Request):
        kw = dict(model=self.model, temperature=req.temperature, max_tokens=req.max_tokens, n=req.n)
        if req.stop:
            kw["stop"] = list(req.stop)
        if req.seed is not None:
            kw["seed"] = req.seed
        if not req.chat:
            if req.logprobs:
                kw["logprobs"] = req.top_logprobs  # the completions API: an int, the alternatives wanted
            return self._client.completions.create(prompt=req.prompt + req.prefill, **kw)
        messages = [{"role": "system", "content": req.system}] if req.system else []
        messages.append({"role": "user", "content": req.prompt})
        if req.prefill:
            # A last assistant message is continued by llama.cpp's server; vLLM needs to be told.
            messages.append({"role": "assistant", "content": req.prefill})
            kw["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
        if req.logprobs:
            kw.update(logprobs=True, top_logprobs=req.top_logprobs)
        return self._client.chat.completions.create(messages=messages, **kw)


def _logprobs_of(choice, chat: bool) -> list[TokenLogprob]:
    """OpenAI's two logprob layouts (chat: a list of token objects; completions: parallel lists) as one."""
    lp = getattr(choice, "logprobs", None)
    if lp is None:
        return []
    if chat:
        return [
            TokenLogprob(t.token, t.logprob, tuple((a.token, a.logprob) for a in (t.top_logprobs or ())))
            for t in lp.content or ()
        ]
    tops = lp.top_logprobs or [None] * len(lp.tokens or ())
    return [
        TokenLogprob(t, p, tuple(sorted((top or {}).items(), key=lambda kv: -kv[1])))
        for t, p, top in zip(lp.tokens or (), lp.token_logprobs or (), tops, strict=False)
    ]


# --------------------------------------------------------------------------------------------------------------
# an engine in this process


class LocalClient(_Backend):
    """The same interface over an in-process engine: a local model is the teacher, no server needed.

    Duck-typed on phiforge's `Engine`: `.tok` (encode, decode, apply_chat_template) and
    `generate(list of id lists, SamplingParams) -> results` with `.tokens`, `.text` and, when
    SamplingParams.logprobs is set, `.logprobs` / `.top_logprobs` (ids). Requests with the same sampling
    settings are batched, `batch_size` rows at a time (n answers to one prompt are n rows).
    """

    def __init__(self, engine, model: str = "local", cache_path=None, batch_size: int = 8):
        if batch_size < 1:
            raise TeacherError(f"teacher: batch_size must be >= 1, got {batch_size}")
        super().__init__(cache_path)
        self.engine, self.endpoint, self.model, self.batch_size = engine, "in-process", model, batch_size
        # The engine's own sampling parameters, found through its module so this file imports no feature package.
        self._params = getattr(sys.modules[type(engine).__module__], "SamplingParams", None)
        if self._params is None:
            raise TeacherError(
                f"teacher: {type(engine).__name__}'s module has no SamplingParams; pass an Engine"
            )

    def _answer(self, todo: dict[str, Request]) -> Iterator[tuple[str, Answer]]:
        groups: dict[tuple, list[tuple[str, Request]]] = {}
        for k, r in todo.items():
            top = r.top_logprobs if r.logprobs else None
            groups.setdefault((r.max_tokens, r.temperature, r.stop, r.seed, top), []).append((k, r))
        for items in groups.values():
            per = max(1, self.batch_size // items[0][1].n)
            for i in range(0, len(items), per):
                yield from self._batch(items[i : i + per])

    def _batch(self, items: list[tuple[str, Request]]) -> list[tuple[str, Answer]]:
        r0 = items[0][1]
        params = self._params(
            max_new_tokens=r0.max_tokens, temperature=r0.temperature, stop=list(r0.stop), seed=r0.seed,
            logprobs=r0.top_logprobs if r0.logprobs else None,
        )  # fmt: skip
        try:
            prompts = [self._ids(r) for _, r in items]
            rows = [p for p, (_, r) in zip(prompts, items, strict=True) for _ in range(r.n)]
            results = self.engine.generate(rows, params)
        except ValueError as e:  # a prompt too long for the context: find which one, answer the rest
            if len(items) > 1:
                return [out for item in items for out in self._batch([item])]
            self._count("asked")
            return [(items[0][0], Answer(error=f"teacher in-process ({self.model}): {_one_line(e, 200)}"))]
        self._count("asked", len(items))
        out, row = [], 0
        for k, r in items:
            res = results[row : row + r.n]
            row += r.n
            lps = [self._logprobs(x) for x in res] if r.logprobs else None
            out.append((k, Answer([x.text for x in res], lps)))
        self._count("answered", len(items))
        return out

    def _ids(self, r: Request) -> list[int]:
        tok = self.engine.tok
        if not r.chat:
            return tok.encode(r.prompt + r.prefill)
        messages = [{"role": "system", "content": r.system}] if r.system else []
        messages.append({"role": "user", "content": r.prompt})
        ids = tok.apply_chat_template(messages, add_generation_prompt=True)
        return ids + tok.encode(r.prefill) if r.prefill else ids

    def _logprobs(self, res) -> list[TokenLogprob]:
        """The engine's per-token logprobs (ids) as text: the distribution before each answer token."""
        dec = self.engine.tok.decode
        return [
            TokenLogprob(dec([t]), lp, tuple((dec([i]), p) for i, p in top))
            for t, lp, top in zip(res.tokens, res.logprobs, res.top_logprobs, strict=True)
        ]
