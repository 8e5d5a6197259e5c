"""The generation engine against transformers' generate: greedy, left-padded batches, LongRoPE re-prefill,
repetition penalty; plus stop ids, stop strings with streaming, seeded sampling, bad input and text helpers.

Models are tiny with random weights scaled up (std 0.1 instead of 0.02) so that greedy decoding is
chaotic rather than stuck on one token: a token-for-token match over 64+ steps then means something.
"""

from __future__ import annotations

import inspect
import json
import re
import textwrap
from types import SimpleNamespace

import pytest
import torch

from phiforge.infer.engine import Engine, Result
from phiforge.infer.sampling import SamplingParams
from phiforge.model import ModelConfig, get_preset, load_model, save_model
from phiforge.model.transformer import KVCache
from phiforge.tokenizer import train_bpe

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB = 512
PAD = 0

CONFIGS = {
    # the "tiny" preset's shape (phi3 block, MHA, tied embeddings, eos 0) in 2 layers
    "phi3-tiny": lambda: get_preset("tiny").replace(vocab_size=VOCAB, num_hidden_layers=2),
    # Phi-3 block with GQA (4 query heads over 2 kv heads), untied
    "phi3-gqa": lambda: get_preset("phi-3-mini-4k").replace(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        original_max_position_embeddings=256,
        sliding_window=None,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=PAD,
    ),
    # phi-1/2 block: LayerNorm, parallel attention + gelu_new MLP, biases, partial rotary 0.5
    "phi": lambda: ModelConfig(
        arch="phi",
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        partial_rotary_factor=0.5,
        hidden_act="gelu_new",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    ),
}


def longrope_cfg() -> ModelConfig:
    """Switch to the long factors past 32 positions (max 1024); long factors far from the short ones."""
    half = 64 // 4 // 2
    return ModelConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        original_max_position_embeddings=32,
        rope_scaling={
            "type": "longrope",
            "short_factor": [1.0 + 0.1 * i for i in range(half)],
            "long_factor": [1.0 + i for i in range(half)],
        },
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=PAD,
    )


@torch.no_grad()
def hf_load(path):
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # compared runs never stop early (the engine: ignore_eos)
    return hf


def rand_prompt(n: int, seed: int, vocab: int = VOCAB) -> list[int]:
    # ids >= 5 so that no prompt starts with a special/pad id
    return torch.randint(5, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.no_grad()
def hf_generate(hf, prompts: list[list[int]], n: int, **kw) -> list[list[int]]:
    """transformers' generate on a left-padded batch; returns each row's new tokens."""
    T = max(map(len, prompts))
    ids = torch.full((len(prompts), T), PAD, dtype=torch.long)
    am = torch.zeros(len(prompts), T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = torch.tensor(p)
        am[i, T - len(p) :] = 1
    kw.setdefault("do_sample", False)
    out = hf.generate(ids, attention_mask=am, max_new_tokens=n, min_new_tokens=0, pad_token_id=PAD, **kw)
    return out[:, T:].tolist()


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, ignore_eos=True, **kw)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is faster than two, and immune to other jobs on the CPU (two
    OpenMP threads on a busy 2-core box slow these tests down tenfold)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory, model_factory):
    cfg = CONFIGS[request.param]()
    path = tmp_path_factory.mktemp(request.param)
    save_model(model_factory(cfg), path)
    ns = SimpleNamespace(name=request.param, cfg=cfg, path=path, engine=Engine.load(path), hf=hf_load(path))
    yield ns
    del ns.engine, ns.hf


# ---------------------------------------------------------------------------------------------------
# Token for token against transformers


def test_greedy_matches_transformers(pair):
    prompt = rand_prompt(12, seed=1)
    r = pair.engine.generate([prompt], greedy(80))[0]
    assert isinstance(r, Result)
    assert r.finish_reason == "length" and len(r.tokens) == 80 and r.prompt_tokens == 12
    assert len(set(r.tokens)) > 10, "degenerate model: the comparison would be too weak"
    assert r.tokens == hf_generate(pair.hf, [prompt], 80)[0]


