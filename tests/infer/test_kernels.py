"""DecodeLinear's paths (the native gemv for 1 row, oneDNN for a few, the native many-row kernel from
SGEMM_ROWS): same numbers as F.linear (to fp32 reassociation), every shape, and a fallback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from phiforge.infer import kernels

needs_cc = pytest.mark.skipif(kernels.library() is None, reason="no C compiler: engine uses the PyTorch path")


@needs_cc
@pytest.mark.parametrize(("out", "inp"), [(1, 1), (7, 33), (64, 256), (300, 1000), (513, 96), (8192, 128)])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_matches_linear(out, inp, bias):
    g = torch.Generator().manual_seed(out * inp)
    w = torch.randn(out, inp, generator=g)
    b = torch.randn(out, generator=g) if bias else None
    x = torch.randn(1, 1, inp, generator=g)
    got, want = kernels.gemv(x, w, b), F.linear(x, w, b)
    assert got.shape == want.shape == (1, 1, out)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * inp**0.5)


@needs_cc
def test_decode_linear_leaves_few_rows_and_training_to_f_linear():
    lin = torch.nn.Linear(64, 32)
    lin.__class__ = kernels.DecodeLinear
    x = torch.randn(kernels.DNN_ROWS - 1, 64)
    with torch.no_grad():
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias))  # too few rows: F.linear path
        torch.testing.assert_close(lin(x[:1]), F.linear(x[:1], lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
    y = lin(x[:1])  # grad enabled: must stay differentiable
    y.sum().backward()
    assert lin.weight.grad is not None


@pytest.mark.parametrize(("out", "inp"), [(7, 33), (100, 300), (513, 96), (768, 768), (9, 1030)])
@pytest.mark.parametrize("shape", [(kernels.DNN_ROWS,), (kernels.SGEMM_ROWS,), (32,), (3, 37), (1, 200)])
@pytest.mark.parametrize("bias", [False, True])
def test_decode_linear_many_rows_match_linear(out, inp, shape, bias):
    # DNN_ROWS and more rows (a prefill chunk, a batched decode step) go to oneDNN or, from SGEMM_ROWS, the
    # native kernel: within fp32 reassociation
    lin = torch.nn.Linear(inp, out, bias=bias)
    lin.__class__ = kernels.DecodeLinear
    x = torch.randn(*shape, inp, generator=torch.Generator().manual_seed(out + inp))
    with torch.no_grad():
        got, want = lin(x), F.linear(x, lin.weight, lin.bias)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * inp**0.5)
    y = lin(x)  # grad enabled: F.linear itself, differentiable
    assert torch.equal(y, want)
    y.sum().backward()
    assert lin.weight.grad is not None


@needs_cc
@pytest.mark.skipif(kernels.isa() == "scalar", reason="the native many-row fp32 kernel needs AVX2")
@pytest.mark.parametrize(
    ("rows", "out", "inp", "threads"),
    [
        (8, 6, 8, 1),  # one tile, half of its 16 rows padding
        (17, 13, 1030, 1),  # a 1-row second block, a 1-row last weight block
        (32, 2304, 768, 2),  # the ~160M qkv at 32 rows, weight blocks split over 2 threads
        (24, 7, 8192 + 40, 2),  # two K blocks (SG_KC = 8192), the last 40 wide
        (100, 1, 1, 1),
    ],
)
@pytest.mark.parametrize("bias", [False, True])
def test_sgemm_matches_float64_product(rows, out, inp, threads, bias):
    g = torch.Generator().manual_seed(rows * out + inp)
    x, w = torch.randn(rows, inp, generator=g), torch.randn(out, inp, generator=g)
    b = torch.randn(out, generator=g) if bias else None
    want = x.double() @ w.double().T + (b.double() if bias else 0)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = kernels.sgemm(x.view(1, rows, inp), w, b)
    finally:
        torch.set_num_threads(old)
    assert got.shape == (1, rows, out) and got.dtype == torch.float32
    # one fp32 fma chain per output and K block: within fp32 rounding of the exact product
    torch.testing.assert_close(got[0].double(), want, rtol=1e-5, atol=2e-5 * inp**0.5)


@pytest.mark.slow  # a phiforge subprocess, ~11 s
def test_engine_without_native_kernels_still_generates():
    code = (
        "import torch\n"
        "from phiforge.model import ModelConfig, build\n"
        "from phiforge.infer.engine import Engine\n"
        "from phiforge.infer.sampling import SamplingParams\n"
        "cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,"
        " num_attention_heads=2, max_position_embeddings=64, eos_token_id=None, pad_token_id=0)\n"
        "m = build(cfg, seed=0)\n"
        "ref = [int(m(torch.tensor([[1, 2, 3]]))[0, -1].argmax())]\n"
        "e = Engine(m)\n"
        "assert type(m.blocks[0].attn.qkv) is torch.nn.Linear\n"
        "assert not m.blocks[0].attn.qkv.weight.is_contiguous()  # column-major decode layout\n"
        "r = e.generate([[1, 2, 3]], SamplingParams(max_new_tokens=1, ignore_eos=True))[0]\n"
        "assert r.tokens == ref, (r.tokens, ref)\n"
    )
    env = {**os.environ, "PHIFORGE_KERNELS": "0"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


@needs_cc
@pytest.mark.parametrize(
    "shape",
    [
        dict(num_attention_heads=4, num_key_value_heads=4),
        dict(num_attention_heads=6, num_key_value_heads=2, partial_rotary_factor=0.75),  # Phi-4-mini-like
        dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True),
    ],
)
def test_native_phi3_decode_matches_pytorch_forward(shape):
    from phiforge.model import KVCache, ModelConfig, build

    cfg = ModelConfig(
        vocab_size=300,
        hidden_size=96,
        intermediate_size=160,
        num_hidden_layers=2,
        max_position_embeddings=128,
        eos_token_id=None,
        pad_token_id=0,
        **shape,
    )
    model = build(cfg, seed=1).eval()
    for p in model.parameters():  # larger weights and non-trivial norms: a wrong index would show
        p.data.normal_(0, 0.2) if p.dim() > 1 else p.data.uniform_(0.5, 1.5)
    seq = torch.randint(0, cfg.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = model(seq)  # full causal forward, no cache
        cache = KVCache(cfg, 1, 64)
        model(seq[:, :8], pos=0, cache=cache)
        dec = kernels.Phi3Decoder(model, cache)
        for t in range(8, 40):
            got = dec(int(seq[0, t]), t, "short")
            torch.testing.assert_close(
                got[0, 0], want[0, t], rtol=1e-5, atol=1e-5 * float(want[0, t].abs().max())
            )


@needs_cc
@pytest.mark.parametrize(
    ("shape", "bits"),
    [
        (dict(num_attention_heads=4, num_key_value_heads=4), 32),
        (dict(num_attention_heads=6, num_key_value_heads=2, partial_rotary_factor=0.75), 32),
        (dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True, sliding_window=12), 32),
        (dict(num_attention_heads=6, num_key_value_heads=2), 4),
        (dict(num_attention_heads=4, num_key_value_heads=4), 8),
        (dict(num_attention_heads=1, num_key_value_heads=1), 32),  # head_dim 96: values in 64 + 32 lanes
    ],
)
def test_rows_decode_matches_each_row_alone(shape, bits):
    """RowsDecoder on left-padded rows of different lengths, its cache the first rows of a larger buffer (as the
    server's batcher holds it): each row's logits equal that row's own full forward (no cache, no padding)."""
    from phiforge.infer.quant import quantize_model
    from phiforge.model import KVCache, ModelConfig, build

    cfg = ModelConfig(
        vocab_size=300, hidden_size=96, intermediate_size=160, num_hidden_layers=2, max_position_embeddings=128,
        eos_token_id=None, pad_token_id=0, **shape,
    )  # fmt: skip
    model = build(cfg, seed=1).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.2) if p.dim() > 1 else p.data.uniform_(0.5, 1.5)
    if bits != 32:
        model = quantize_model(model, bits, 32)
    assert kernels.RowsDecoder.supports(model)
    g = torch.Generator().manual_seed(0)
    lens = [9, 3, 14]  # prompt lengths; rows are left-padded to 14 and decoded to slot 30
    seqs = [torch.randint(1, cfg.vocab_size, (n + 16,), generator=g) for n in lens]
    T, B = max(lens), len(lens)
    pads = torch.tensor([T - n for n in lens])
    big = KVCache(cfg, B + 2, 48)  # more rows than the batch: the decoder sees a strided view
    big.k.fill_(float("nan")), big.v.fill_(float("nan"))  # pad slots are never written by the decode steps

    class View:
        k, v, max_len = big.k[:, :B], big.v[:, :B], 48

    ids = torch.zeros(B, T + 16, dtype=torch.long)
    for i, (s, n) in enumerate(zip(seqs, lens, strict=True)):
        ids[i, T - n :] = s
    with torch.inference_mode():
        from phiforge.infer.engine import Engine

        eng = Engine(model)
        eng._forward(ids[:, :T], 0, View, pads)  # the prefill fills pad slots too (finite)
        dec = kernels.RowsDecoder(model, View)
        errs = []
        for t in range(T, T + 16):
            got = dec(ids[:, t], t, "short", pads)
            for i, n in enumerate(lens):
                want = model(seqs[i][None, : n + t - T + 1])[0, -1]
                if bits == 32:
                    torch.testing.assert_close(
                        got[i, 0], want, rtol=1e-4, atol=1e-4 * float(want.abs().max())
                    )
                errs.append(float((got[i, 0] - want).abs().max() / want.abs().max()))
    # int8/int4 round each activation row to int8 in the kernel: a 1e-7 difference upstream (another summation
    # order) can flip one rounding and move that row's logits by ~1e-2 from then on, as in a real batch. So:
    # most (row, step) pairs at fp32 rounding, none past a flip's size (a wrong slot or row is O(1) everywhere)
    errs.sort()
    assert errs[len(errs) // 2] < 1e-5 and errs[int(0.75 * len(errs))] < 1e-3 and errs[-1] < 0.1, errs


@needs_cc
@pytest.mark.parametrize(
    ("shape", "bits"),
    [
        (dict(num_attention_heads=6, num_key_value_heads=2, partial_rotary_factor=0.75), 32),
        (dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True, sliding_window=12), 32),
        (dict(num_attention_heads=6, num_key_value_heads=2), 4),
    ],
)
def test_rows_prefill_matches_full_forward(shape, bits):
    """RowsDecoder.prefill (a prompt's tokens as rows, token t seeing slots <= t) in two chunks, the second at
    slot 13: the last logits and every cached key and value as the PyTorch forward's, and decoding goes on from
    that cache. The sliding window (12) is shorter than the prompt (21)."""
    from phiforge.infer.quant import quantize_model
    from phiforge.model import KVCache, ModelConfig, build

    cfg = ModelConfig(
        vocab_size=300, hidden_size=96, intermediate_size=160, num_hidden_layers=2, max_position_embeddings=128,
        eos_token_id=None, pad_token_id=0, **shape,
    )  # fmt: skip
    model = build(cfg, seed=1).eval()
    torch.manual_seed(1)  # the weights below do not depend on the tests run before in this process
    for p in model.parameters():
        p.data.normal_(0, 0.2) if p.dim() > 1 else p.data.uniform_(0.5, 1.5)
    if bits != 32:
        model = quantize_model(model, bits, 32)
    seq = torch.randint(1, cfg.vocab_size, (1, 22), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = model(seq)[0]
        ref, cache = KVCache(cfg, 1, 32), KVCache(cfg, 1, 32)
        model(seq[:, :21], pos=0, cache=ref)
        dec = kernels.RowsDecoder(model, cache)
        dec.prefill(seq[0, :13], 0, "short")
        got = dec.prefill(seq[0, 13:21], 13, "short")[0, 0]
        step = kernels.Phi3Decoder(model, cache)(int(seq[0, 21]), 21, "short")[0, 0]
    # int4: a 1e-7 difference upstream can flip an activation's int8 rounding, and attention carries that ~1e-2
    # to the later slots; a wrong slot or a look past the causal edge is O(1)
    tol = 1e-4 if bits == 32 else 0.1
    for a, b in ((got, want[20]), (step, want[21])):
        assert (a - b).abs().max() < tol * b.abs().max()
    for a, b in ((cache.k, ref.k), (cache.v, ref.v)):
        err = (a[:, :, :, :21] - b[:, :, :, :21]).abs().amax(dim=(0, 1, 2, 4))  # per slot
        scale = b[:, :, :, :21].abs().max()  # written slots only: the rest is torch.empty's (NaN at times)
        assert err[0] < 1e-5 * scale and err.max() < tol * scale, err  # slot 0: no rounding to flip before it


@needs_cc
def test_engine_prefills_short_prompts_natively():
    # greedy tokens the same with the native prefill and the PyTorch forward; a long prompt takes the forward
    from phiforge.infer.engine import NATIVE_PREFILL_TOKENS, Engine
    from phiforge.infer.sampling import SamplingParams
    from phiforge.model import ModelConfig, build

    cfg = ModelConfig(
        vocab_size=300, hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256, eos_token_id=None,
    )  # fmt: skip
    eng = Engine(build(cfg, seed=1))
    assert eng.native_rows
    calls = []
    real = kernels.RowsDecoder.prefill
    kernels.RowsDecoder.prefill = lambda self, *a: calls.append(a[0].shape[0]) or real(self, *a)
    try:
        for n in (5, NATIVE_PREFILL_TOKENS, NATIVE_PREFILL_TOKENS + 1):
            prompt = torch.randint(1, 300, (n,), generator=torch.Generator().manual_seed(n)).tolist()
            p = SamplingParams(max_new_tokens=6, ignore_eos=True)
            native = eng.generate([prompt], p)[0].tokens
            eng.native_rows = False
            assert eng.generate([prompt], p)[0].tokens == native
            eng.native_rows = True
    finally:
        kernels.RowsDecoder.prefill = real
    assert calls == [5, NATIVE_PREFILL_TOKENS]
