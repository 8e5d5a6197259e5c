"""Native CPU kernels, compiled on first use with the system C compiler and loaded with ctypes.

No torch headers and no build step at install time: `gcc -O3 -march=native -fopenmp` on one small C
file takes about a second, the .so is cached under ~/.cache/phiforge keyed by the source hash and the
machine, and everything falls back to PyTorch when no compiler is present (or PHIFORGE_KERNELS=0).
PHIFORGE_KERNEL_FLAGS adds compiler flags (part of the cache key): `-mno-avx512f` builds the AVX2 path on an
AVX-512 machine, `-mno-avx2` the plain-C one; tests use it to check every path this CPU can run.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from functools import cache
from pathlib import Path

import torch

from ..io import atomic_path

SRC = Path(__file__).with_name("kernels.c")


@cache
def library() -> ctypes.CDLL | None:
    if os.environ.get("PHIFORGE_KERNELS", "1") == "0" or platform.machine() not in (
        "x86_64",
        "AMD64",
        "aarch64",
    ):
        return None
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return _unavailable("no C compiler (gcc/cc) on PATH")
    src = SRC.read_bytes()
    extra = os.environ.get("PHIFORGE_KERNEL_FLAGS", "").split()
    # -march=native: the binary is only valid for this CPU, so its flags are part of the cache key
    key = hashlib.sha256(src + _cpu_flags() + cc.encode() + " ".join(extra).encode()).hexdigest()[:16]
    cache_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "phiforge"
    so = cache_dir / f"kernels-{key}.so"
    if not so.exists():
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return _unavailable(f"cannot write {cache_dir}: {e}")
        try:  # atomic: concurrent processes never load a half-written library
            with atomic_path(so) as tmp:
                cmd = [
                    cc,
                    "-O3",
                    "-march=native",
                    *extra,
                    "-fopenmp",
                    "-shared",
                    "-fPIC",
                    str(SRC),
                    "-o",
                    str(tmp),
                ]
                subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as e:
            detail = getattr(e, "stderr", b"") or str(e).encode()
            return _unavailable(
                f"{cc} failed: {detail.decode(errors='replace').strip().splitlines()[0][:200]}"
            )
    lib = ctypes.CDLL(str(so))
    lib.kernel_isa.restype = ctypes.c_char_p
    f = lib.gemv_f32
    f.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    f.restype = None
    f = lib.phi3_decode_layer
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    f.argtypes = [ptr] * 11 + [i64] * 9 + [ctypes.c_float, ptr, ctypes.c_int]
    f.restype = None
    f = lib.rows_add_norm
    f.argtypes = [ptr] * 4 + [i64] * 2 + [ctypes.c_float]
    f.restype = None
    f = lib.rows_swiglu
    f.argtypes = [ptr] * 2 + [i64] * 2 + [ctypes.c_int]
    f.restype = None
    f = lib.rows_attention
    f.argtypes = [ptr] * 5 + [i64, ptr] + [i64] * 9 + [ptr] * 2 + [ctypes.c_int]
    f.restype = None
    f = lib.sgemm_f32
    f.argtypes = [ptr] * 4 + [i64] * 3 + [ctypes.c_int]
    f.restype = ctypes.c_int
    f = lib.qgemm
    f.argtypes = [ptr] * 6 + [i64] * 4 + [ctypes.c_int, ctypes.c_int, ptr, ctypes.c_int]
    f.restype = None
    f = lib.phi3_decode_layer_q
    f.argtypes = (
        [ptr] * 7 + [i64, ctypes.c_int] + [ptr] * 4 + [i64] * 9 + [ctypes.c_float, ptr, ptr, ctypes.c_int]
    )
    f.restype = None
    return lib


def _cpu_flags() -> bytes:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.encode()
    except OSError:
        pass
    return platform.processor().encode() + platform.node().encode()


def _unavailable(reason: str) -> None:
    # said once per process: decode still works, only slower, and the user should know why
    warnings.warn(
        f"phiforge native kernels unavailable ({reason}); using the slower PyTorch decode path", stacklevel=3
    )
    return None


class Phi3Decoder:
    """Single-token decode of a Phi-3-block model (Phi-3, Llama) through `phi3_decode_layer`, one native call per layer.

    Valid for batch 1, fp32, CPU, no padding; the engine falls back to the PyTorch path otherwise."""

    def __init__(self, model, cache):
        cfg = model.cfg
        self.model, self.cache, self.lib = model, cache, library()
        hid, inter, nh, nkv, hd = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        self.dims = (hid, inter, nh, nkv, hd, cfg.rotary_dim, cache.max_len, cfg.sliding_window or 0)
        self.scratch = torch.empty(2 * hid + (nh + 2 * nkv) * hd + nh * hd + 2 * inter + nh * cache.max_len)
        self.layers = []
        self.bits = getattr(model.blocks[0].attn.qkv, "bits", 32)  # quant.QuantLinear carries bits
        if self.bits != 32:
            self.group = model.blocks[0].attn.qkv.group_size
            self.qscratch = qscratch(1, max(2 * hid, 2 * inter), self.group)
            for i, b in enumerate(model.blocks):
                lins = (b.attn.qkv, b.attn.out, b.mlp.up, b.mlp.down)
                arrays = [
                    (ctypes.c_void_p * 4)(*(getattr(q, k).data_ptr() for q in lins))
                    for k in ("qweight", "scales", "mins")
                ]
                # int4 repacked for the one-row kernel or not (the Engine repacks at load: engine.use_native_gemv)
                arrays.insert(3, (ctypes.c_int * 4)(*(int(q.repacked) for q in lins)))
                self.layers.append(
                    (b.norm1.weight.data_ptr(), b.norm2.weight.data_ptr(), *arrays)
                    + (cache.k[i, 0].data_ptr(), cache.v[i, 0].data_ptr())
                )
            self.eps = cfg.norm_eps
            return
        for i, b in enumerate(model.blocks):
            ws = (
                b.norm1.weight,
                b.attn.qkv.weight,
                b.attn.out.weight,
                b.norm2.weight,
                b.mlp.up.weight,
                b.mlp.down.weight,
            )
            assert all(w.is_contiguous() and w.dtype == torch.float32 for w in ws)
            self.layers.append(
                tuple(w.data_ptr() for w in ws) + (cache.k[i, 0].data_ptr(), cache.v[i, 0].data_ptr())
            )
        self.eps = cfg.norm_eps

    @staticmethod
    def supports(model, batch: int, padded: bool) -> bool:
        cfg = model.cfg
        p = next(model.parameters())
        lins = [m for blk in model.blocks for m in (blk.attn.qkv, blk.attn.out, blk.mlp.up, blk.mlp.down)]
        kinds = {(type(m), getattr(m, "bits", 32), getattr(m, "group_size", 0)) for m in lins}
        return (
            library() is not None
            and len(kinds) == 1
            and not cfg.parallel_block  # the native layer is the pre-norm RMSNorm + SwiGLU block, no biases
            and cfg.norm_kind == "rms"
            and cfg.gated_mlp
            and not (cfg.attention_bias or cfg.mlp_bias)
            and cfg.hidden_act == "silu"
            and batch == 1
            and not padded
            and p.dtype == torch.float32
            and p.device.type == "cpu"
        )

    def __call__(self, token: int, pos: int, kind: str) -> torch.Tensor:
        m = self.model
        if self.bits != 32:
            return self._quantized(token, pos, kind)
        x = m.embed.weight[token].clone()
        cos, sin = m.rope.get(pos + 1, kind, x.device, x.dtype)
        c, s = cos[pos].data_ptr(), sin[pos].data_ptr()
        scratch, nt, f = self.scratch.data_ptr(), torch.get_num_threads(), self.lib.phi3_decode_layer
        for ptrs in self.layers:
            f(x.data_ptr(), *ptrs, c, s, pos, *self.dims, self.eps, scratch, nt)
        return gemv(m.norm(x), m.lm_head.weight, m.lm_head.bias).view(1, 1, -1)

    def _quantized(self, token: int, pos: int, kind: str) -> torch.Tensor:
        m = self.model
        x = m.embed(torch.tensor([token]))[0]
        cos, sin = m.rope.get(pos + 1, kind, x.device, x.dtype)
        c, s = cos[pos].data_ptr(), sin[pos].data_ptr()
        scratch, qs, nt = self.scratch.data_ptr(), self.qscratch.data_ptr(), torch.get_num_threads()
        f, G, bits = self.lib.phi3_decode_layer_q, self.group, self.bits
        for ln1, ln2, w, sc, mn, il, k, v in self.layers:
            f(
                x.data_ptr(),
                ln1,
                ln2,
                w,
                sc,
                mn,
                il,
                G,
                bits,
                k,
                v,
                c,
                s,
                pos,
                *self.dims,
                self.eps,
                scratch,
                qs,
                nt,
            )
        return m.lm_head(m.norm(x)).view(1, 1, -1)


class RowsDecoder:
    """One decode step of B rows (left-padded or not) of a Phi-3-block model: the linear layers stay PyTorch
    modules (oneDNN / qgemm, which want many rows at once), everything between them is three native calls per
    layer instead of ~30 small ops. Same models as Phi3Decoder, any batch; `cache` may be a view whose rows are
    the first B of a larger buffer (the server's batcher), as long as each layer's rows are evenly strided."""

    def __init__(self, model, cache):
        cfg = model.cfg
        self.model, self.cache, self.lib = model, cache, library()
        self.B = cache.k.shape[1]
        self.dims = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rotary_dim)
        self.dims += (cache.max_len, cfg.sliding_window or 0)
        assert cache.k.stride(1) == cache.v.stride(1) and cache.k.stride(2) == cache.max_len * cfg.head_dim
        self.row_stride = cache.k.stride(1)
        self.scores = torch.empty(self.B * cfg.num_attention_heads * cache.max_len)

    @staticmethod
    def supports(model) -> bool:
        cfg = model.cfg
        return (
            Phi3Decoder.supports(model, 1, False)
            and not cfg.block_sparse
            and not cfg.mup_embedding_multiplier
        )

    def __call__(self, ids: torch.Tensor, pos: int, kind: str, pads: torch.Tensor | None) -> torch.Tensor:
        """ids (B,) at cache slot pos; pads (B,) first real slot of each row (None: no padding) -> (B, 1, V)."""
        B = self.B
        pads = torch.zeros(B, dtype=torch.long) if pads is None else pads.to(torch.long).contiguous()
        x = self._layers(ids, pos, 0, (pos - pads).clamp(min=0), pads, kind, self.row_stride, self.scores)
        return self.model.logits(self.model.norm(x)).view(B, 1, -1)

    def prefill(self, ids: torch.Tensor, pos: int, kind: str) -> torch.Tensor:
        """One sequence's prompt chunk ids (T,) into slots pos.. of cache row 0 -> the last token's logits
        (1, 1, V): the decode step's native calls with the T tokens as rows, token t seeing slots <= pos + t.
        For short prompts, where the ~30 PyTorch ops per layer between the linears are a tenth of the time."""
        T = ids.shape[0]
        scores = torch.empty(T * self.model.cfg.num_attention_heads * (pos + T))
        zeros = torch.zeros(T, dtype=torch.long)
        x = self._layers(ids, pos, 1, torch.arange(pos, pos + T), zeros, kind, 0, scores, last=True)
        return self.model.logits(self.model.norm(x)).view(1, 1, -1)

    def _layers(
        self, ids, pos: int, step: int, positions, pads, kind: str, row_stride: int, scores, last=False
    ):
        """The residual stream (rows, H) after every block: row b at cache slot pos + b step, rotary position
        positions[b], keys from slot pads[b] on. `last`: after the last layer's attention (which caches every
        row's keys and values) only the last row goes on, as in Transformer.forward(last_only=True)."""
        m, lib, eps = self.model, self.lib, self.model.cfg.norm_eps
        B = ids.shape[0]
        cos, sin = m.rope.get(int(positions.max()) + 1, kind, torch.device("cpu"), torch.float32)
        cos, sin = cos[positions].contiguous(), sin[positions].contiguous()
        x = m.embed(ids.reshape(B, 1)).reshape(B, -1).contiguous()
        h, o, nt = torch.empty_like(x), None, torch.get_num_threads()
        att = torch.empty(B, m.cfg.num_attention_heads * m.cfg.head_dim)
        for i, blk in enumerate(m.blocks):
            lib.rows_add_norm(x.data_ptr(), o.data_ptr() if o is not None else None, blk.norm1.weight.data_ptr(),
                              h.data_ptr(), B, x.shape[1], eps)  # fmt: skip
            qkv = blk.attn.qkv(h).contiguous()
            lib.rows_attention(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), self.cache.k[i].data_ptr(),
                               self.cache.v[i].data_ptr(), row_stride, pads.data_ptr(), pos, step, B, *self.dims,
                               att.data_ptr(), scores.data_ptr(), nt)  # fmt: skip
            if last and i == len(m.blocks) - 1:
                x, h, att, B = x[-1:], h[-1:], att[-1:], 1  # contiguous views: the buffers' last rows
            o = blk.attn.out(att)
            lib.rows_add_norm(x.data_ptr(), o.data_ptr(), blk.norm2.weight.data_ptr(), h.data_ptr(), B,
                              x.shape[1], eps)  # fmt: skip
            gu = blk.mlp.up(h)
            act = torch.empty(B, gu.shape[1] // 2)
            lib.rows_swiglu(gu.data_ptr(), act.data_ptr(), B, act.shape[1], nt)
            o = blk.mlp.down(act)
        x += o
        return x


def gemv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x (..., in) holding one row, w (out, in) contiguous fp32 -> (..., out)."""
    lib = library()
    out = torch.empty(*x.shape[:-1], w.shape[0], dtype=torch.float32)
    x = x.contiguous()
    lib.gemv_f32(
        x.data_ptr(),
        w.data_ptr(),
        b.data_ptr() if b is not None else None,
        out.data_ptr(),
        w.shape[0],
        w.shape[1],
        torch.get_num_threads(),
    )
    return out


def sgemm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor | None:
    """x (..., K) fp32, w (N, K) contiguous fp32 -> x @ w.T (+ b) through the native many-row kernel, or None
    when this build has none (no AVX2)."""
    lib = library()
    K = x.shape[-1]
    xc = x.reshape(-1, K).contiguous()
    out = torch.empty(*x.shape[:-1], w.shape[0], dtype=torch.float32)
    rc = lib.sgemm_f32(
        xc.data_ptr(),
        w.data_ptr(),
        b.data_ptr() if b is not None else None,
        out.data_ptr(),
        xc.shape[0],
        w.shape[0],
        K,
        torch.get_num_threads(),
    )
    return out if rc == 0 else None


@cache
def _has_sgemm() -> bool:
    # sgemm_f32 exists in every build but computes only with AVX2 (it returns -1 on a "scalar" build)
    return library() is not None and isa() != "scalar"


def isa() -> str:
    """The instruction set the loaded kernels were built for: "avx512vnni", "avx2", "scalar" (or "none")."""
    lib = library()
    return lib.kernel_isa().decode() if lib is not None else "none"


def qscratch(rows: int, k: int, group: int) -> torch.Tensor:
    """Bytes `qgemm` needs for `rows` activation rows of width <= k: int8 copies + 2 floats per group, plus 8
    rows (the many-row kernel works on whole tiles of up to 8 rows)."""
    rows += 8
    return torch.empty(rows * k + 64 + 8 * rows * (k // group + 1), dtype=torch.uint8)


def qgemm(x, qweight, scales, mins, bias, bits: int, group: int, repacked: bool = False) -> torch.Tensor:
    """x (..., K) fp32 -> (..., N) through the native int8/int4 kernel (quant.py holds the format; `repacked`:
    int4 in quant.repack_int4's layout)."""
    lib = library()
    N, K = scales.shape[0], x.shape[-1]
    xc = x.reshape(-1, K).contiguous()
    M = xc.shape[0]
    out = torch.empty(*x.shape[:-1], N, dtype=torch.float32)
    scratch = qscratch(M, K, group)
    lib.qgemm(
        xc.data_ptr(),
        qweight.data_ptr(),
        scales.data_ptr(),
        mins.data_ptr(),
        bias.data_ptr() if bias is not None else None,
        out.data_ptr(),
        M,
        N,
        K,
        group,
        bits,
        int(repacked),
        scratch.data_ptr(),
        torch.get_num_threads(),
    )
    return out


# Rows from which DecodeLinear calls oneDNN's inner product instead of F.linear (MKL). On this AMD CPU (1 thread)
# MKL's sgemm at 4-32 rows runs 2-17 GMAC/s on the large-N shapes (gate_up, lm_head, Phi-3-mini's) where oneDNN
# on the same, unpacked weight runs 4-26 (1.4-2.2x); on the ~160M model's N = 768-2304 shapes it is 0.7-1.0x
# of MKL below 16 rows. Weighted by the model's MACs oneDNN wins from 4 rows (1.3x) and loses at 2 (0.8x).
# Whole ~160M model: prefill and a 32-row decode step 1.2-1.4x (benchmarks/RESULTS.md, "fp32 small-M GEMM";
# bench_sgemm.py also measures the packed-weight variants that were not taken).
DNN_ROWS = 4
# Rows for which DecodeLinear calls the native `sgemm` instead (W broadcast in place, x packed). With W cold
# in cache, as in a forward (`bench_sgemm.py --cold`, benchmarks/RESULTS.md, seventh session): 16 rows
# 1.4-1.8x oneDNN, 32 rows 1.2-1.6x, 64 rows 1.0-1.2x on the ~160M and Phi-3-mini shapes; at 128 rows
# 0.83-1.12x, and at 512 a Phi-3-mini slice's prefill ran 1.16x slower (the packed x outgrows L2 and is re-read
# for every 6 weight rows). At 4 rows its 16-row tiles are 3/4 padding and oneDNN is level.
SGEMM_ROWS, SGEMM_MAX_ROWS = 8, 64
# the op inductor's CPU freezing emits; not in every build (no mkldnn: F.linear)
_DNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class DecodeLinear(torch.nn.Linear):
    """nn.Linear whose no-grad fp32 CPU calls skip MKL where it is slow: one row goes to the native gemv,
    SGEMM_ROWS to SGEMM_MAX_ROWS to the native many-row kernel, the other rows from DNN_ROWS to oneDNN's
    inner product on the weight as stored (neither packs a copy of W nor caches anything); the rest, training
    (grad enabled) included, is F.linear. Same parameters, same state_dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (
            x.dtype == torch.float32
            and w.dtype == torch.float32
            and not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and w.is_contiguous()
        ):
            rows = x.numel() // max(x.shape[-1], 1)
            if rows == 1:
                return gemv(x, w, self.bias)
            if SGEMM_ROWS <= rows <= SGEMM_MAX_ROWS and _has_sgemm():
                return sgemm(x, w, self.bias)
            if rows >= DNN_ROWS and _DNN:
                return torch.ops.mkldnn._linear_pointwise(x, w, self.bias, "none", [], "")
        return torch.nn.functional.linear(x, w, self.bias)
