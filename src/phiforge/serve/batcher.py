"""Continuous batching for the server: one scheduler thread, one shared KV cache, rows that join and leave
between decode steps.

`Engine.generate` runs a fixed batch to completion; a server needs rows that come and go. Here every live
row shares one (layers, max_batch, kv_heads, cap, head_dim) cache on a common slot axis, and a decode step
writes slot S for all rows at once. A request is prefilled alone and its keys/values are copied to slots
[S - n, S) of a free batch row: it is left-padded to the current step, which is exactly the layout Engine
uses for left-padded batches (rotary position = slot - pad, keys before the pad masked). So under greedy
decoding a row's tokens do not depend on who else is in the batch. Live rows are kept packed in batch rows
0..nb-1 so that a step runs on a view of the cache, never a copy; when the slot axis fills up, the live
window is shifted left (rows that started early have finished) or the cache grows.

Text handling (stream decoding, stop strings, finish reasons) is Engine's own, so both paths agree.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..infer import kernels
from ..infer.engine import Engine, Row, token_logprobs
from ..infer.sampling import SamplingParams, sample
from ..model import KVCache

log = logging.getLogger(__name__)

# sink(kind, value): ("text", str) for newly visible text, ("done", Request) once, or ("error", str) once
Sink = Callable[[str, object], None]


class Cancelled(Exception):
    """Raised inside a sequential generate to stop a row whose client went away."""


@dataclass
class Request:
    prompt: list[int]
    params: SamplingParams
    sink: Sink
    tokens: list[int] = field(default_factory=list)  # generated ids (the stop token excluded)
    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    cancelled: bool = False
    steps: int = 0  # decode steps this row took part in (tests: a cancelled row stops growing)
    logprobs: list[float] | None = None  # with params.logprobs, as engine.Result
    top_logprobs: list[list[tuple[int, float]]] | None = None

    def cancel(self) -> None:
        self.cancelled = True  # read by the scheduler thread between steps


@dataclass
class _Live:
    req: Request
    row: Row
    pad: int  # first cache slot holding this row's prompt
    next_id: int  # the token fed at the next step
    limit: int  # max new tokens after clamping to the context
    gen: torch.Generator | None


class _CacheView:
    """The first nb batch rows of the shared cache; slicing keeps writes landing in the shared buffer."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v, self.max_len = k, v, k.shape[3]