def test_batched_left_padding_matches_transformers(pair):
    prompts = [rand_prompt(n, seed=10 + n) for n in (15, 9, 3, 15)]
    n = 40
    got = pair.engine.generate(prompts, greedy(n))
    want = hf_generate(pair.hf, prompts, n)
    for i, (r, w) in enumerate(zip(got, want, strict=True)):
        assert r.tokens == w, (pair.name, i)
        assert r.prompt_tokens == len(prompts[i]) and r.finish_reason == "length"
    # each row equals the same prompt run alone (no padding)
    for i, p in enumerate(prompts):
        assert pair.engine.generate([p], greedy(n))[0].tokens == got[i].tokens, (pair.name, i)


def test_repeated_prompts_are_prefilled_once(gqa, monkeypatch):
    """K samples of one prompt (PTS, pass@k) prefill it once; the copied cache rows equal a full prefill."""
    a, b = rand_prompt(11, seed=3), rand_prompt(6, seed=4)
    prompts = [a, b, a, a, b]
    T, total = 11, 30
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = torch.tensor(p)
    pads = torch.tensor([T - len(p) for p in prompts])
    seen = []
    real = Engine._prefill
    monkeypatch.setattr(Engine, "_prefill", lambda self, x, *r: seen.append(x.shape[0]) or real(self, x, *r))
    e = gqa.engine
    logits, cache = e._prefill_unique(prompts, ids, total, pads, "short")
    assert seen == [2] and cache.k.shape[1] == len(prompts) and cache.max_len == total
    full = KVCache(gqa.cfg, len(prompts), total)
    want = real(e, ids, full, pads, "short")
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-5)
    for got, ref in ((cache.k, full.k), (cache.v, full.v)):
        torch.testing.assert_close(got[:, :, :, :T], ref[:, :, :, :T], atol=1e-5, rtol=1e-5)
    # sampled rows of one prompt still differ (one generator draws for every row), greedy ones agree
    out = e.generate(prompts, SamplingParams(20, temperature=1.0, seed=0, ignore_eos=True))
    assert out[0].tokens != out[2].tokens or out[0].tokens != out[3].tokens
    g = e.generate(prompts, greedy(20))
    assert g[0].tokens == g[2].tokens == g[3].tokens == e.generate([a], greedy(20))[0].tokens


def test_repetition_penalty_matches_transformers(pair):
    prompt = rand_prompt(12, seed=2)
    n = 64
    plain = pair.engine.generate([prompt], greedy(n))[0].tokens
    r = pair.engine.generate([prompt], greedy(n, repetition_penalty=1.3))[0]
    assert r.tokens != plain  # the penalty changed something
    assert r.tokens == hf_generate(pair.hf, [prompt], n, repetition_penalty=1.3)[0]


def test_longrope_reprefill_matches_transformers(tmp_path, monkeypatch, model_factory):
    cfg = longrope_cfg()
    save_model(model_factory(cfg, seed=3), tmp_path)
    eng, hf = Engine.load(tmp_path), hf_load(tmp_path)

    # count multi-token forwards: the prefill plus exactly one re-prefill when crossing position 32
    widths = []
    forward = eng._forward

    def spy(x, *a, **kw):
        widths.append(x.shape[1])
        return forward(x, *a, **kw)

    monkeypatch.setattr(eng, "_forward", spy)
    prompt = rand_prompt(20, seed=4)
    n = 48  # positions 20..67: past the switch at 32
    r = eng.generate([prompt], greedy(n))[0]
    assert [w for w in widths if w > 1] == [20, 33]
    assert len(r.tokens) == n and len(set(r.tokens)) > 10
    assert r.tokens == hf_generate(hf, [prompt], n)[0]

    # a left-padded batch whose longest row crosses the switch (transformers re-prefills the whole batch)
    prompts = [prompt, rand_prompt(13, seed=5)]
    got = eng.generate(prompts, greedy(30))
    want = hf_generate(hf, prompts, 30)
    assert [g.tokens for g in got] == want

    # a prompt already past the switch: prefilled on the long factors, no re-prefill
    widths.clear()
    long_prompt = rand_prompt(40, seed=6)
    r = eng.generate([long_prompt], greedy(24))[0]
    assert [w for w in widths if w > 1] == [40]
    assert r.tokens == hf_generate(hf, [long_prompt], 24)[0]


