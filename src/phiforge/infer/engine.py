"""Generation engine: batched prefill, incremental decode over a preallocated KV cache.

Everything that talks to a model at inference time (chat, server, eval, rag) goes through `Engine`.
Batches of different prompt lengths are left-padded: rotary positions start at 0 at each row's first real
token and a key mask hides the pads, which is exactly what transformers does with an attention_mask.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..model import KVCache, Transformer
from ..tokenizer import StreamDecoder, Tokenizer
from . import kernels
from .sampling import SamplingParams, apply_repetition_penalty, sample

# on_token(row, token_id, text) is called for every generated token; text is the newly visible text
# (text that may begin a stop string is held back; a stop string is never shown). A last call with
# token_id -1 releases held-back text when a row ends.
OnToken = Callable[[int, int, str], None]


@dataclass
class Result:
    tokens: list[int]  # generated ids; a stop token is excluded, the tokens of a stop string are kept
    text: str = ""
    finish_reason: str = "length"  # "stop" | "length"
    prompt_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def decode_tps(self) -> float:
        return max(len(self.tokens) - 1, 0) / self.decode_s if self.decode_s > 0 else 0.0


@dataclass
class _Row:
    prompt_len: int
    tokens: list[int] = field(default_factory=list)
    done: bool = False
    finish: str = "length"
    text: str = ""  # visible text so far
    pending: str = ""  # decoded but held back (could be the start of a stop string)
    decoder: StreamDecoder | None = None


def decode_layout(model: Transformer) -> None:
    """Store every linear weight column-major (same shape, transposed strides), in place.

    At batch 1 a linear layer is a matrix-vector product bound by how fast weights stream from memory.
    With PyTorch's CPU BLAS, x @ W.T on a row-major W runs on one core (13-14 GB/s measured for the
    160M model's lm_head); the same product on column-major storage uses both cores (24-46 GB/s).
    Prefill and training matmuls are as fast either way, so the module code does not change."""
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear) and mod.weight.is_contiguous():
            mod.weight.data = mod.weight.data.t().contiguous().t()


def use_native_gemv(model: Transformer) -> None:
    """Route batch-1 fp32 linears to the native gemv (infer/kernels.c); shapes and state_dict unchanged."""
    for mod in model.modules():
        if type(mod) is torch.nn.Linear:
            mod.__class__ = kernels.DecodeLinear
            mod.weight.data = mod.weight.data.contiguous()


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer | None = None):
        self.model = model.eval()
        self.tok = tokenizer
        self.cfg = model.cfg
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        if self.device.type == "cpu" and self.dtype == torch.float32:
            if kernels.library() is not None:
                use_native_gemv(model)
            else:
                decode_layout(model)

    @classmethod
    def load(cls, path: str | Path, device="cpu", dtype: torch.dtype | None = None) -> Engine:
        from .quant import load_any  # quantized directories (phiforge quantize) load too

        path = Path(path)
        model = load_any(path, device=device, dtype=dtype)
        tok = Tokenizer.from_file(path) if (path / "tokenizer.json").is_file() else None
        return cls(model, tok)

    # ---- text helpers ------------------------------------------------------------------------------
    def stop_ids(self, params: SamplingParams) -> set[int]:
        if params.ignore_eos:
            return set(params.stop_token_ids)
        ids = set(params.stop_token_ids)
        eos = self.cfg.eos_token_id
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tok is not None:
            ids.update(self.tok.stop_ids)
        return ids

    def complete(
        self, prompt: str, params: SamplingParams, on_text: Callable[[str], None] | None = None
    ) -> Result:
        ids = self._tok().encode(prompt)
        cb = (lambda row, tid, text: on_text(text)) if on_text else None
        return self.generate([ids], params, cb)[0]

    def chat(self, messages: list[dict], params: SamplingParams, on_text=None) -> Result:
        ids = self._tok().apply_chat_template(messages, add_generation_prompt=True)
        cb = (lambda row, tid, text: on_text(text)) if on_text else None
        return self.generate([ids], params, cb)[0]

    def _tok(self) -> Tokenizer:
        if self.tok is None:
            raise ValueError("this model directory has no tokenizer.json; pass token ids instead of text")
        return self.tok

    # ---- the loop ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self, prompts: list[list[int]], params: SamplingParams, on_token: OnToken | None = None
    ) -> list[Result]:
        B = len(prompts)
        lens = [len(p) for p in prompts]
        ctx = self.cfg.max_position_embeddings
        for i, n in enumerate(lens):
            if n == 0:
                raise ValueError(f"prompt {i} is empty")
            if n >= ctx:
                raise ValueError(
                    f"prompt {i} has {n} tokens; the model's context is {ctx} (max_position_embeddings)"
                )
            bad = [t for t in prompts[i] if not 0 <= t < self.cfg.vocab_size]
            if bad:
                raise ValueError(
                    f"prompt {i} has token id {bad[0]} outside the vocabulary (size {self.cfg.vocab_size})"
                )
        T = max(lens)
        total = min(ctx, T + params.max_new_tokens)
        gen = (
            torch.Generator(device=self.device).manual_seed(params.seed) if params.seed is not None else None
        )
        stops = self.stop_ids(params)
        if params.stop and self.tok is None:
            raise ValueError("stop strings need a tokenizer (no tokenizer.json with this model)")
        rows = [_Row(prompt_len=n) for n in lens]
        if self.tok is not None:
            for r in rows:
                r.decoder = StreamDecoder(self.tok)

        pads = torch.tensor([T - n for n in lens], device=self.device) if min(lens) < T else None
        ids = torch.full((B, total), self.cfg.pad_token_id or 0, dtype=torch.long, device=self.device)
        for i, p in enumerate(prompts):
            ids[i, T - len(p) : T] = torch.tensor(p, dtype=torch.long)
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(B, self.cfg.vocab_size, dtype=torch.bool, device=self.device)
            for i, p in enumerate(prompts):
                seen[i, p] = True

        cache = KVCache(self.cfg, B, total, self.device, self.dtype)
        native = (
            kernels.Phi3Decoder(self.model, cache)
            if kernels.Phi3Decoder.supports(self.model, B, pads is not None)
            else None
        )
        t0 = time.perf_counter()
        logits = self._forward(ids[:, :T], 0, cache, pads)
        kind = self.model.rope.kind_for(T - 1)  # the longest row has no pads
        prefill_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        for step in range(T, total + 1):
            if params.max_new_tokens == 0:
                break
            logits = logits[:, -1].float()
            if seen is not None:
                logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
            nxt = sample(logits, params, gen)
            if seen is not None:
                seen[torch.arange(B), nxt] = True
            for i, tid in enumerate(nxt.tolist()):
                self._accept(i, rows[i], tid, stops, params, on_token)
            if all(r.done for r in rows) or step == total:
                break
            ids[:, step] = nxt
            # LongRoPE: crossing original_max_position_embeddings switches every position to the long
            # factors, so the cache is recomputed once (transformers' generate does the same).
            new_kind = self.model.rope.kind_for(step)
            if new_kind != kind:
                logits, kind = self._forward(ids[:, : step + 1], 0, cache, pads), new_kind
            elif native is not None:
                logits = native(int(nxt[0]), step, kind)
            else:
                logits = self._forward(ids[:, step : step + 1], step, cache, pads)
        decode_s = time.perf_counter() - t1
        for i, r in enumerate(rows):
            if not r.done:
                self._finish(i, r, "length", on_token)
        return [Result(r.tokens, r.text, r.finish, r.prompt_len, prefill_s, decode_s) for r in rows]

    def _forward(self, x: torch.Tensor, pos: int, cache: KVCache, pads: torch.Tensor | None) -> torch.Tensor:
        T = x.shape[1]
        if pads is None:
            return self.model(x, pos=pos, cache=cache, last_only=True)
        # left padding: per-row rotary positions and a mask hiding pad keys
        slots = torch.arange(pos, pos + T, device=x.device)
        positions = (slots[None, :] - pads[:, None]).clamp(min=0)
        keys = torch.arange(pos + T, device=x.device)
        causal = keys[None, :] <= slots[:, None]  # (T, pos+T)
        mask = causal[None] & (keys[None, None, :] >= pads[:, None, None])  # (B, T, pos+T)
        return self.model(x, pos=pos, cache=cache, positions=positions, mask=mask[:, None], last_only=True)

    def _accept(self, i: int, r: _Row, tid: int, stops: set[int], params: SamplingParams, on_token) -> None:
        if r.done:
            return
        if tid in stops:
            self._finish(i, r, "stop", on_token)
            return
        r.tokens.append(tid)
        if r.decoder is None:
            if on_token:
                on_token(i, tid, "")
            if len(r.tokens) >= params.max_new_tokens:
                self._finish(i, r, "length", on_token)
            return
        r.pending += r.decoder.push(tid)
        hit = min((k for k in (r.pending.find(s) for s in params.stop) if k >= 0), default=-1)
        if hit >= 0:  # the text before the stop string goes out with this token; the rest never does
            out, r.pending = r.pending[:hit], ""
            r.text += out
            if on_token:
                on_token(i, tid, out)
            self._finish(i, r, "stop", on_token, flush=False)
            return
        # hold back the longest tail that could still grow into a stop string
        hold = max(
            (k for s in params.stop for k in range(len(s) - 1, 0, -1) if r.pending.endswith(s[:k])), default=0
        )
        out, r.pending = r.pending[: len(r.pending) - hold], r.pending[len(r.pending) - hold :]
        r.text += out
        if on_token:
            on_token(i, tid, out)
        if len(r.tokens) >= params.max_new_tokens:
            self._finish(i, r, "length", on_token)

    def _finish(self, i: int, r: _Row, reason: str, on_token, flush: bool = True) -> None:
        """Close a row; held-back text (no stop string completed) is released with token id -1."""
        r.done, r.finish = True, reason
        if flush and r.decoder is not None:
            r.pending += r.decoder.flush()
        if r.pending:
            r.text += r.pending
            if on_token:
                on_token(i, -1, r.pending)
            r.pending = ""
