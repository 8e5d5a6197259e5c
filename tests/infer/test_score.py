"""Log-likelihood scoring against transformers' logits, batching invariance, greedy flag, truncation,
rolling windows (lm-eval's definition) and bits-per-byte on a model whose distribution is known."""

from __future__ import annotations

import math

import pytest
import torch

from phiforge.infer import score
from phiforge.infer.engine import Engine
from phiforge.infer.sampling import SamplingParams
from phiforge.model import build, get_preset, save_model
from phiforge.tokenizer import train_bpe

TEXT = "the quick brown fox jumps over the lazy dog. " * 40 + "def f(x):\n    return x + 1\n" * 20


@pytest.fixture(scope="module")
def mdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("score-model")
    tok = train_bpe([TEXT], vocab_size=300)
    cfg = get_preset("tiny").replace(vocab_size=300, num_hidden_layers=2, max_position_embeddings=64)
    m = build(cfg, seed=1)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.mul_(5.0)
    save_model(m, d)
    tok.save(d)
    return d


@pytest.fixture(scope="module")
def engine(mdir):
    torch.set_num_threads(1)
    return Engine.load(mdir)


def reqs(seed=0, n=7):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        c = torch.randint(5, 300, (int(torch.randint(1, 40, (1,), generator=g)),), generator=g).tolist()
        x = torch.randint(5, 300, (1 + i % 4,), generator=g).tolist()
        out.append((c, x))
    return out


def test_matches_transformers_logits(mdir, engine):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(mdir), dtype=torch.float32).eval()
    rs = reqs()
    got = score.loglikelihood_tokens(engine, rs)
    for (ctx, cont), (ll, greedy) in zip(rs, got, strict=True):
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            lp = hf(ids).logits[0, :-1].float().log_softmax(-1)
        tgt = torch.tensor(cont)
        rows = lp[len(ctx) - 1 :]
        assert ll == pytest.approx(rows.gather(-1, tgt[:, None]).sum().item(), abs=1e-4)
        assert greedy == bool((rows.argmax(-1) == tgt).all())