@torch.no_grad()
def test_chunked_prefill_equals_one_shot(model_factory):
    """Prompts go through the cache prefill_chunk tokens at a time: the same logits as one forward, also
    for a LongRoPE prompt past the switch whose first chunks lie below it (they must use the long tables)."""
    from phiforge.model import KVCache

    m = model_factory(longrope_cfg(), seed=3)
    one, chunked = Engine(m, prefill_chunk=None), Engine(m, prefill_chunk=7)
    for n in (20, 40):  # below the switch at 32, past it
        x = torch.tensor([rand_prompt(n, seed=n)])
        kind = m.rope.kind_for(n - 1)
        want = one._prefill(x, KVCache(m.cfg, 1, n), None, kind)
        got = chunked._prefill(x, KVCache(m.cfg, 1, n), None, kind)
        assert (got - want).abs().max() < 1e-5 * want.abs().max(), n
    prompts = [rand_prompt(40, seed=6), rand_prompt(13, seed=5)]  # left-padded, crosses the switch
    a = one.generate(prompts, greedy(30, logprobs=0))
    b = chunked.generate(prompts, greedy(30, logprobs=0))
    assert [r.tokens for r in a] == [r.tokens for r in b] and len(set(a[0].tokens)) > 5
    for ra, rb in zip(a, b, strict=True):
        assert max(abs(p - q) for p, q in zip(ra.logprobs, rb.logprobs, strict=True)) < 1e-4


def test_public_prefill_is_generates_and_refuses_bad_shapes(model_factory):
    """Engine.prefill (the server's admission) is generate's prefill: the same logits and cache, the rotary
    tables of the prompt's last position by default; shapes the cache cannot hold are one-line errors."""
    from phiforge.model import KVCache

    m = model_factory(longrope_cfg(), seed=3)
    eng = Engine(m, prefill_chunk=7)
    for n in (20, 40):  # below the LongRoPE switch at 32, past it: the default kind follows the prompt
        x = torch.tensor([rand_prompt(n, seed=n)])
        a, b = KVCache(m.cfg, 1, n), KVCache(m.cfg, 1, n)
        want = eng._prefill(x, a, None, m.rope.kind_for(n - 1))
        assert torch.equal(eng.prefill(x, b), want) and torch.equal(a.k, b.k) and torch.equal(a.v, b.v)
    x = torch.tensor([rand_prompt(8, seed=1)])
    for ids, cache in ((x, KVCache(m.cfg, 1, 4)), (x[:, :0], KVCache(m.cfg, 1, 8)), (x[0], KVCache(m.cfg, 1, 8)),
                       (x.repeat(2, 1), KVCache(m.cfg, 1, 8))):  # fmt: skip
        with pytest.raises(ValueError, match=r"prefill: ids must be \(rows, tokens\).*got shape"):
            eng.prefill(ids, cache)


# ---------------------------------------------------------------------------------------------------
# Stop ids


@pytest.fixture(scope="module")
def gqa(model_factory):
    cfg = CONFIGS["phi3-gqa"]()
    return SimpleNamespace(cfg=cfg, engine=Engine(model_factory(cfg)))


def _first_new_token(tokens: list[int], start: int, avoid=()) -> int:
    """Index of the first token at or after `start` that does not occur earlier (nor in `avoid`)."""
    for k in range(start, len(tokens)):
        if tokens[k] not in tokens[:k] and tokens[k] not in avoid:
            return k
    raise AssertionError("no fresh token in the output")


