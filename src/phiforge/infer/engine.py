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
    # with SamplingParams.logprobs: log-probability of each token in `tokens` under the model's raw
    # distribution, and its top alternatives [(id, logprob), ...] best first
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None

    @property
    def decode_tps(self) -> float:
        return max(len(self.tokens) - 1, 0) / self.decode_s if self.decode_s > 0 else 0.0


# on_text(token_id, text): a row's newly visible text (token_id -1: held-back text released at the end)
OnText = Callable[[int, str], None]


@dataclass
class Row:
    """One sequence being generated: its tokens, visible text, stop ids and strings, logprobs.

    Every decode loop (Engine.generate, the server's batcher, rollouts) feeds sampled ids to `accept` and
    closes rows with `finish`, so stop handling and streaming behave the same everywhere."""

    prompt_len: int
    params: SamplingParams
    stops: set[int]  # stop token ids (Engine.stop_ids)
    decoder: StreamDecoder | None = None  # None: no tokenizer, ids only
    tokens: list[int] = field(default_factory=list)
    done: bool = False
    finish_reason: str = "length"
    text: str = ""  # visible text so far
    pending: str = ""  # decoded but held back (could be the start of a stop string)
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None

    def __post_init__(self):
        if self.params.logprobs is not None:
            self.logprobs, self.top_logprobs = [], []

    def accept(self, tid: int, on_text: OnText | None = None, logprob: tuple | None = None) -> None:
        """Take one sampled id; `logprob` is (logprob, [(id, logprob), ...]) from token_logprobs."""
        if self.done:
            return
        if tid in self.stops:
            self.finish("stop", on_text)
            return
        self.tokens.append(tid)
        if self.logprobs is not None and logprob is not None:
            self.logprobs.append(logprob[0])
            self.top_logprobs.append(logprob[1])
        if self.decoder is None:
            if on_text:
                on_text(tid, "")
            if len(self.tokens) >= self.params.max_new_tokens:
                self.finish("length", on_text)
            return
        stop = self.params.stop
        self.pending += self.decoder.push(tid)
        hit = min((k for k in (self.pending.find(s) for s in stop) if k >= 0), default=-1)
        if hit >= 0:  # the text before the stop string goes out with this token; the rest never does
            out, self.pending = self.pending[:hit], ""
            self.text += out
            if on_text:
                on_text(tid, out)
            self.finish("stop", on_text, flush=False)
            return
        # hold back the longest tail that could still grow into a stop string
        hold = max(
            (k for s in stop for k in range(len(s) - 1, 0, -1) if self.pending.endswith(s[:k])), default=0
        )
        out, self.pending = self.pending[: len(self.pending) - hold], self.pending[len(self.pending) - hold :]
        self.text += out
        if on_text:
            on_text(tid, out)
        if len(self.tokens) >= self.params.max_new_tokens:
            self.finish("length", on_text)

    def finish(self, reason: str, on_text: OnText | None = None, flush: bool = True) -> None:
        """Close the row; held-back text (no stop string completed) is released with token id -1."""
        self.done, self.finish_reason = True, reason
        if flush and self.decoder is not None:
            self.pending += self.decoder.flush()
        if self.pending:
            self.text += self.pending
            if on_text:
                on_text(-1, self.pending)
            self.pending = ""

    def result(self, prefill_s: float = 0.0, decode_s: float = 0.0) -> Result:
        return Result(
            self.tokens,
            self.text,
            self.finish_reason,
            self.prompt_len,
            prefill_s,
            decode_s,
            self.logprobs,
            self.top_logprobs,
        )


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, top: int) -> list[tuple[float, list]]:
    """Per row: the log-probability of ids[i] under softmax(logits[i]) and the `top` most likely
    [(id, logprob)]. Raw model logits (before penalty/temperature), as vLLM and OpenAI report them."""
    lp = logits.float().log_softmax(-1)
    chosen = lp.gather(-1, ids.view(-1, 1))[:, 0].tolist()
    if top <= 0:
        return [(c, []) for c in chosen]
    vals, idx = lp.topk(top, dim=-1)
    return [
        (c, list(zip(i, v, strict=True))) for c, i, v in zip(chosen, idx.tolist(), vals.tolist(), strict=True)
    ]


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
    """Route no-grad fp32 linears past MKL (kernels.DecodeLinear: the native gemv for one row, oneDNN for
    many) and repack int4 weights for the native one-row kernel (quant.QuantLinear.pack_for_kernels: once
    here, not on the first request); shapes and state_dict unchanged."""
    for mod in model.modules():
        if type(mod) is torch.nn.Linear:
            mod.__class__ = kernels.DecodeLinear
            mod.weight.data = mod.weight.data.contiguous()
        elif hasattr(mod, "pack_for_kernels"):
            mod.pack_for_kernels()