class Batcher:
    def __init__(self, engine: Engine, max_batch: int = 16, initial_slots: int = 256):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if engine.tok is None:
            raise ValueError("the model directory has no tokenizer.json; the server needs one")
        self.engine, self.model, self.cfg = engine, engine.model, engine.cfg
        self.ctx = self.cfg.max_position_embeddings
        # LongRoPE picks one frequency set per forward from the longest row, so rows on both sides of
        # original_max_position_embeddings cannot share a step: such models run one request at a time.
        self.sequential = "long" in self.model.rope.freqs
        self.max_batch = 1 if self.sequential else max_batch
        self.cap = min(self.ctx, initial_slots)
        self.k = self.v = None
        self.S = 0  # next slot a decode step writes
        self.live: list[_Live] = []
        self.pending: list[Request] = []
        self.cond = threading.Condition()
        self.stopping = False
        self.steps = 0  # stats for tests and logs: decode steps, largest batch, rows freed by cancel
        self.peak_batch = 0
        self.n_cancelled = 0
        # a row alone runs Engine's native batch-1 decode (rebuilt whenever the cache buffer changes)
        self._native_ok = not self.sequential and kernels.Phi3Decoder.supports(self.model, 1, False)
        self._native, self._native_buf = None, 0
        self._rows_ok = not self.sequential and kernels.RowsDecoder.supports(self.model)
        self.thread = threading.Thread(target=self._run, name="phiforge-batcher", daemon=True)

    # ---- public, any thread ----------------------------------------------------------------------
    def start(self) -> Batcher:
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(timeout=30)

    def submit(self, req: Request) -> Request:
        with self.cond:
            self.pending.append(req)
            self.cond.notify()
        return req

    def num_active(self) -> int:
        return len(self.live) + len(self.pending)

    # ---- scheduler thread ------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self.cond:
                while not self.stopping and not self.pending and not self.live:
                    self.cond.wait()
                if self.stopping:
                    return
                room = self.max_batch - len(self.live)
                new, self.pending = self.pending[:room], self.pending[room:]
            try:
                with torch.inference_mode():
                    if self.sequential:
                        for req in new:
                            self._generate_alone(req)
                        continue
                    for req in new:
                        if not req.cancelled:
                            self._admit(req)
                    self._retire()
                    if self.live:
                        self._step()
                        self._retire()
            except Exception as e:  # noqa: BLE001 — a failed step fails its requests, not the server
                log.exception("batcher step failed")
                for r in {id(r): r for r in [x.req for x in self.live] + new}.values():
                    if r.finish_reason is None:
                        r.finish_reason = "error"
                        r.sink("error", f"generation failed: {e}")
                self.live = []

    def _new_row(self, req: Request) -> tuple[Row, int, torch.Generator | None]:
        row = self.engine.new_row(len(req.prompt), req.params)
        # as Engine.generate: the cache holds ctx tokens, and the token sampled last is never fed back
        limit = min(req.params.max_new_tokens, self.ctx - len(req.prompt) + 1)
        seed = req.params.seed
        gen = torch.Generator(device=self.engine.device).manual_seed(seed) if seed is not None else None
        return row, limit, gen

    def _admit(self, req: Request) -> None:
        n = len(req.prompt)
        row, limit, gen = self._new_row(req)
        tmp = KVCache(self.cfg, 1, n, self.engine.device, self.engine.dtype)
        ids = torch.tensor([req.prompt], dtype=torch.long, device=self.engine.device)
        logits = self.engine.prefill(ids, tmp)[:, -1].float()  # the engine's path: native for short prompts
        self._make_room(n)
        i, S = len(self.live), self.S
        self.k[:, i, :, S - n : S] = tmp.k[:, 0]
        self.v[:, i, :, S - n : S] = tmp.v[:, 0]
        live = _Live(req, row, S - n, -1, limit, gen)
        self.live.append(live)
        self._accept(live, logits)

    def _step(self) -> None:
        self._make_room(0)
        if len(self.live) == 1 and self._native_ok:
            return self._step_native()
        nb, S = len(self.live), self.S
        dev = self.engine.device
        x = torch.tensor([[r.next_id] for r in self.live], dtype=torch.long, device=dev)
        pads = torch.tensor([r.pad for r in self.live], device=dev)
        view = _CacheView(self.k[:, :nb], self.v[:, :nb])
        if self._rows_ok:  # the native step of many rows (the engine's, for batched generate)
            logits = kernels.RowsDecoder(self.model, view)(x[:, 0], S, "short", pads)
        else:
            keys = torch.arange(S + 1, device=dev)
            mask = (keys[None, :] >= pads[:, None])[:, None, None, :]  # (nb, 1, 1, S+1): hide each row's pads
            pos = (S - pads)[:, None]
            logits = self.model(x, pos=S, cache=view, positions=pos, mask=mask, last_only=True)
        logits = logits[:, -1].float()
        self.S += 1
        self.steps += 1
        self.peak_batch = max(self.peak_batch, nb)
        for i, r in enumerate(self.live):
            r.req.steps += 1
            self._accept(r, logits[i : i + 1])

    def _step_native(self) -> None:
        """One row alone: Engine's native whole-layer decode (infer/kernels.c), as in Engine.generate.
        It reads the row's cache from slot 0, so a row that was admitted behind others is moved there."""
        r = self.live[0]
        if r.pad:
            self._relayout(self.S - r.pad)
        if self._native is None or self._native_buf != self.k.data_ptr():
            view = _CacheView(self.k[:, :1], self.v[:, :1])  # row 0 of each layer is contiguous
            self._native, self._native_buf = kernels.Phi3Decoder(self.model, view), self.k.data_ptr()
        logits = self._native(r.next_id, self.S, "short")[:, -1].float()
        self.S += 1
        self.steps += 1
        self.peak_batch = max(self.peak_batch, 1)
        r.req.steps += 1
        self._accept(r, logits)

    def _accept(self, r: _Live, logits: torch.Tensor) -> None:
        """Sample from one row's logits (1, V) and hand the id to its Row (stop ids/strings, streaming)."""
        req = r.req
        nxt = sample(logits, req.params, r.gen)
        k = req.params.logprobs
        lp = token_logprobs(logits, nxt, k)[0] if k is not None else None
        tid = int(nxt[0])

        def on_text(_tid, text):
            if text:
                req.text += text
                req.sink("text", text)

        r.row.accept(tid, on_text, lp)
        if not r.row.done and len(r.row.tokens) >= r.limit:  # the context is full
            r.row.finish("length", on_text)
        r.next_id = tid
        if r.row.done:
            req.tokens, req.finish_reason = list(r.row.tokens), r.row.finish_reason
            req.logprobs, req.top_logprobs = r.row.logprobs, r.row.top_logprobs
            req.sink("done", req)

    def _retire(self) -> None:
        """Drop finished and cancelled rows, moving the last live row into each hole."""
        for i in range(len(self.live) - 1, -1, -1):
            r = self.live[i]
            if not (r.row.done or r.req.cancelled):
                continue
            if r.req.cancelled and not r.row.done:
                r.req.finish_reason = "cancelled"
                self.n_cancelled += 1
            last = len(self.live) - 1
            if i != last:
                self.k[:, i, :, : self.S] = self.k[:, last, :, : self.S]
                self.v[:, i, :, : self.S] = self.v[:, last, :, : self.S]
                self.live[i] = self.live[last]
            self.live.pop()

    def _make_room(self, n: int) -> None:
        """Make S >= n (a prompt of n tokens fits before S) and S < cap (the next step has a slot)."""
        if self.k is not None and n <= self.S < self.cap:
            return
        lo = min((r.pad for r in self.live), default=self.S)
        self._relayout(max(self.S - lo, n))  # slots before lo are pads for every row: drop them

    def _relayout(self, new_s: int) -> None:
        """Move the live window [lo, S) to end at new_s (growing the cache if needed); pads follow."""
        lo = min((r.pad for r in self.live), default=self.S)
        shift = new_s - self.S
        nb = len(self.live)
        if self.k is None or new_s >= self.cap:
            self.cap = min(self.ctx, max(2 * self.cap, new_s + 1))
            shape = (self.cfg.num_hidden_layers, self.max_batch, self.cfg.num_key_value_heads)
            shape += (self.cap, self.cfg.head_dim)
            # zeros, not empty: pad slots are masked but still multiplied (0 * NaN is NaN), and this
            # path never writes them; recycled memory can hold NaN (CI failed on that once)
            k = torch.zeros(shape, device=self.engine.device, dtype=self.engine.dtype)
            v = torch.zeros_like(k)
            if nb:
                k[:, :nb, :, lo + shift : new_s] = self.k[:, :nb, :, lo : self.S]
                v[:, :nb, :, lo + shift : new_s] = self.v[:, :nb, :, lo : self.S]
            self.k, self.v = k, v
        elif nb and shift:
            # overlapping move inside one buffer: copy the source first
            self.k[:, :nb, :, lo + shift : new_s] = self.k[:, :nb, :, lo : self.S].clone()
            self.v[:, :nb, :, lo + shift : new_s] = self.v[:, :nb, :, lo : self.S].clone()
        for r in self.live:
            r.pad += shift
        self.S = new_s

    def _generate_alone(self, req: Request) -> None:
        """One request through Engine.generate (LongRoPE models); a cancelled client stops it."""
        if req.cancelled:
            return

        def on_token(_i, _tid, text):
            if req.cancelled:
                raise Cancelled
            req.steps += 1
            if text:
                req.text += text
                req.sink("text", text)

        try:
            res = self.engine.generate([req.prompt], req.params, on_token)[0]
        except Cancelled:
            req.finish_reason = "cancelled"
            self.n_cancelled += 1
            return
        req.tokens, req.finish_reason = res.tokens, res.finish_reason
        req.logprobs, req.top_logprobs = res.logprobs, res.top_logprobs
        req.sink("done", req)
