"""Weight-only int8/int4: the native kernel against its definition, the engine's decode paths against each
other, the checkpoint round trip, the memory estimate against real bytes, and perplexity on held-out code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from phiforge.infer import kernels, quant, score
from phiforge.infer.engine import Engine
from phiforge.infer.sampling import SamplingParams
from phiforge.model import KVCache, ModelConfig, build, get_preset, load_model
from phiforge.model.config import quantized_bytes
from phiforge.model.hf import CheckpointError
from phiforge.tokenizer import Tokenizer

needs_kernels = pytest.mark.skipif(kernels.library() is None, reason="native kernels unavailable (no gcc)")


def _qdq_act(x: torch.Tensor, g: int) -> torch.Tensor:
    """int8 per-group activation rounding, as kernels.c does it."""
    xg = x.reshape(*x.shape[:-1], -1, g)
    d = xg.abs().amax(-1, keepdim=True) / 127
    return (torch.round(xg / torch.where(d > 0, d, 1)) * d).reshape(x.shape)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_quantize_roundtrip_error_within_half_step(bits, group):
    w = torch.randn(48, 256) * 0.02
    q, s, m = quant.quantize_weight(w, bits, group)
    assert q.dtype == (torch.uint8 if bits == 4 else torch.int8)
    assert q.shape == (48, 256 // 2 if bits == 4 else 256) and s.shape == m.shape == (48, 256 // group)
    err = (quant.dequantize_weight(q, s, m, bits, group) - w).abs().reshape(48, -1, group)
    step = s.float()[..., None]
    assert (err <= 0.5 * step + 1e-3 * w.abs().max()).all()  # half a step (+ fp16 rounding of the min)


@needs_kernels
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("rows", [1, 2, 5, 9, 33])
def test_native_kernel_equals_dequantized_product(bits, group, rows):
    # the kernel's definition: dequantized weights times int8-rounded activations, fp32 sums. 101 weight rows
    # and 5 or 33 activation rows leave partial tiles on both sides of the many-row kernel.
    torch.manual_seed(0)
    w, b, x = torch.randn(101, 384) * 0.02, torch.randn(101), torch.randn(rows, 384)
    q, s, m = quant.quantize_weight(w, bits, group)
    ref = _qdq_act(x, group) @ quant.dequantize_weight(q, s, m, bits, group).t() + b
    out = kernels.qgemm(x, q, s, m, b, bits, group)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    # and it stays close to the fp32 product (int4 g128 ~5-10% of the largest output, int8 ~1%)
    tol = 0.15 if bits == 4 else 0.02
    assert (out - (x @ w.t() + b)).abs().max() < tol * (x @ w.t() + b).abs().max()
    # a row's result does not depend on the rows batched with it (batch-1 decode == batched decode)
    assert torch.equal(out[-1:], kernels.qgemm(x[-1:], q, s, m, b, bits, group))


needs_repack = pytest.mark.skipif(
    kernels.isa() not in ("avx2", "avx512vnni"), reason="int4 is repacked only for the AVX2/VNNI kernels"
)


@needs_kernels
@needs_repack
def test_repack_int4_is_the_documented_permutation():
    q = torch.randint(0, 256, (24, 128), dtype=torch.uint8)  # 3 blocks of 8 rows, K = 256: 8 units
    sc, mn = torch.randn(24, 2).half(), torch.randn(24, 2).half()  # 2 groups of 128
    r, rs, rm = quant.repack_int4(q, sc, mn)
    assert r.shape == q.shape and not torch.equal(r, q)
    view = r.reshape(3, 8, 4, 8, 4)  # block, unit, word, row, byte
    for blk, unit, word, row in ((0, 0, 0, 0), (1, 2, 3, 5), (2, 7, 1, 7)):
        got = view[blk, unit, word, row]
        assert torch.equal(got, q[8 * blk + row, 16 * unit + 4 * word : 16 * unit + 4 * word + 4])
        for packed, stored in ((rs, sc), (rm, mn)):  # [block][group][row]
            assert torch.equal(packed.reshape(3, 2, 8)[blk, unit // 4, row], stored[8 * blk + row, unit // 4])
    back = quant.repack_int4(r, rs, rm, inverse=True)
    assert all(torch.equal(a, b) for a, b in zip(back, (q, sc, mn), strict=True))


@needs_kernels
@needs_repack
@pytest.mark.parametrize("group", [32, 128])
@pytest.mark.parametrize("threads", [1, 2])
def test_repacked_int4_has_the_stored_layouts_bits(group, threads):
    # the one-row kernel on repacked weights (4 distant blocks of 8 rows at once, then the blocks left over one
    # by one) and the many-row unpack from them give every output bit for bit as the stored layout does.
    # N = 8: one block; 40: one group of 4 + 1; 104: three + 1; 768: 24 groups
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for N in (8, 40, 104, 768):
            torch.manual_seed(N)
            lin = torch.nn.Linear(256, N)
            a, b = (quant.QuantLinear.from_linear(lin, 4, group) for _ in range(2))
            assert b.pack_for_kernels() and b.repacked and not torch.equal(a.qweight, b.qweight)
            with torch.no_grad():
                for rows in (1, 5, 33):
                    x = torch.randn(rows, 256)
                    assert torch.equal(a(x), b(x)), (N, rows)
            assert all(torch.equal(b.state_dict()[k], a.state_dict()[k]) for k in a.state_dict())
            assert torch.equal(b.dequantize(), a.dequantize())
            b.load_state_dict(a.state_dict())
            assert not b.repacked and torch.equal(b.qweight, a.qweight) and torch.equal(b.scales, a.scales)
    finally:
        torch.set_num_threads(old)
    # only int4 with whole blocks of 8 rows is repacked
    assert not quant.QuantLinear.from_linear(torch.nn.Linear(256, 36), 4, 32).pack_for_kernels()
    assert not quant.QuantLinear.from_linear(torch.nn.Linear(256, 64), 8, 32).pack_for_kernels()


_ISA_CHECK = """
import torch
from phiforge.infer import kernels, quant
print(kernels.isa())
for bits in (4, 8):
    for group, rows in ((32, 1), (128, 7), (512, 33)):  # 512: int16 sums widened every 8 units on AVX2
        torch.manual_seed(bits + rows)
        w, x = torch.randn(37, 1024) * 0.02, torch.randn(rows, 1024)
        q, s, m = quant.quantize_weight(w, bits, group)
        xg = x.reshape(rows, -1, group)
        d = xg.abs().amax(-1, keepdim=True) / 127
        xq = (torch.round(xg / d) * d).reshape(rows, -1)
        ref = xq @ quant.dequantize_weight(q, s, m, bits, group).t()
        out = kernels.qgemm(x, q, s, m, None, bits, group)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
