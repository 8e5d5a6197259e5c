"""Log-likelihood scoring: what multiple-choice benchmarks, held-out loss, perplexity and bits-per-byte are
made of (the one place they are defined).

Semantics follow lm-evaluation-harness's causal HF model (`HFLM`) so scores are comparable:
- a request is (context ids, continuation ids); the model sees (context + continuation)[-(L+1):][:-1]
  (left-truncated to the context length L) and the continuation's log-probs are summed; `greedy` says
  whether every continuation token was the argmax;
- text pairs are tokenized as lm-eval's `_encode_pair`: trailing spaces of the context move to the
  continuation, the whole string is encoded and split at len(encode(context)); an empty context is the
  prefix token (BOS, else EOS);
- rolling log-likelihood (perplexity) cuts the text into disjoint windows of L tokens, the first one
  conditioned on the prefix token, as lm-eval's `get_rolling_token_windows(context_len=1)`.

Batches are right-padded (a causal model never looks right, so pads change nothing) and sized by a token
budget, because the logits of a batch cost B * T * vocab floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..model import KVCache, Transformer

Request = tuple[list[int], list[int]]  # (context ids, continuation ids)


def _model(engine_or_model) -> Transformer:
    return engine_or_model if isinstance(engine_or_model, Transformer) else engine_or_model.model


@torch.inference_mode()
def loglikelihood_tokens(
    engine_or_model,
    requests: Sequence[Request],
    max_tokens: int = 4096,
    batch_size: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    share_context: bool = True,
) -> list[tuple[float, bool]]:
    """Sum of log p(continuation | context) and the greedy-match flag, for every request.

    Requests whose model input shares everything up to the continuation (the options of one multiple-
    choice question) run the shared part once and the continuations as a batch over its KV cache
    (`share_context`). The rest are sorted longest first and packed into batches of at most `max_tokens`
    padded tokens (and at most `batch_size` rows when given; batch_size=1 scores one request at a time)."""
    model = _model(engine_or_model)
    L = model.cfg.max_position_embeddings
    inputs: list[tuple[list[int], list[int]] | None] = []
    for i, (ctx, cont) in enumerate(requests):
        if not cont:
            inputs.append(None)
            continue
        whole = (list(ctx) + list(cont))[-(L + 1) :]
        if len(whole) < 2:
            raise ValueError(f"request {i}: needs at least one context token (got an empty context)")
        inputs.append((whole[:-1], list(cont)[-(len(whole) - 1) :]))
    out: list[tuple[float, bool]] = [(0.0, True)] * len(requests)
    todo = [i for i, x in enumerate(inputs) if x is not None]
    if share_context and batch_size != 1:
        groups: dict[tuple, list[int]] = {}
        for i in todo:  # prefix = the input up to and including the token that predicts cont[0]
            inp, cont = inputs[i]
            groups.setdefault(tuple(inp[: len(inp) - len(cont) + 1]), []).append(i)
        todo = []
        for prefix, members in groups.items():
            if len(members) == 1 or not _can_share(model, len(prefix), members, inputs):
                todo += members
                continue
            res = _score_group(model, list(prefix), [inputs[i][1] for i in members])
            for i, r in zip(members, res, strict=True):
                out[i] = r
            if on_batch:
                on_batch(len(members))
    _score_batches(
        model, inputs, sorted(todo, key=lambda i: -len(inputs[i][0])), out, max_tokens, batch_size, on_batch
    )
    return out


def _can_share(model: Transformer, n_prefix: int, members, inputs) -> bool:
    # LongRoPE picks its factors from the longest position of a call: a prefix scored on its own could get
    # other factors than the full sequence, so share only below the switch point
    cfg = model.cfg
    longest = n_prefix + max(len(inputs[i][1]) for i in members) - 1
    return not cfg.rope_scaling or longest <= (cfg.original_max_position_embeddings or 0)


def _score_rows(head, rows: torch.Tensor, conts: list[list[int]]) -> list[tuple[float, bool]]:
    """rows: the hidden states that predict each continuation token, all continuations concatenated."""
    logp = head(rows).float().log_softmax(-1)
    res, k = [], 0
    for cont in conts:
        lp, k = logp[k : k + len(cont)], k + len(cont)
        tgt = torch.tensor(cont, device=rows.device)
        res.append((lp.gather(-1, tgt[:, None]).sum().item(), bool((lp.argmax(-1) == tgt).all())))
    return res


def _score_group(model: Transformer, prefix: list[int], conts: list[list[int]]) -> list[tuple[float, bool]]:
    """One prefix, several continuations: prefill the prefix once, then the continuations (minus their last
    token, which predicts nothing) as a right-padded batch over copies of its KV cache."""
    dev = next(model.parameters()).device
    S = max(len(c) for c in conts) - 1
    cache = KVCache(model.cfg, 1, len(prefix) + S, dev, next(model.parameters()).dtype)
    first, head = _hidden_states(model, torch.tensor([prefix], device=dev), cache=cache)
    h0 = first[0, -1:]
    rest = None
    if S > 0:
        G = len(conts)
        big = KVCache(model.cfg, G, len(prefix) + S, dev, cache.k.dtype)
        big.k[:, :, :, : len(prefix)] = cache.k[:, :, :, : len(prefix)]
        big.v[:, :, :, : len(prefix)] = cache.v[:, :, :, : len(prefix)]
        x = torch.zeros(G, S, dtype=torch.long, device=dev)
        for g, c in enumerate(conts):
            x[g, : len(c) - 1] = torch.tensor(c[:-1])
        rest, _ = _hidden_states(model, x, pos=len(prefix), cache=big)
    rows = torch.cat(
        [torch.cat([h0, rest[g, : len(c) - 1]]) if rest is not None else h0 for g, c in enumerate(conts)]
    )
    return _score_rows(head, rows, conts)


def _score_batches(model, inputs, order, out, max_tokens, batch_size, on_batch) -> None:
    dev = next(model.parameters()).device
    pos = 0
    while pos < len(order):
        T = len(inputs[order[pos]][0])  # longest in the batch (sorted)
        n = max(1, max_tokens // T)
        if batch_size:
            n = min(n, batch_size)
        idx = order[pos : pos + n]
        x = torch.zeros(len(idx), T, dtype=torch.long)
        for r, i in enumerate(idx):
            x[r, : len(inputs[i][0])] = torch.tensor(inputs[i][0])
        hidden, head = _hidden_states(model, x.to(dev))
        # the vocabulary projection only where a continuation token is predicted: B*T*V logits cost
        # more than the whole transformer on small models
        spans = [(len(inputs[i][0]) - len(inputs[i][1]), len(inputs[i][0])) for i in idx]
        rows = torch.cat([hidden[r, a:b] for r, (a, b) in enumerate(spans)])
        for i, res in zip(idx, _score_rows(head, rows, [inputs[i][1] for i in idx]), strict=True):
            out[i] = res
        pos += len(idx)
        if on_batch:
            on_batch(len(idx))


def _hidden_states(model: Transformer, x: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.nn.Module]:
    """Final-norm hidden states (B, T, H) and the lm_head, by running the model with the head swapped out."""
    head = model.lm_head
    model.lm_head = torch.nn.Identity()
    try:
        return model(x, **kw), head
    finally:
        model.lm_head = head


def prefix_token(engine) -> int:
    """The token an empty context becomes: BOS when the tokenizer has one, else EOS (as lm-eval)."""
    tok = engine.tok
    for t in (tok.bos_id if tok else None, tok.eos_id if tok else None, engine.cfg.eos_token_id):
        if isinstance(t, list):
            t = t[0] if t else None
        if t is not None:
            return t
    raise ValueError("model has neither a BOS nor an EOS token: cannot score an empty context")


def encode_pair(engine, context: str, continuation: str) -> Request:
    """lm-eval's `_encode_pair` (+ its empty-context rule) with the engine's tokenizer."""
    tok = engine.tokenizer
    if context == "":
        cont = tok.encode(continuation)
        p = prefix_token(engine)
        return ([p], cont) if cont[:1] != [p] else (cont[:1], cont[1:])
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context)
    return whole[: len(ctx)], whole[len(ctx) :]


def loglikelihood(
    engine, pairs: Sequence[tuple[str, str]], max_tokens: int = 4096, batch_size: int | None = None, **kw
) -> list[tuple[float, bool]]:
    """log p(continuation | context) and greedy flag for text pairs (multiple-choice scoring)."""
    reqs = [encode_pair(engine, c, x) for c, x in pairs]
    return loglikelihood_tokens(engine, reqs, max_tokens=max_tokens, batch_size=batch_size, **kw)


def rolling_windows(tokens: list[int], prefix: int, max_len: int) -> list[Request]:
    """Disjoint windows covering every token once; the first is conditioned on `prefix`
    (lm-eval's get_rolling_token_windows(context_len=1) + make_disjoint_window)."""
    out, done = [], 0
    while done < len(tokens):
        end = min(len(tokens), done + max_len)
        ctx = [prefix] + tokens[: end - 1] if done == 0 else tokens[end - max_len - 1 : end - 1]
        cont = tokens[done:end]
        out.append((ctx[: len(ctx) - (len(cont) - 1)], cont))
        done = end
    return out


def loglikelihood_rolling(engine, texts: Sequence[str], max_tokens: int = 4096) -> list[float]:
    """Total log-likelihood of each whole text (for perplexity / bits-per-byte)."""
    L = engine.cfg.max_position_embeddings
    p = prefix_token(engine)
    reqs, owner = [], []
    for i, t in enumerate(texts):
        for w in rolling_windows(engine.tokenizer.encode(t), p, L):
            reqs.append(w)
            owner.append(i)
    totals = [0.0] * len(texts)
    for i, (ll, _) in zip(owner, loglikelihood_tokens(engine, reqs, max_tokens=max_tokens), strict=True):
        totals[i] += ll
    return totals


def bits_per_byte(engine, texts: Sequence[str], max_tokens: int = 4096) -> float:
    """-sum(log2 p) / UTF-8 bytes over all texts: tokenizer-independent, comparable across vocabularies."""
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    if nbytes == 0:
        raise ValueError("bits_per_byte: the texts are empty")
    lls = loglikelihood_rolling(engine, texts, max_tokens=max_tokens)
    return -sum(lls) / (math.log(2) * nbytes)


@torch.inference_mode()
def heldout_loss(
    engine_or_model, windows: torch.Tensor, batch_size: int = 8, chunk: int | None = None
) -> float:
    """Mean next-token loss (nats/token) over windows (n, T + 1) of held-out token ids, every token after a
    window's first being a target. The training curve's validation loss is this over train/mixture's
    val_batches (train/loop.evaluate computes it inside the loop); the speedrun report reads the same
    windows. chunk=N feeds each window N tokens at a time through the KV cache, so N <= 16 measures a
    quantized model's integer decode kernel instead of the dequantize + matmul prefill."""
    model = _model(engine_or_model)
    if len(windows) == 0 or windows.shape[1] < 2:
        raise ValueError(f"heldout_loss: no targets in windows of shape {tuple(windows.shape)}")
    total = 0.0
    for x in windows.split(batch_size if chunk is None else 1):
        if chunk is None:
            total += float(model(x[:, :-1], targets=x[:, 1:], reduction="sum"))
            continue
        T = x.shape[1] - 1
        cache = KVCache(model.cfg, 1, T)
        logits = torch.cat(
            [model(x[:, i : min(i + chunk, T)], pos=i, cache=cache) for i in range(0, T, chunk)], 1
        )
        total += float(F.cross_entropy(logits[0].float(), x[0, 1:], reduction="sum"))
    return total / windows[:, 1:].numel()


def perplexity(engine_or_model, ids: Sequence[int], seq: int = 256, chunk: int | None = None) -> float:
    """exp(heldout_loss) over the non-overlapping windows of seq + 1 tokens that fit in `ids`."""
    starts = range(0, len(ids) - seq, seq)
    if not starts:
        raise ValueError(f"perplexity needs more than {seq} tokens, got {len(ids)}")
    windows = torch.tensor([list(ids[s : s + seq + 1]) for s in starts])
    return math.exp(heldout_loss(engine_or_model, windows, batch_size=1, chunk=chunk))