def test_eos_stops_generation(gqa, tmp_path, model_factory):
    prompt = rand_prompt(10, seed=7)
    full = gqa.engine.generate([prompt], greedy(48))[0].tokens
    k = _first_new_token(full, 8)
    eos = full[k]
    # the same weights with eos_token_id = that token
    cfg = gqa.cfg.replace(eos_token_id=eos)
    eng = Engine(model_factory(cfg))
    r = eng.generate([prompt], SamplingParams(max_new_tokens=48))[0]
    assert r.finish_reason == "stop"
    assert r.tokens == full[:k] and eos not in r.tokens
    # a list of eos ids works the same
    r2 = Engine(model_factory(cfg.replace(eos_token_id=[VOCAB - 1, eos]))).generate(
        [prompt], SamplingParams(48)
    )[0]
    assert r2.tokens == full[:k] and r2.finish_reason == "stop"
    # ignore_eos: runs to max_new_tokens, eos included
    r3 = eng.generate([prompt], SamplingParams(max_new_tokens=48, ignore_eos=True))[0]
    assert r3.finish_reason == "length" and r3.tokens == full and eos in r3.tokens
    # transformers with that eos: its output is ours plus the eos token
    save_model(model_factory(cfg), tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=48, do_sample=False, pad_token_id=PAD)
    assert out[0, len(prompt) :].tolist() == full[:k] + [eos]


def test_stop_token_ids_per_row(gqa):
    prompts = [rand_prompt(10, seed=7), rand_prompt(6, seed=8)]
    full = [r.tokens for r in gqa.engine.generate(prompts, greedy(40))]
    k = _first_new_token(full[0], 5, avoid=full[1])
    stop = full[0][k]
    # stop_token_ids work even with ignore_eos (they are the caller's, not the model's)
    got = gqa.engine.generate(prompts, greedy(40, stop_token_ids=[stop]))
    assert got[0].tokens == full[0][:k] and got[0].finish_reason == "stop"
    assert got[1].tokens == full[1] and got[1].finish_reason == "length"  # the other row runs on


def test_max_new_tokens_and_context_limit(gqa):
    prompt = rand_prompt(10, seed=9)
    r = gqa.engine.generate([prompt], greedy(0))[0]
    assert r.tokens == [] and r.finish_reason == "length"
    assert len(gqa.engine.generate([prompt], greedy(1))[0].tokens) == 1
    # a prompt one short of the context: generation ends at the context, without error
    ctx = gqa.cfg.max_position_embeddings
    r = gqa.engine.generate([rand_prompt(ctx - 1, seed=9)], greedy(50))[0]
    assert r.finish_reason == "length" and 1 <= len(r.tokens) <= 2


# ---------------------------------------------------------------------------------------------------
# Stop strings and streaming with a real tokenizer


@pytest.fixture(scope="module")
def text_engine(model_factory):
    lines = inspect.getsource(json).splitlines(keepends=True)
    lines += inspect.getsource(textwrap).splitlines(keepends=True)
    tok = train_bpe(lines, 600)
    cfg = CONFIGS["phi3-gqa"]().replace(
        vocab_size=tok.vocab_size, bos_token_id=None, eos_token_id=0, pad_token_id=0
    )
    return Engine(model_factory(cfg, seed=11), tok)


def _collect(engine, prompts, params):
    pieces: list[tuple[int, int, str]] = []
    results = engine.generate(prompts, params, lambda row, tid, text: pieces.append((row, tid, text)))
    return results, pieces


def test_streaming_concatenates_to_text(text_engine):
    tok = text_engine.tok
    prompts = [tok.encode("def dumps(obj, indent=None):\n    "), tok.encode("class Wrapper:")]
    results, pieces = _collect(text_engine, prompts, greedy(60))
    for row, r in enumerate(results):
        mine = [p for p in pieces if p[0] == row]
        assert "".join(t for _, _, t in mine) == r.text
        assert r.text == tok.decode(r.tokens)
        assert [tid for _, tid, _ in mine if tid != -1] == r.tokens  # one call per generated token
        assert all(tid != -1 for _, tid, _ in mine[:-1])  # a flush only comes last
        assert len(r.tokens) == 60 and len(r.text) > 60


def _fresh_substring(text: str, start: int, n: int) -> str:
    """A clean n-char substring whose first occurrence is at or after `start`."""
    for p in range(start, len(text) - n):
        s = text[p : p + n]
        if text.find(s) == p and "\ufffd" not in s and s.strip():
            return s
    raise AssertionError("no usable stop string in the output")