"""


def _cpu_has(*flags: str) -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "").split()
    return all(f in line for f in flags)


@needs_kernels
@pytest.mark.parametrize(
    ("flags", "isa", "cpu"),
    [
        ("-mno-avx2", "scalar", ()),
        ("-mno-avx512f", "avx2", ("avx2", "fma", "f16c")),
        (
            "-mavx512f -mavx512bw -mavx512vl -mavx512vnni",
            "avx512vnni",
            ("avx512bw", "avx512vl", "avx512_vnni"),
        ),
    ],
)
def test_every_instruction_set_path_equals_its_definition(flags, isa, cpu, tmp_path):
    # each path is built on its own (PHIFORGE_KERNEL_FLAGS, its own cache) and checked against the dequantized
    # product where this CPU has its instructions; where it has not, the path must still compile
    import os
    import subprocess
    import sys

    if not _cpu_has(*cpu):
        cc = [
            os.environ.get("CC", "gcc"),
            "-O3",
            "-march=native",
            *flags.split(),
            "-fopenmp",
            "-shared",
            "-fPIC",
        ]
        subprocess.run([*cc, str(kernels.SRC), "-o", str(tmp_path / "k.so")], check=True, timeout=120)
        pytest.skip(f"the {isa} path compiles; this CPU lacks {cpu} to run it")
    env = {
        **os.environ,
        "PHIFORGE_KERNEL_FLAGS": flags,
        "XDG_CACHE_HOME": str(tmp_path),
        "OMP_NUM_THREADS": "1",
    }
    p = subprocess.run(
        [sys.executable, "-c", _ISA_CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split()[0] == isa


_TILE_CHECK = """
import torch
from phiforge.infer import kernels, quant
for group in (32, 128):
    # 8192: 2 row chunks; 104 = 13 blocks of 8 rows, repacked: streams of 6, 4 or 3 blocks and a rest
    for N, K, rows in ((37, 1024, (2, 7, 9, 33)), (8, 256, (3, 16)), (13, 8192, (41,)), (104, 512, (1, 6))):
        torch.manual_seed(N + group)
        w, b = torch.randn(N, K) * 0.02, torch.randn(N)
        q, s, m = quant.quantize_weight(w, 4, group)
        wd = quant.dequantize_weight(q, s, m, 4, group)
        for M in rows:
            x = torch.randn(M, K)
            xg = x.reshape(M, -1, group)
            d = xg.abs().amax(-1, keepdim=True) / 127
            xq = torch.round(xg * (1 / d)) * d  # x * (1 / d) as kernels.c (x / d rounds differently at K = 8192)
            ref = xq.reshape(M, -1) @ wd.t() + b
            out = kernels.qgemm(x, q, s, m, b, 4, group)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
            for i in (0, M - 1):  # each row has the one-row path's bits
                assert torch.equal(out[i : i + 1], kernels.qgemm(x[i : i + 1], q, s, m, b, 4, group)), (M, i)
            if N % 8 == 0:  # and so has the repacked layout, one row or many
                packed = quant.repack_int4(q, s, m)
                for xr in (x[:1], x):
                    assert torch.equal(kernels.qgemm(xr, *packed, b, 4, group, True), out[: len(xr)]), (N, M)