def test_shared_context_options_match_transformers(mdir, engine):
    """Multiple-choice shape: one context, options of 1..5 tokens; the shared-prefix path (prefill once,
    options over copies of the KV cache) against transformers and against scoring each pair whole."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(mdir), dtype=torch.float32).eval()
    ctx = list(range(20, 50))
    rs = [(ctx, [7]), (ctx, [9, 10, 11]), (ctx, [12, 13]), (ctx, [60, 61, 62, 63, 64]), (ctx[:10], [5, 6])]
    shared = score.loglikelihood_tokens(engine, rs)
    plain = score.loglikelihood_tokens(engine, rs, share_context=False)
    for (c, x), a, b in zip(rs, shared, plain, strict=True):
        with torch.no_grad():
            lp = hf(torch.tensor([c + x])).logits[0, :-1].float().log_softmax(-1)[len(c) - 1 :]
        ref = lp.gather(-1, torch.tensor(x)[:, None]).sum().item()
        assert a[0] == pytest.approx(ref, abs=1e-4) and b[0] == pytest.approx(ref, abs=1e-4)
        assert a[1] == b[1]


def test_batched_equals_one_at_a_time(engine):
    rs = reqs(seed=3, n=12)
    a = score.loglikelihood_tokens(engine, rs)
    b = score.loglikelihood_tokens(engine, rs, batch_size=1)
    c = score.loglikelihood_tokens(engine, rs, max_tokens=50)  # several small batches
    for x, y, z in zip(a, b, c, strict=True):
        assert x[0] == pytest.approx(y[0], abs=1e-4) and x[0] == pytest.approx(z[0], abs=1e-4)
        assert x[1] == y[1] == z[1]


def test_greedy_flag_true_for_the_models_own_greedy_continuation(engine):
    ctx = engine.tok.encode("the quick brown")
    gen = engine.generate([ctx], SamplingParams(max_new_tokens=5, ignore_eos=True))[0].tokens
    (ll, greedy), (_, other) = score.loglikelihood_tokens(
        engine, [(ctx, gen), (ctx, gen[:-1] + [gen[-1] ^ 1])]
    )
    assert greedy and not other and ll < 0


def test_long_context_is_left_truncated(engine):
    L = engine.cfg.max_position_embeddings
    ctx, cont = list(range(5, 5 + 100)), [7, 8]
    whole = (ctx + cont)[-(L + 1) :]
    (a, _), (b, _) = score.loglikelihood_tokens(engine, [(ctx, cont), (whole[:-2], cont)])
    assert a == pytest.approx(b, abs=1e-5)


def test_encode_pair_moves_trailing_space_and_handles_empty_context(engine):
    c, x = score.encode_pair(engine, "Question: why? Answer: ", "because")
    tok = engine.tok
    assert tok.decode(c) == "Question: why? Answer:" and tok.decode(x) == " because"
    c, x = score.encode_pair(engine, "", "hello")
    assert c == [score.prefix_token(engine)] and tok.decode(x) == "hello"


def test_rolling_windows_cover_every_token_once():
    toks = list(range(10, 10 + 23))
    wins = score.rolling_windows(toks, prefix=0, max_len=8)
    assert [t for _, cont in wins for t in cont] == toks
    assert wins[0][0][0] == 0
    for ctx, cont in wins:
        assert len(ctx) + len(cont) - 1 <= 8  # each window fits the model
    lm_utils = pytest.importorskip("lm_eval.utils")
    ref = [
        lm_utils.make_disjoint_window(w)
        for w in lm_utils.get_rolling_token_windows(toks, prefix_token=0, max_seq_len=8, context_len=1)
    ]
    assert [tuple(map(list, w)) for w in ref] == [tuple(w) for w in wins]


def test_rolling_single_window_equals_loglikelihood(engine):
    text = "the lazy dog jumps"
    ids = engine.tok.encode(text)
    (ll, _) = score.loglikelihood_tokens(engine, [([score.prefix_token(engine)], ids)])[0]
    assert score.loglikelihood_rolling(engine, [text])[0] == pytest.approx(ll, abs=1e-5)


def test_bits_per_byte_of_a_uniform_model(mdir):
    # final norm weight 0 -> every logit 0 -> uniform over the vocabulary: bpb = tokens * log2(V) / bytes
    eng = Engine.load(mdir)
    with torch.no_grad():
        eng.model.norm.weight.zero_()
    texts = ["the quick brown fox " * 10, "def f(x):\n    return x\n" * 5]  # the first spans 2 windows
    ntok = sum(len(eng.tok.encode(t)) for t in texts)
    nbytes = sum(len(t.encode()) for t in texts)
    assert ntok > eng.cfg.max_position_embeddings
    assert score.bits_per_byte(eng, texts) == pytest.approx(ntok * math.log2(300) / nbytes, rel=1e-5)
    with pytest.raises(ValueError, match="empty"):
        score.bits_per_byte(eng, [""])


def test_heldout_loss_and_perplexity(mdir):
    eng = Engine.load(mdir)
    ids = eng.tok.encode(TEXT)[: 3 * 32 + 5]
    windows = torch.tensor([ids[s : s + 33] for s in (0, 32, 64)])
    # the token mean over every target, whatever the batching, through the prefill or the KV-cache path
    with torch.no_grad():
        logits = eng.model(windows[:, :-1])
    ref = float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten()))
    assert score.heldout_loss(eng, windows, batch_size=2) == pytest.approx(ref, rel=1e-5)
    assert score.heldout_loss(eng, windows, chunk=8) == pytest.approx(ref, rel=1e-4)
    assert score.perplexity(eng, ids, seq=32) == pytest.approx(math.exp(ref), rel=1e-5)
    with torch.no_grad():  # uniform over the vocabulary: perplexity is its size
        eng.model.norm.weight.zero_()
    assert score.perplexity(eng, ids, seq=32) == pytest.approx(300, rel=1e-5)
    with pytest.raises(ValueError, match="more than 32 tokens"):
        score.perplexity(eng, ids[:32], seq=32)
