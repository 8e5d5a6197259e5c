"""The native gemv (1 row) and packed sgemm (more rows): same numbers as F.linear (to fp32 reassociation), every
shape, and a fallback."""

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
def test_decode_linear_only_takes_single_rows_without_grad():
    lin = torch.nn.Linear(64, 32)
    lin.__class__ = kernels.DecodeLinear
    x = torch.randn(4, 64)
    with torch.no_grad():  # 4 rows: the packed sgemm, 1 row: gemv; both within fp32 reassociation
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lin(x[:1]), F.linear(x[:1], lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
    for rows in (x[:1], x):  # grad enabled: F.linear itself, differentiable
        y = lin(rows)
        assert torch.equal(y, F.linear(rows, lin.weight, lin.bias))
        y.sum().backward()
    assert lin.weight.grad is not None


@needs_cc
@pytest.mark.parametrize(
    ("out", "inp"), [(1, 1), (7, 33), (16, 5), (100, 300), (513, 96), (768, 768), (9, 1030)]
)
@pytest.mark.parametrize("rows", [2, 5, 8, 13, 32, 97, 200])
def test_sgemm_matches_linear(out, inp, rows):
    # rows cover every tile height (6, 4 + 4 for 8, 1-5 left over) and more than one row block (MC 96);
    # out: partial 16-wide panels; inp > 256: more than one K slice, accumulated into y
    g = torch.Generator().manual_seed(out * inp + rows)
    w, b, x = (
        torch.randn(out, inp, generator=g),
        torch.randn(out, generator=g),
        torch.randn(rows, inp, generator=g),
    )
    p = kernels.sgemm_pack(w)
    nr = p.shape[-1]
    assert p.shape == (-(-out // nr), inp, nr)
    for bias in (None, b):
        got, want = kernels.sgemm(x, p, bias, out), F.linear(x, w, bias)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * inp**0.5)
    # a row's result does not depend on which rows share its call (same FMA order in every tile height)
    assert torch.equal(kernels.sgemm(x[-2:], p, b, out), got[-2:])
    # the dot-product kernel on the unpacked weight (benchmarked against it)
    torch.testing.assert_close(kernels.sgemm_nt(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5 * inp**0.5)


@needs_cc
def test_decode_linear_repacks_when_the_weight_changes():
    lin = torch.nn.Linear(40, 24)
    lin.__class__ = kernels.DecodeLinear
    x = torch.randn(3, 5, 40)

    def check():
        want = F.linear(x, lin.weight, lin.bias)
        torch.testing.assert_close(lin(x), want, rtol=1e-5, atol=1e-5)

    with torch.no_grad():
        check()
        first = lin.packed()
        assert lin.packed() is first  # cached while the weight is unchanged
        lin.weight.mul_(-2)  # an optimizer step is an in-place update
        check()
        lin.weight.data = torch.randn(24, 40)  # a new tensor
        check()
        lin.load_state_dict({"weight": torch.randn(24, 40), "bias": torch.randn(24)})
        check()
    assert set(lin.state_dict()) == {"weight", "bias"}  # the packed copy is not state


_SCALAR_CHECK = """
import torch
from phiforge.infer import kernels
assert kernels.isa() == "scalar", kernels.isa()
for rows, out, inp in ((2, 7, 33), (13, 100, 300), (32, 768, 768)):
    torch.manual_seed(rows)
    w, b, x = torch.randn(out, inp), torch.randn(out), torch.randn(rows, inp)
    for got in (kernels.sgemm(x, kernels.sgemm_pack(w), b, out), kernels.sgemm_nt(x, w, b)):
        torch.testing.assert_close(got, x @ w.t() + b, rtol=1e-5, atol=1e-5 * inp**0.5)
"""


@needs_cc
def test_sgemm_plain_c_path(tmp_path):
    env = {**os.environ, "PHIFORGE_KERNEL_FLAGS": "-mno-avx2", "XDG_CACHE_HOME": str(tmp_path)}
    p = subprocess.run(
        [sys.executable, "-c", _SCALAR_CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr[-2000:]


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