print("ok")
"""


@needs_kernels
@pytest.mark.skipif(not _cpu_has("avx2", "fma", "f16c"), reason="the int4 tiles need AVX2")
@pytest.mark.parametrize("flags", ["-DPF_MR4=2", "-DPF_MR4=6", "-DPF_MR4=8", "-DPF_IL_NS=3"])
def test_int4_tile_heights_equal_their_definition(flags, tmp_path):
    # the int4 many-row tiles built with other activation-row heights (PF_MR4; the default 4 runs in-process
    # above) and the repacked one-row kernel with 3 streams (PF_IL_NS; default 2): odd M and N, partial blocks
    # of 8 weight rows, both group sizes, and a row of any batch has the same bits as that row alone
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "PHIFORGE_KERNEL_FLAGS": flags,
        "XDG_CACHE_HOME": str(tmp_path),
        "OMP_NUM_THREADS": "1",
    }
    p = subprocess.run(
        [sys.executable, "-c", _TILE_CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]


_QACT_CHECK = """
import sys, torch
from phiforge.infer import kernels, quant
torch.manual_seed(0)
outs = []
for bits in (4, 8):
    for group in (32, 64, 128):
        for M in (1, 9):
            q, s, m = quant.quantize_weight(torch.randn(40, 768) * 0.02, bits, group)
            x = torch.randn(M, 768) * torch.logspace(-3, 2, 768)  # groups of very different ranges
            x[0, :32] = 0.0  # an all-zero group: scale 0
            outs.append(kernels.qgemm(x, q, s, m, None, bits, group))
