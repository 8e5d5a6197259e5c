"""Log-likelihood scoring: what multiple-choice benchmarks, perplexity and bits-per-byte are made of.

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

from ..model import Transformer

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
) -> list[tuple[float, bool]]:
    """Sum of log p(continuation | context) and the greedy-match flag, for every request.

    Requests are sorted longest first and packed into batches of at most `max_tokens` padded tokens
    (and at most `batch_size` rows when given; batch_size=1 scores one request at a time)."""
    model = _model(engine_or_model)
    L = model.cfg.max_position_embeddings
    inputs = []
    for i, (ctx, cont) in enumerate(requests):
        if not cont:
            inputs.append(None)
            continue
        whole = (list(ctx) + list(cont))[-(L + 1) :]
        if len(whole) < 2:
            raise ValueError(f"request {i}: needs at least one context token (got an empty context)")
        inputs.append((whole[:-1], list(cont)[-(len(whole) - 1) :]))
    out: list[tuple[float, bool]] = [(0.0, True)] * len(requests)
    order = sorted((i for i, x in enumerate(inputs) if x is not None), key=lambda i: -len(inputs[i][0]))
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
        logp = model(x.to(dev)).float().log_softmax(-1)
        for r, i in enumerate(idx):
            inp, cont = inputs[i]
            lp = logp[r, len(inp) - len(cont) : len(inp)]
            tgt = torch.tensor(cont, device=dev)
            ll = lp.gather(-1, tgt[:, None]).sum().item()
            out[i] = (ll, bool((lp.argmax(-1) == tgt).all()))
        pos += len(idx)
        if on_batch:
            on_batch(len(idx))
    return out


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
    tok = engine._tok()
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
        for w in rolling_windows(engine._tok().encode(t), p, L):
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