def test_stop_string(text_engine):
    tok = text_engine.tok
    prompt = tok.encode("def dumps(obj, indent=None):\n    ")
    full = text_engine.generate([prompt], greedy(60))[0]
    text = full.text
    stop = _fresh_substring(text, len(text) // 2, 4)
    want = text[: text.find(stop)]
    assert len(want) >= len(text) // 2

    results, pieces = _collect(text_engine, [prompt], greedy(60, stop=["never-in-the-output", stop]))
    r = results[0]
    assert r.finish_reason == "stop"
    assert r.text == want
    assert "".join(t for _, _, t in pieces) == want
    assert all(stop not in t for _, _, t in pieces) and stop not in r.text
    # the tokens that completed the stop string are kept; one fewer would not contain it
    assert r.tokens == full.tokens[: len(r.tokens)] and len(r.tokens) < len(full.tokens)
    assert stop in tok.decode(r.tokens) and stop not in tok.decode(r.tokens[:-1])

    # a stop string spanning several tokens, and a single character
    for s in (_fresh_substring(text, len(text) // 3, 12), _fresh_substring(text, len(text) // 2, 1)):
        results, pieces = _collect(text_engine, [prompt], greedy(60, stop=[s]))
        r = results[0]
        assert r.text == text[: text.find(s)] and r.finish_reason == "stop", s
        assert "".join(t for _, _, t in pieces) == r.text and all(s not in t for _, _, t in pieces)
        if len(s) > 1:
            assert s not in tok.decode(r.tokens[-1:])  # really split over tokens

    # the earliest of several stop strings wins
    a, b = _fresh_substring(text, len(text) // 3, 3), _fresh_substring(text, 2 * len(text) // 3, 3)
    r = text_engine.generate([prompt], greedy(60, stop=[b, a]))[0]
    assert r.text == text[: text.find(a)]

    # a stop string that never completes: everything held back is released at the end
    tail = text[-3:] + "\x00"
    results, pieces = _collect(text_engine, [prompt], greedy(60, stop=[tail]))
    assert results[0].text == text and results[0].finish_reason == "length"
    assert "".join(t for _, _, t in pieces) == text
    assert pieces[-1][1] == -1 and pieces[-1][2].endswith(text[-3:])  # the held-back tail, flushed


def test_complete_and_chat_after_load(text_engine, tmp_path):
    save_model(text_engine.model, tmp_path)
    text_engine.tok.save(tmp_path)
    eng = Engine.load(tmp_path)
    assert eng.tok is not None and eng.cfg == text_engine.cfg
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)

    streamed: list[str] = []
    r = eng.complete("def loads(s):", params, on_text=streamed.append)
    assert isinstance(r.text, str) and r.text and len(r.tokens) == 12
    assert r.text == eng.tok.decode(r.tokens) == "".join(streamed)
    assert r.prompt_tokens == len(eng.tok.encode("def loads(s):"))
    again = text_engine.complete("def loads(s):", params)  # the same weights before the round trip
    assert (again.tokens, again.text) == (r.tokens, r.text)

    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is JSON?"}]
    r = eng.chat(msgs, params)
    assert isinstance(r.text, str) and r.text == eng.tok.decode(r.tokens)
    assert r.prompt_tokens == len(eng.tok.apply_chat_template(msgs, add_generation_prompt=True))

    # without a tokenizer: token ids work, text does not
    bare = tmp_path / "bare"
    save_model(load_model(tmp_path), bare)
    eng = Engine.load(bare)
    assert eng.tok is None
    assert len(eng.generate([[5, 6, 7]], params)[0].tokens) == 12
    with pytest.raises(ValueError, match="tokenizer"):
        eng.complete("hi", params)


# ---------------------------------------------------------------------------------------------------
# Seeded sampling


def test_seeded_sampling_is_deterministic(gqa):
    prompt = rand_prompt(8, seed=12)

    def run(seed):
        p = SamplingParams(
            max_new_tokens=32, temperature=0.8, top_k=50, top_p=0.9, seed=seed, ignore_eos=True
        )
        return gqa.engine.generate([prompt], p)[0].tokens

    a = run(123)
    assert len(a) == 32
    assert run(123) == a
    assert run(124) != a or run(125) != a
    # sampling really samples: it departs from greedy
    assert a != gqa.engine.generate([prompt], greedy(32))[0].tokens
    # unseeded sampling follows the global RNG
    torch.manual_seed(0)
    b = gqa.engine.generate([prompt], SamplingParams(32, temperature=0.8, ignore_eos=True))[0].tokens
    torch.manual_seed(0)
    assert gqa.engine.generate([prompt], SamplingParams(32, temperature=0.8, ignore_eos=True))[0].tokens == b


# ---------------------------------------------------------------------------------------------------
# Bad input


def test_bad_prompts(gqa):
    eng, ctx = gqa.engine, gqa.cfg.max_position_embeddings
    for n in (ctx, ctx + 50):
        with pytest.raises(ValueError, match=rf"{n} tokens.*context is {ctx}"):
            eng.generate([rand_prompt(n, seed=1)], greedy(4))
    with pytest.raises(ValueError, match="empty"):
        eng.generate([[]], greedy(4))
    with pytest.raises(ValueError, match="empty"):
        eng.generate([[5, 6], []], greedy(4))
    for bad in (VOCAB, VOCAB + 100, -1):
        with pytest.raises(ValueError, match=re.escape(f"token id {bad} outside the vocabulary")):
            eng.generate([[5, bad, 6]], greedy(4))


@pytest.mark.parametrize(
    "kw",
    [
        {"top_p": 0.0},
        {"top_p": -0.1},
        {"top_p": 1.5},
        {"top_k": -1},
        {"temperature": -0.5},
        {"max_new_tokens": -1},
        {"repetition_penalty": 0.0},
        {"repetition_penalty": -1.0},
    ],
)
def test_bad_sampling_params(kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name):
        SamplingParams(**kw)


@torch.no_grad()
def test_logprobs_are_the_models_raw_distribution(gqa):
    """Each generated token's logprob (and its top alternatives) equals log_softmax of a teacher-forced
    forward over prompt + output, in a left-padded batch, with sampling and a repetition penalty on."""
    eng = gqa.engine
    prompts = [[5, 9, 14, 3, 7, 11], [8, 42, 6]]
    params = SamplingParams(
        max_new_tokens=12, temperature=0.8, seed=3, repetition_penalty=1.3, ignore_eos=True, logprobs=4
    )
    for prompt, res in zip(prompts, eng.generate(prompts, params), strict=True):
        assert len(res.logprobs) == len(res.top_logprobs) == len(res.tokens) == 12
        seq = torch.tensor([prompt + res.tokens])
        lp = eng.model(seq)[0, len(prompt) - 1 : -1].float().log_softmax(-1)
        for k, tid in enumerate(res.tokens):
            assert abs(res.logprobs[k] - lp[k, tid].item()) < 1e-4
            ids, vals = zip(*res.top_logprobs[k], strict=True)
            assert list(ids) == lp[k].topk(4).indices.tolist()
            assert max(abs(a - b) for a, b in zip(vals, lp[k].topk(4).values.tolist(), strict=True)) < 1e-4
    greedy = eng.generate([prompts[0]], SamplingParams(max_new_tokens=5, ignore_eos=True, logprobs=0))[0]
    assert greedy.top_logprobs == [[]] * 5 and all(v <= 0 for v in greedy.logprobs)
    assert eng.generate([prompts[0]], SamplingParams(max_new_tokens=5))[0].logprobs is None


def test_rows_are_public(gqa):
    """The Row that Engine.generate drives is the one other decode loops use: same ids, text and finish."""
    eng = gqa.engine
    params = SamplingParams(max_new_tokens=6, stop_token_ids=[7])
    row = eng.new_row(3, params)
    seen = []
    for tid in (4, 5, 7, 9):
        row.accept(tid, lambda t, text: seen.append(t))
    assert row.done and row.finish_reason == "stop" and row.tokens == [4, 5] and seen == [4, 5]
    assert row.result().tokens == [4, 5]