torch.save(outs, sys.argv[1])
"""


@needs_kernels
@pytest.mark.skipif(not _cpu_has("avx2", "fma", "f16c"), reason="the vector quantizer is AVX2")
def test_vector_activation_quantizer_has_the_scalar_bits(tmp_path):
    # the AVX2 activation quantizer against the scalar loop it replaced (-DPF_QACT_SCALAR=1, its own build):
    # every int4 / int8 output bit for bit
    import os
    import subprocess
    import sys

    outs = {}
    for name, flags in (("vector", ""), ("scalar", "-DPF_QACT_SCALAR=1")):
        env = {**os.environ, "PHIFORGE_KERNEL_FLAGS": flags, "XDG_CACHE_HOME": str(tmp_path / name)}
        f = tmp_path / f"{name}.pt"
        p = subprocess.run(
            [sys.executable, "-c", _QACT_CHECK, str(f)], env=env, capture_output=True, text=True, timeout=300
        )
        assert p.returncode == 0, p.stderr[-2000:]
        outs[name] = torch.load(f)
    assert len(outs["vector"]) == 12
    assert all(torch.equal(a, b) for a, b in zip(outs["vector"], outs["scalar"], strict=True))


def test_quantize_model_replaces_every_linear_and_the_embedding():
    model = quant.quantize_model(build(get_preset("tiny"), seed=0), 4, 64)
    assert not [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert isinstance(model.embed, quant.QuantEmbedding) and isinstance(model.lm_head, quant.QuantLinear)


def test_group_size_must_divide_features():
    cfg = get_preset("tiny").replace(hidden_size=96, num_attention_heads=3, num_key_value_heads=3)
    with pytest.raises(ValueError, match="hidden_size: in_features 96 is not a multiple of group size 64"):
        quant.quantize_model(build(cfg, seed=0), 4, 64)
    with pytest.raises(ValueError, match="multiple of 32"):
        quant.quantize_model(build(get_preset("tiny"), seed=0), 4, 48)
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        quant.quantize_model(build(get_preset("tiny"), seed=0), 3, 128)


@needs_kernels
@pytest.mark.parametrize("bits", [4, 8])
def test_native_decode_layer_matches_module_forward(bits):
    # the fused C decode layer against the PyTorch modules step by step (both use the same int kernel)
    cfg = ModelConfig(
        vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = quant.quantize_model(build(cfg, seed=1), bits, 64).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    prompt = [5, 17, 300, 42, 7]
    ids = Engine(model).generate([prompt], SamplingParams(max_new_tokens=6, ignore_eos=True))[0].tokens
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # repacked or not
    seq = prompt + ids
    cache = KVCache(cfg, 1, 64)
    dec = kernels.Phi3Decoder(model, cache)
    assert kernels.Phi3Decoder.supports(model, 1, False)
    if bits == 4 and kernels.isa() != "scalar":  # the Engine repacked every int4 linear for the kernel
        assert all(m.repacked for m in model.modules() if isinstance(m, quant.QuantLinear))
    ref_cache = KVCache(cfg, 1, 64)
    with torch.inference_mode():
        model(torch.tensor([prompt]), cache=cache)
        model(torch.tensor([prompt]), cache=ref_cache)
        for pos in range(len(prompt), len(seq) - 1):
            got = dec(seq[pos], pos, "short")
            want = model(torch.tensor([[seq[pos]]]), pos=pos, cache=ref_cache)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            assert int(want[0, -1].argmax()) == seq[pos + 1]


@pytest.fixture(scope="module")
def quantized_dirs(trained, tmp_path_factory):
    ckpt, _ = trained
    out = {}
    for bits in (8, 4):
        d = tmp_path_factory.mktemp(f"int{bits}")
        quant.quantize_checkpoint(ckpt, d, bits, 128)
        out[bits] = d
    return out


def test_checkpoint_roundtrip_and_quantized_bytes(trained, quantized_dirs):
    ckpt, _ = trained
    for bits, d in quantized_dirs.items():
        qc = json.loads((d / "config.json").read_text())["quantization_config"]
        assert qc["bits"] == bits and qc["group_size"] == 128 and qc["format"] == quant.FORMAT
        assert (d / "tokenizer.json").is_file()
        model = quant.load_quantized(d)
        fresh = quant.quantize_model(load_model(ckpt), bits, 128)
        for (k, a), (k2, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
            assert k == k2 and torch.equal(a, b), k
        # the estimate `phiforge info --bits` prints is the real size, byte for byte
        assert sum(quantized_bytes(model.cfg, bits, 128).values()) == quant.model_bytes(model)
    with pytest.raises(ValueError, match="already quantized"):
        quant.quantize_checkpoint(quantized_dirs[4], quantized_dirs[4] / "again", 4)


def test_engine_loads_quantized_and_batches(trained, quantized_dirs):
    ckpt, held = trained
    eng = Engine.load(quantized_dirs[4])
    assert isinstance(eng.model.lm_head, quant.QuantLinear)
    p = SamplingParams(max_new_tokens=12, ignore_eos=True)
    prompts = ["def read_config(path):\n", "import os\nimport sys\n\nclass Loader:\n    def __init__(self"]
    solo = [eng.complete(t, p).tokens for t in prompts]  # batch 1: native decode layer
    ids = [eng.tok.encode(t) for t in prompts]
    batch = [r.tokens for r in eng.generate(ids, p)]  # left-padded: PyTorch path with masks
    assert batch == solo
    # a long prompt goes through the many-row integer kernel
    long = eng.tok.encode(held[:3000])[:300]
    assert len(eng.generate([long], p)[0].tokens) == 12
    chat = eng.chat([{"role": "user", "content": "hello"}], SamplingParams(max_new_tokens=4, seed=0))
    assert chat.prompt_tokens > 0


def test_perplexity_int8_within_1pct_int4_within_10pct(trained, quantized_dirs):
    ckpt, held = trained
    ids = Tokenizer.from_file(ckpt).encode(held)[: 4 * 256 + 1]
    fp = score.perplexity(load_model(ckpt).eval(), ids)
    rows = {}
    for bits, d in quantized_dirs.items():
        m = quant.load_quantized(d).eval()
        rows[bits] = (score.perplexity(m, ids), score.perplexity(m, ids, chunk=16))
    print(f"\nheld-out perplexity ({len(ids) - 1} tokens): fp32 {fp:.3f}")
    for bits, (pre, dec) in rows.items():
        print(
            f"  int{bits} g128: {pre:.3f} ({100 * (pre / fp - 1):+.2f}%) prefill path, "
            f"{dec:.3f} ({100 * (dec / fp - 1):+.2f}%) integer decode kernel"
        )
    assert fp < 300  # the model learned something (uniform over its 1024 tokens would be 1024)
    for pre, dec in [rows[8]]:
        assert pre < 1.01 * fp and dec < 1.01 * fp
    for pre, dec in [rows[4]]:
        assert pre < 1.10 * fp and dec < 1.10 * fp


def test_bad_quantization_config_is_one_line(quantized_dirs, tmp_path):
    import shutil

    d = tmp_path / "bad"
    shutil.copytree(quantized_dirs[4], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"]["bits"] = 3
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config.json: quantization_config.bits must be 4 or 8, got 3"):
        Engine.load(d)
    cfg["quantization_config"].update(bits=4, format="gptq")
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="format 'gptq' is not supported"):
        Engine.load(d)
