"""Weight-only int8 / int4 quantization (group-wise, asymmetric) and the quantized checkpoint format.

Every linear layer (lm_head included) becomes a `QuantLinear`; the embedding table becomes an int8
`QuantEmbedding` (decode reads one row of it per token, so its format only sets memory, and int8 keeps
its error far below the int4 layers'). Norms stay fp32. Group g of a weight row holds G weights:

    w = scale[g] * q + min[g]        scale, min: fp16;  int4: q in 0..15;  int8: q in -127..127

Asymmetric (scale + min) costs 1/8 bit per weight more than symmetric at G=128 and measurably lowers
perplexity at 4 bits. int4 is packed like llama.cpp's Q4_0: 16 bytes per 32 weights, byte j holds
q[j] | q[j+16] << 4. Every CPU inference call, one row or a 512-token prompt, runs the native integer kernel
(`qgemm` in kernels.c: activations rounded to int8 per group, integer dot products over blocks of 8 weight
rows, weights never expanded beyond an 8-row int8 copy per thread; for decode the engine repacks int4 in place into
the one-row kernel's layout, `QuantLinear.pack_for_kernels`, while state_dicts keep the checkpoint's);
dequantizing every weight on every prefill call was 15-20x slower at 32 rows (benchmarks/RESULTS.md). Training
(grad enabled) and GPUs dequantize and run one fp32/bf16 matmul (the CUDA path is plain torch, untested here).

Checkpoint: config.json (HF fields + `quantization_config`), model.safetensors with our own tensor names
(`blocks.0.attn.qkv.qweight|scales|mins`), plus the tokenizer files of the source model.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..io import atomic_path, write_json
from ..model import ModelConfig, Transformer
from ..model.hf import CheckpointError, config_from_hf, config_to_hf
from . import kernels

FORMAT = "phiforge-wq1"
EMBED_BITS = 8
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


def _levels(bits: int) -> tuple[int, int]:
    """(number of steps, offset of the stored q): int4 stores 0..15, int8 stores -127..127."""
    if bits == 4:
        return 15, 0
    if bits == 8:
        return 254, 127
    raise ValueError(f"bits must be 4 or 8, got {bits}")


def check_group_size(group_size: int, in_features: int, name: str = "weight") -> None:
    if group_size <= 0 or group_size % 32:
        raise ValueError(f"group size {group_size} must be a positive multiple of 32 (32, 64, 128, ...)")
    if in_features % group_size:
        raise ValueError(f"{name}: in_features {in_features} is not a multiple of group size {group_size}")


def quantize_weight(w: torch.Tensor, bits: int, group_size: int):
    """(N, K) float -> qweight (int4: uint8 (N, K/2); int8: int8 (N, K)), scales, mins fp16 (N, K/G)."""
    steps, offset = _levels(bits)
    N, K = w.shape
    wg = w.detach().float().reshape(N, K // group_size, group_size)
    lo, hi = wg.amin(-1), wg.amax(-1)
    # round scale and min to fp16 first, then pick q against the rounded values the kernel will use
    scale = ((hi - lo) / steps).half()
    scale = torch.where(scale.float() > 0, scale, torch.ones_like(scale))
    mn = lo.half()
    q = ((wg - mn.float()[..., None]) / scale.float()[..., None]).round().clamp(0, steps).to(torch.uint8)
    if bits == 4:
        q = q.reshape(N, K // 32, 2, 16)
        qweight = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(N, K // 2)
        mins = mn
    else:
        qweight = (q.to(torch.int16) - offset).to(torch.int8).reshape(N, K)
        mins = (mn.float() + offset * scale.float()).half()  # w = s * (q - 127) + m' with m' = m + 127 s
    return qweight.contiguous(), scale.contiguous(), mins.contiguous()


def dequantize_weight(qweight, scales, mins, bits: int, group_size: int, dtype=torch.float32) -> torch.Tensor:
    N, ng = scales.shape
    K = ng * group_size
    if bits == 4:
        b = qweight.reshape(N, K // 32, 1, 16)
        q = torch.cat([b & 15, b >> 4], dim=2).reshape(N, ng, group_size)
    else:
        q = qweight.reshape(N, ng, group_size)
    w = q.to(dtype) * scales.to(dtype)[..., None] + mins.to(dtype)[..., None]
    return w.reshape(N, K)


def repack_int4(
    qweight, scales, mins, inverse: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int4 (N, K/2) + fp16 (N, K/G) scales and mins, N a multiple of 8 -> the kernels' layout (and back with
    `inverse`). In each block of 8 rows, 32-weight unit k becomes 128 contiguous bytes [4-byte word c][row r] and
    the scales and mins [group][row]: the one-row kernel then reads a block as one stream with no shuffles
    (kernels.c, gemv4_il). Same values, same shapes, only their order."""
    N, half = qweight.shape
    ng = scales.shape[1]
    q = (N // 8, 8, half // 16, 4, 4)  # block, row, unit, word, byte
    sm = (N // 8, 8, ng)  # block, row, group
    if inverse:
        out = (
            qweight.reshape(N // 8, half // 16, 4, 8, 4).permute(0, 3, 1, 2, 4).reshape(N, half),
            *(t.reshape(N // 8, ng, 8).transpose(1, 2).reshape(N, ng) for t in (scales, mins)),
        )
    else:
        out = (
            qweight.reshape(q).permute(0, 2, 3, 1, 4).reshape(N, half),
            *(t.reshape(sm).transpose(1, 2).reshape(N, ng) for t in (scales, mins)),
        )
    return tuple(t.contiguous() for t in out)  # one block (N = 8) reshapes to a transposed view


class QuantLinear(nn.Module):
    """A linear layer with int4/int8 group-quantized weights. `qweight` is in the checkpoint's layout unless
    `pack_for_kernels()` repacked it for the native one-row kernel (`repacked`); the state_dict is always the
    checkpoint's layout, and dequantize() undoes the repacking."""

    def __init__(
        self, in_features: int, out_features: int, bits: int, group_size: int, bias: bool, device=None
    ):
        super().__init__()
        check_group_size(group_size, in_features)
        self.in_features, self.out_features, self.bits, self.group_size = (
            in_features,
            out_features,
            bits,
            group_size,
        )
        _levels(bits)
        cols = in_features // 2 if bits == 4 else in_features
        qdtype = torch.uint8 if bits == 4 else torch.int8
        ng = in_features // group_size
        self.register_buffer("qweight", torch.empty(out_features, cols, dtype=qdtype, device=device))
        self.register_buffer("scales", torch.empty(out_features, ng, dtype=torch.float16, device=device))
        self.register_buffer("mins", torch.empty(out_features, ng, dtype=torch.float16, device=device))
        self.register_buffer("bias", torch.empty(out_features, device=device) if bias else None)
        self.repacked = False
        self._register_state_dict_hook(QuantLinear._canonical_state)
        self.register_load_state_dict_pre_hook(QuantLinear._loading)

    def pack_for_kernels(self) -> bool:
        """Repack an int4 weight in place for the native one-row kernel (1.3-1.5x faster there, and unpacked
        without shuffles for many rows); True when it is now in that layout. Only where the kernels use it:
        AVX2 builds, CPU, out_features a multiple of 8."""
        if not self.repacked and (
            self.bits == 4
            and self.out_features % 8 == 0
            and self.qweight.device.type == "cpu"
            and kernels.isa() in ("avx2", "avx512vnni")
        ):
            with torch.no_grad():  # in place: pointers taken earlier stay valid
                for buf, new in zip(self._quantized(), repack_int4(*self._quantized()), strict=True):
                    buf.copy_(new.clone())  # a permuted view may alias its source
            self.repacked = True
        return self.repacked

    def _quantized(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.qweight, self.scales, self.mins

    def _checkpoint_layout(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return repack_int4(*self._quantized(), inverse=True) if self.repacked else self._quantized()

    @staticmethod
    def _canonical_state(module, state_dict, prefix, local_metadata):
        if module.repacked:
            for k, t in zip(("qweight", "scales", "mins"), module._checkpoint_layout(), strict=True):
                state_dict[prefix + k] = t.contiguous()
        return state_dict

    def _loading(self, state_dict, prefix, *args):
        self.repacked = False  # a state_dict always holds the checkpoint's layout

    @classmethod
    def from_linear(cls, lin: nn.Linear, bits: int, group_size: int, name: str = "linear") -> QuantLinear:
        check_group_size(group_size, lin.in_features, name)
        m = cls(lin.in_features, lin.out_features, bits, group_size, lin.bias is not None, device="meta")
        m.qweight, m.scales, m.mins = quantize_weight(lin.weight, bits, group_size)
        if lin.bias is not None:
            m.bias = lin.bias.detach().float().clone()
        return m

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return dequantize_weight(*self._checkpoint_layout(), self.bits, self.group_size, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and not torch.is_grad_enabled()
            and kernels.library() is not None
        ):
            return kernels.qgemm(
                x, self.qweight, self.scales, self.mins, self.bias, self.bits, self.group_size, self.repacked
            )
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.dequantize(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bits={self.bits}, group_size={self.group_size}"


class QuantEmbedding(nn.Module):
    """int8 embedding table, same group format; a lookup dequantizes only the rows it gathers."""

    def __init__(self, num: int, dim: int, group_size: int, device=None):
        super().__init__()
        check_group_size(group_size, dim, "embedding")
        self.num_embeddings, self.embedding_dim, self.group_size = num, dim, group_size
        ng = dim // group_size
        self.register_buffer("qweight", torch.empty(num, dim, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(num, ng, dtype=torch.float16, device=device))
        self.register_buffer("mins", torch.empty(num, ng, dtype=torch.float16, device=device))

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, group_size: int) -> QuantEmbedding:
        m = cls(emb.num_embeddings, emb.embedding_dim, group_size, device="meta")
        m.qweight, m.scales, m.mins = quantize_weight(emb.weight, EMBED_BITS, group_size)
        return m

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        flat = idx.reshape(-1)
        w = dequantize_weight(
            self.qweight[flat], self.scales[flat], self.mins[flat], EMBED_BITS, self.group_size
        )
        return w.reshape(*idx.shape, self.embedding_dim)


def quantize_model(
    model: Transformer, bits: int, group_size: int = 128, progress: Callable[[int, int], None] | None = None
) -> Transformer:
    """Replace every nn.Linear with a QuantLinear and the embedding with an int8 QuantEmbedding, in place."""
    _levels(bits)
    cfg = model.cfg
    check_group_size(group_size, cfg.hidden_size, "hidden_size")
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for i, (name, lin) in enumerate(linears):
        parent, attr = _parent(model, name)
        setattr(parent, attr, QuantLinear.from_linear(lin, bits, group_size, name))
        if progress:
            progress(i + 1, len(linears))
    model.embed = QuantEmbedding.from_embedding(model.embed, group_size)
    model.quantization = {"bits": bits, "group_size": group_size}
    return model


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, attr = name.split(".")
    mod = model
    for p in path:
        mod = getattr(mod, p)
    return mod, attr


def quantization_config(bits: int, group_size: int) -> dict:
    return {
        "quant_method": "phiforge",
        "format": FORMAT,
        "bits": bits,
        "group_size": group_size,
        "symmetric": False,
        "modules": "every linear layer, lm_head included",
        "packing": "w = scales * q + mins per group; int4 q 0..15, 16 bytes per 32 weights, byte j = q[j] | q[j+16] << 4; int8 q -127..127",
        "scale_dtype": "float16",
        "embedding": {"bits": EMBED_BITS, "group_size": group_size},
    }


def save_quantized(model: Transformer, out: str | Path, source: str | Path | None = None) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    q = model.quantization
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(sd, tmp, metadata={"format": FORMAT})
    cfg = config_to_hf(model.cfg)
    cfg["quantization_config"] = quantization_config(q["bits"], q["group_size"])
    write_json(out / "config.json", cfg)
    if source is not None:
        for name in TOKENIZER_FILES:
            if (Path(source) / name).is_file() and Path(source).resolve() != out.resolve():
                shutil.copyfile(Path(source) / name, out / name)


def read_quantization_config(path: str | Path) -> dict | None:
    f = Path(path) / "config.json"
    try:
        return json.loads(f.read_text()).get("quantization_config")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None  # load_config reports a missing or broken config.json with the right message


def load_quantized(path: str | Path, device="cpu") -> Transformer:
    path = Path(path)
    f = path / "config.json"
    d = json.loads(f.read_text())
    qc = d.pop("quantization_config")
    if not isinstance(qc, dict) or qc.get("format") != FORMAT:
        got = qc.get("format") if isinstance(qc, dict) else qc
        raise CheckpointError(
            f"{f}: quantization_config.format {got!r} is not supported (expected {FORMAT!r})"
        )
    bits, group_size = qc.get("bits"), qc.get("group_size")
    if bits not in (4, 8):
        raise CheckpointError(f"{f}: quantization_config.bits must be 4 or 8, got {bits!r}")
    if not isinstance(group_size, int) or group_size <= 0 or group_size % 32:
        raise CheckpointError(
            f"{f}: quantization_config.group_size must be a multiple of 32, got {group_size!r}"
        )
    cfg: ModelConfig = config_from_hf(d, str(f))
    with torch.device("meta"):
        model = Transformer(cfg)
        try:
            quantize_model(model, bits, group_size)
        except ValueError as e:
            raise CheckpointError(f"{f}: {e}") from None
    expected = model.state_dict()
    sd = {}
    st_file = path / "model.safetensors"
    if not st_file.is_file():
        raise CheckpointError(f"{st_file}: not found")
    try:
        with safe_open(str(st_file), framework="pt") as st:
            for key in st.keys():
                if key not in expected:
                    raise CheckpointError(
                        f"{st_file}: unexpected tensor {key!r} for a {bits}-bit phiforge model"
                    )
                t = st.get_tensor(key)
                want = expected[key]
                if tuple(t.shape) != tuple(want.shape) or t.dtype != want.dtype:
                    raise CheckpointError(
                        f"{st_file}: tensor {key!r} is {t.dtype} {tuple(t.shape)}, "
                        f"config.json implies {want.dtype} {tuple(want.shape)}"
                    )
                sd[key] = t
    except SafetensorError as e:
        raise CheckpointError(f"{st_file}: corrupt safetensors file ({e})") from None
    missing = sorted(set(expected) - set(sd))
    if missing:
        raise CheckpointError(f"{st_file}: missing tensor {missing[0]!r} ({len(missing)} missing)")
    model.load_state_dict(sd, strict=True, assign=True)
    model.quantization = {"bits": bits, "group_size": group_size}
    return model.to(device)


def dequantized_state(model: Transformer) -> dict[str, torch.Tensor]:
    """Our parameter names -> fp32 tensors, whether `model` is quantized or not (for export)."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLinear):
            out[f"{name}.weight"] = mod.dequantize()
            if mod.bias is not None:
                out[f"{name}.bias"] = mod.bias.float()
        elif isinstance(mod, QuantEmbedding):
            out[f"{name}.weight"] = dequantize_weight(
                mod.qweight, mod.scales, mod.mins, EMBED_BITS, mod.group_size
            )
    for k, v in model.state_dict().items():
        if not k.endswith(("qweight", "scales", "mins")) and k not in out:
            out[k] = v.float()
    return out


def quantize_checkpoint(
    model_dir: str | Path,
    out: str | Path,
    bits: int,
    group_size: int = 128,
    progress: Callable[[int, int], None] | None = None,
) -> Transformer:
    """`phiforge quantize`: read an fp32/bf16 model (HF-layout directory, .gguf file dequantized, or a short
    name), write a quantized HF-layout checkpoint beside its tokenizer."""
    from .load import load, resolve  # here, not at the top: load.py imports this module

    _levels(bits)
    src = resolve(model_dir)
    if src.is_dir() and read_quantization_config(src) is not None:
        raise ValueError(f"{model_dir}: already quantized (quantize the original checkpoint instead)")
    model, tok = load(src, dtype=torch.float32)
    quantize_model(model, bits, group_size, progress)
    save_quantized(model, out, source=src if src.is_dir() else None)
    if tok is not None and not src.is_dir():  # a GGUF's tokenizer lives in its metadata
        tok.save(out)
    return model


def model_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total