# Prompts of up to this many tokens (one row, no padding) are prefilled as RowsDecoder rows: native calls between
# the linears instead of ~30 PyTorch ops per layer (RESULTS.md, eighth session). Longer prompts are matmul-bound,
# and the native attention's scores buffer grows with rows x slots.
NATIVE_PREFILL_TOKENS = 64


class Engine:
    def __init__(
        self, model: Transformer, tokenizer: Tokenizer | None = None, prefill_chunk: int | None = 2048
    ):
        self.model = model.eval()
        self.tok = tokenizer
        # prompts go through the model this many tokens at a time (None: all at once), so a long prompt's
        # activations and attention scores are bounded by the chunk; the KV cache is sized to the request
        self.prefill_chunk = prefill_chunk
        self.cfg = model.cfg
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.native_rows = False  # short prompts through kernels.RowsDecoder.prefill
        if self.device.type == "cpu" and self.dtype == torch.float32:
            if kernels.library() is not None:
                use_native_gemv(model)
                self.native_rows = kernels.RowsDecoder.supports(model)
            else:
                decode_layout(model)

    @classmethod
    def load(cls, spec: str | Path, device="cpu", dtype: torch.dtype | None = None) -> Engine:
        """A model directory (fp or quantized), a .gguf file or a short name (infer/load.py)."""
        from .load import load

        return cls(*load(spec, device=device, dtype=dtype))

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer, or one clear error for text work on a model that came without one."""
        if self.tok is None:
            raise ValueError("this model directory has no tokenizer.json; pass token ids instead of text")
        return self.tok

    def new_row(self, prompt_len: int, params: SamplingParams) -> Row:
        """A Row with this model's stop ids and (when there is a tokenizer) a streaming decoder."""
        if params.stop and self.tok is None:
            raise ValueError("stop strings need a tokenizer (no tokenizer.json with this model)")
        decoder = StreamDecoder(self.tok) if self.tok is not None else None
        return Row(prompt_len, params, self.stop_ids(params), decoder)

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
        ids = self.tokenizer.encode(prompt)
        cb = (lambda row, tid, text: on_text(text)) if on_text else None
        return self.generate([ids], params, cb)[0]

    def chat(self, messages: list[dict], params: SamplingParams, on_text=None) -> Result:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        cb = (lambda row, tid, text: on_text(text)) if on_text else None
        return self.generate([ids], params, cb)[0]

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
        rows = [self.new_row(n, params) for n in lens]
        sinks = [(lambda tid, text, i=i: on_token(i, tid, text)) if on_token else None for i in range(B)]

        pads = torch.tensor([T - n for n in lens], device=self.device) if min(lens) < T else None
        ids = torch.full((B, total), self.cfg.pad_token_id or 0, dtype=torch.long, device=self.device)
        for i, p in enumerate(prompts):
            ids[i, T - len(p) : T] = torch.tensor(p, dtype=torch.long)
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(B, self.cfg.vocab_size, dtype=torch.bool, device=self.device)
            for i, p in enumerate(prompts):
                seen[i, p] = True

        t0 = time.perf_counter()
        kind = self.model.rope.kind_for(T - 1)  # the longest row has no pads
        logits, cache = self._prefill_unique(prompts, ids[:, :T], total, pads, kind)
        prefill_s = time.perf_counter() - t0
        native = (
            kernels.Phi3Decoder(self.model, cache)
            if kernels.Phi3Decoder.supports(self.model, B, pads is not None)
            else None
        )
        # many rows (or padded ones): the linears as PyTorch matmuls, the rest of each layer native
        many = None
        if native is None and kernels.RowsDecoder.supports(self.model):
            many = kernels.RowsDecoder(self.model, cache)
        t1 = time.perf_counter()
        for step in range(T, total + 1):
            if params.max_new_tokens == 0:
                break
            logits = raw = logits[:, -1].float()
            if seen is not None:
                logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
            nxt = sample(logits, params, gen)
            if seen is not None:
                seen[torch.arange(B), nxt] = True
            lps = token_logprobs(raw, nxt, params.logprobs) if params.logprobs is not None else [None] * B
            for i, tid in enumerate(nxt.tolist()):
                rows[i].accept(tid, sinks[i], lps[i])
            if all(r.done for r in rows) or step == total:
                break
            ids[:, step] = nxt
            # LongRoPE: crossing original_max_position_embeddings switches every position to the long
            # factors, so the cache is recomputed once (transformers' generate does the same).
            new_kind = self.model.rope.kind_for(step)
            if new_kind != kind:
                logits, kind = self._prefill(ids[:, : step + 1], cache, pads, new_kind), new_kind
            elif native is not None:
                logits = native(int(nxt[0]), step, kind)
            elif many is not None:
                logits = many(ids[:, step], step, kind, pads)
            else:
                logits = self._forward(ids[:, step : step + 1], step, cache, pads)
        decode_s = time.perf_counter() - t1
        for r, sink in zip(rows, sinks, strict=True):
            if not r.done:
                r.finish("length", sink)
        return [r.result(prefill_s, decode_s) for r in rows]

    def _prefill_unique(self, prompts, x, total: int, pads, kind: str) -> tuple[torch.Tensor, KVCache]:
        """Prefill each distinct prompt once and copy its cache rows to the rows that repeat it: PTS and
        pass@k sample K continuations of one prompt, and the prompt is ~30% of such a batch's compute."""
        first: dict[tuple, int] = {}
        inverse = [first.setdefault(tuple(p), i) for i, p in enumerate(prompts)]
        uniq = sorted(set(inverse))
        if len(uniq) == len(prompts):
            cache = KVCache(self.cfg, len(prompts), total, self.device, self.dtype)
            return self._prefill(x, cache, pads, kind), cache
        pick = torch.tensor(uniq, device=x.device)
        part = KVCache(self.cfg, len(uniq), x.shape[1], self.device, self.dtype)
        logits = self._prefill(x[pick], part, None if pads is None else pads[pick], kind)
        slot = {i: j for j, i in enumerate(uniq)}
        rows = torch.tensor([slot[i] for i in inverse], device=x.device)
        cache = KVCache(self.cfg, len(prompts), total, self.device, self.dtype)
        cache.k[:, :, :, : x.shape[1]] = part.k.index_select(1, rows)
        cache.v[:, :, :, : x.shape[1]] = part.v.index_select(1, rows)
        return logits.index_select(0, rows), cache

    def prefill(self, ids: torch.Tensor, cache: KVCache, kind: str | None = None) -> torch.Tensor:
        """Last-position logits (B, 1, V) of unpadded prompts ids (B, T), their keys and values written to
        cache slots 0..T-1, as generate() prefills (in chunks; one short prompt natively). `kind`: the rotary
        tables ("short"/"long"), by default those of the prompt's last position."""
        if (
            ids.dim() != 2
            or ids.shape[1] == 0
            or ids.shape[1] > cache.max_len
            or ids.shape[0] > cache.k.shape[1]
        ):
            raise ValueError(
                f"prefill: ids must be (rows, tokens) with 1 <= tokens <= the cache's {cache.max_len} slots and "
                f"rows <= its {cache.k.shape[1]} rows, got shape {tuple(ids.shape)}"
            )
        return self._prefill(ids, cache, None, kind or self.model.rope.kind_for(ids.shape[1] - 1))

    def _prefill(self, x: torch.Tensor, cache: KVCache, pads: torch.Tensor | None, kind: str) -> torch.Tensor:
        """Last-position logits of x (from slot 0), fed `prefill_chunk` tokens at a time through the cache;
        every chunk uses the rope tables of the whole of x (LongRoPE picks them from its longest position)."""
        step = self.prefill_chunk or x.shape[1]
        for a in range(0, x.shape[1], step):
            logits = self._forward(x[:, a : a + step], a, cache, pads, kind)
        return logits

    def _forward(
        self, x: torch.Tensor, pos: int, cache: KVCache, pads: torch.Tensor | None, kind: str | None = None
    ) -> torch.Tensor:
        T = x.shape[1]
        if (
            pads is None
            and x.shape[0] == 1
            and pos + T <= NATIVE_PREFILL_TOKENS
            and kind
            and self.native_rows
        ):
            return kernels.RowsDecoder(self.model, cache).prefill(x[0], pos, kind)
        if pads is None:
            return self.model(x, pos=pos, cache=cache, last_only=True, rope_kind=kind)
        # left padding: per-row rotary positions and a mask hiding pad keys
        slots = torch.arange(pos, pos + T, device=x.device)
        positions = (slots[None, :] - pads[:, None]).clamp(min=0)
        keys = torch.arange(pos + T, device=x.device)
        causal = keys[None, :] <= slots[:, None]  # (T, pos+T)
        mask = causal[None] & (keys[None, None, :] >= pads[:, None, None])  # (B, T, pos+T)
        return self.model(
            x, pos=pos, cache=cache, positions=positions, mask=mask[:, None], last_only=True, rope_kind=kind
        )
