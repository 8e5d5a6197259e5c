"""GGUF import: llama.cpp files (architectures "llama" and "phi3") -> HF checkpoint or phiforge model.

Tensors and metadata are read with the `gguf` package. F32/F16/BF16 tensors are taken as they are. Three
block types are phiforge's own group-wise format with group 32 (infer/quant.py: w = scale * q + min, fp16
scale and min, int4 packed with byte j = q[j] | q[j+16] << 4), so they stay integer with no second rounding:

    Q4_1: scale = d, min = m          Q4_0: scale = d, min = -8 d          Q8_0: int8 q, scale = d, min = 0

(-8 d is exact in fp16: a power-of-two multiple). Every other type (K-quants, ...) is dequantized with
`gguf.quants.dequantize`. llama.cpp permutes the Q and K rows of a llama model for its interleaved rope
(convert_hf_to_gguf's `LlamaModel.permute`); that is a row permutation, undone here on the rows of the
blocks, so it is exact too. The tokenizer is rebuilt from the `tokenizer.*` metadata (tokenizer.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_path, write_json
from ..model import ModelConfig, Transformer
from ..model.hf import CheckpointError, config_from_hf
from ..tokenizer import Tokenizer, tokenizer_from_vocab
from .gguf_export import tensor_map

ARCHS = {"llama": ("LlamaForCausalLM", "llama"), "phi3": ("Phi3ForCausalLM", "phi3")}
GROUP = 32  # the block size of Q4_0 / Q4_1 / Q8_0

# GGUF tensor name (blk.{i}. stripped) -> HF name (model.layers.{i}. stripped), per architecture
_LAYER_NAMES = {
    "llama": {
        "attn_norm.weight": "input_layernorm.weight",
        "attn_q.weight": "self_attn.q_proj.weight",
        "attn_k.weight": "self_attn.k_proj.weight",
        "attn_v.weight": "self_attn.v_proj.weight",
        "attn_output.weight": "self_attn.o_proj.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
        "ffn_gate.weight": "mlp.gate_proj.weight",
        "ffn_up.weight": "mlp.up_proj.weight",
        "ffn_down.weight": "mlp.down_proj.weight",
    },
    "phi3": {
        "attn_norm.weight": "input_layernorm.weight",
        "attn_qkv.weight": "self_attn.qkv_proj.weight",
        "attn_output.weight": "self_attn.o_proj.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
        "ffn_up.weight": "mlp.gate_up_proj.weight",  # llama.cpp's phi3 ffn_up is the fused gate|up
        "ffn_down.weight": "mlp.down_proj.weight",
    },
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_ROPE_FACTORS = {"rope_factors_long.weight": "long_factor", "rope_factors_short.weight": "short_factor"}


@dataclass
class QTensor:
    """A Q4_0 / Q4_1 / Q8_0 tensor in phiforge's group-32 format (infer/quant.py), exactly as stored."""

    bits: int  # 4 or 8
    qweight: np.ndarray  # int4: uint8 (N, K/2); int8: int8 (N, K)
    scales: np.ndarray  # float16 (N, K/32)
    mins: np.ndarray  # float16 (N, K/32)

    @property
    def shape(self) -> tuple[int, int]:
        return self.scales.shape[0], self.scales.shape[1] * GROUP

    def rows(self, idx) -> QTensor:
        return QTensor(self.bits, self.qweight[idx], self.scales[idx], self.mins[idx])

    def dequantize(self) -> np.ndarray:
        from .quant import dequantize_weight

        t = [torch.from_numpy(np.ascontiguousarray(a)) for a in (self.qweight, self.scales, self.mins)]
        return dequantize_weight(*t, self.bits, GROUP).numpy()


def _blocks(data: np.ndarray, qtype) -> QTensor:
    """(N, bytes per row) uint8 of Q4_0/Q4_1/Q8_0 blocks -> QTensor, no arithmetic on the values."""
    import gguf

    Q = gguf.GGMLQuantizationType
    head = 4 if qtype == Q.Q4_1 else 2  # fp16 d (and fp16 m for Q4_1) before the quants
    size = gguf.GGML_QUANT_SIZES[qtype][1]
    n = data.shape[0]
    b = np.ascontiguousarray(data).reshape(n, -1, size)
    d = b[..., :2].copy().view(np.float16)[..., 0]
    qs = b[..., head:]
    if qtype == Q.Q8_0:
        return QTensor(8, qs.copy().view(np.int8).reshape(n, -1), d, np.zeros_like(d))
    mins = b[..., 2:4].copy().view(np.float16)[..., 0] if qtype == Q.Q4_1 else (d * np.float16(-8))
    return QTensor(4, qs.reshape(n, -1).copy(), d, mins)


def _tensor(path: Path, t) -> np.ndarray | QTensor:
    import gguf
    from gguf.quants import dequantize

    Q = gguf.GGMLQuantizationType
    shape = tuple(int(x) for x in reversed(t.shape))  # GGUF lists ne0 (the row length) first
    if t.tensor_type in (Q.F32, Q.F16):
        return np.asarray(t.data).reshape(shape).astype(np.float32)
    if t.tensor_type in (Q.Q4_0, Q.Q4_1, Q.Q8_0) and len(shape) == 2 and shape[1] % GROUP == 0:
        q = _blocks(np.asarray(t.data).reshape(shape[0], -1), t.tensor_type)
        # the int8 kernel assumes q in -127..127; llama.cpp never writes -128, other writers might
        if not (q.bits == 8 and (q.qweight == -128).any()):
            return q
    try:
        return dequantize(np.asarray(t.data), t.tensor_type).reshape(shape).astype(np.float32)
    except NotImplementedError:
        raise CheckpointError(
            f"{path}: tensor {t.name!r} has type {t.tensor_type.name}, which cannot be dequantized"
        ) from None


def _reader(path: Path):
    import gguf

    class Reader(gguf.GGUFReader):
        """gguf's reader, 3x faster on a 49k-token vocabulary: it slices its memmap once per string part, and a
        memmap slice pays numpy's memmap bookkeeping each time; a plain ndarray view of the same mapping does
        not (tensors stay memory-mapped: the view's base is the mapping)."""

        def _get(self, offset, dtype, count=1, override_order=None):
            if type(self.data) is np.memmap:
                self.data = self.data.view(np.ndarray)
            return super()._get(offset, dtype, count, override_order)

    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        return Reader(path)
    except Exception as e:  # numpy / struct errors from a short or garbled file
        size = path.stat().st_size
        raise CheckpointError(f"{path}: truncated or corrupt GGUF file ({size} bytes): {e}") from None


def _fields(path: Path, reader) -> dict:
    out = {}
    for k, f in reader.fields.items():
        try:
            out[k] = f.contents()
        except Exception as e:
            raise CheckpointError(f"{path}: metadata field {k!r} cannot be read ({e})") from None
    return out


def _need(path: Path, meta: dict, key: str):
    if key not in meta:
        raise CheckpointError(f"{path}: metadata field {key!r} is missing")
    return meta[key]


def _unpermute(w, n_head: int):
    """Undo convert_hf_to_gguf's LlamaModel.permute (rows of each head: halves -> interleaved pairs)."""
    rows = w.shape[0]
    idx = np.arange(rows).reshape(n_head, rows // n_head // 2, 2).swapaxes(1, 2).reshape(rows)
    return w.rows(idx) if isinstance(w, QTensor) else w[idx]


def _hf_config(path: Path, meta: dict, arch: str, tensors: dict) -> dict:
    p = f"{arch}."
    heads = int(_need(path, meta, p + "attention.head_count"))
    hidden = int(_need(path, meta, p + "embedding_length"))
    head_dim = int(meta.get(p + "attention.key_length", hidden // heads))
    vocab = len(meta["tokenizer.ggml.tokens"])
    d = {
        "architectures": [ARCHS[arch][0]],
        "model_type": ARCHS[arch][1],
        "vocab_size": int(meta.get(p + "vocab_size", vocab)),
        "hidden_size": hidden,
        "intermediate_size": int(_need(path, meta, p + "feed_forward_length")),
        "num_hidden_layers": int(_need(path, meta, p + "block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get(p + "attention.head_count_kv", heads)),
        "max_position_embeddings": int(_need(path, meta, p + "context_length")),
        "rms_norm_eps": float(_need(path, meta, p + "attention.layer_norm_rms_epsilon")),
        "rope_theta": float(meta.get(p + "rope.freq_base", 10000.0)),
        "hidden_act": "silu",
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
    }
    rot = int(meta.get(p + "rope.dimension_count", head_dim))
    if arch == "llama":
        d.update(head_dim=head_dim, attention_bias=False, mlp_bias=False)
        kind = meta.get(p + "rope.scaling.type")
        if kind in ("linear", "yarn"):
            d["rope_scaling"] = {"rope_type": kind, "factor": float(meta[p + "rope.scaling.factor"])}
            if kind == "yarn":
                orig = int(_need(path, meta, p + "rope.scaling.original_context_length"))
                d["rope_scaling"]["original_max_position_embeddings"] = orig
        elif kind not in (None, "none"):
            raise CheckpointError(f"{path}: metadata field {p}rope.scaling.type {kind!r} is not supported")
    else:
        d["partial_rotary_factor"] = rot / head_dim
        d["original_max_position_embeddings"] = int(
            meta.get(p + "rope.scaling.original_context_length", d["max_position_embeddings"])
        )
        d["sliding_window"] = int(meta.get(p + "attention.sliding_window", 0)) or None
        factors = {k: tensors.pop(k) for k in list(tensors) if k in _ROPE_FACTORS.values()}
        if factors:
            d["rope_scaling"] = {"type": "longrope", **{k: v.tolist() for k, v in factors.items()}}
    return d


def read_gguf(path: str | Path) -> tuple[dict, dict[str, np.ndarray | QTensor], Tokenizer]:
    """(HF config.json dict, HF tensor name -> fp32 array or QTensor, tokenizer) from a llama/phi3 GGUF."""
    path = Path(path)
    reader = _reader(path)
    meta = _fields(path, reader)
    arch = _need(path, meta, "general.architecture")
    if arch not in ARCHS:
        raise CheckpointError(
            f"{path}: metadata field 'general.architecture' is {arch!r} (supported: {', '.join(ARCHS)})"
        )
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens"):
        if key not in meta:
            raise CheckpointError(f"{path}: metadata field {key!r} is missing (a GGUF without a tokenizer)")
    layer_names = _LAYER_NAMES[arch]
    tensors: dict = {}
    for t in reader.tensors:
        name = t.name
        if arch == "phi3" and name in _ROPE_FACTORS:
            tensors[_ROPE_FACTORS[name]] = _tensor(path, t).reshape(-1)
            continue
        parts = name.split(".", 2)
        if name in _TOP_NAMES:
            hf = _TOP_NAMES[name]
        elif parts[0] == "blk" and parts[1].isdigit() and parts[2] in layer_names:
            hf = f"model.layers.{parts[1]}.{layer_names[parts[2]]}"
        else:
            raise CheckpointError(f"{path}: tensor {name!r} is not supported for architecture {arch!r}")
        tensors[hf] = _tensor(path, t)
    cfg = _hf_config(path, meta, arch, tensors)
    if arch == "llama":
        for key, tensor in tensors.items():
            if key.endswith("q_proj.weight"):
                tensors[key] = _unpermute(tensor, cfg["num_attention_heads"])
            elif key.endswith("k_proj.weight"):
                tensors[key] = _unpermute(tensor, cfg["num_key_value_heads"])
    return cfg, tensors, _tokenizer(path, meta, cfg)


def _tokenizer(path: Path, meta: dict, cfg: dict) -> Tokenizer:
    kind = meta["tokenizer.ggml.model"]
    tokens = meta["tokenizer.ggml.tokens"]
    ids = {k: meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding", "unknown")}
    for k, i in ids.items():
        if i is not None and not 0 <= i < len(tokens):
            raise CheckpointError(
                f"{path}: metadata field 'tokenizer.ggml.{k}_token_id' = {i} is out of range"
            )
    try:
        tok = tokenizer_from_vocab(
            kind,
            tokens,
            types=meta.get("tokenizer.ggml.token_type"),
            merges=meta.get("tokenizer.ggml.merges"),
            scores=meta.get("tokenizer.ggml.scores"),
            pre=meta.get("tokenizer.ggml.pre"),
            add_bos=meta.get("tokenizer.ggml.add_bos_token", kind == "llama"),
            bos_id=ids["bos"],
            unk_id=ids["unknown"],
        )
    except ValueError as e:
        raise CheckpointError(f"{path}: metadata field 'tokenizer.ggml.model': {e}") from None

    def name(i):
        return tokens[i] if i is not None else None

    eos = name(ids["eos"]) or "<|endoftext|>"
    return Tokenizer(
        tok,
        chat_template=meta.get("tokenizer.chat_template"),
        bos_token=name(ids["bos"]),
        eos_token=eos,
        pad_token=name(ids["padding"]),
        unk_token=name(ids["unknown"]),
        model_max_length=cfg["max_position_embeddings"],
    )


def convert_gguf(path: str | Path, out_dir: str | Path) -> Path:
    """`phiforge convert FILE.gguf --out DIR`: an HF-layout checkpoint (fp32, dequantized) + tokenizer."""
    from safetensors.numpy import save_file

    cfg, tensors, tok = read_gguf(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = {
        k: np.ascontiguousarray(v.dequantize() if isinstance(v, QTensor) else v) for k, v in tensors.items()
    }
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt"})
    write_json(out / "config.json", {**cfg, "torch_dtype": "float32"})
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg[k] is not None}
    write_json(out / "generation_config.json", gen)
    tok.save(out)
    return out


def convert_once(path: str | Path, out_dir: str | Path) -> Path:
    """`convert_gguf` into out_dir unless a finished conversion is there: it is converted beside and renamed
    when complete, so a killed run leaves no half model and a re-run reuses the whole one."""
    import shutil

    out = Path(out_dir)
    if not out.is_dir():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        convert_gguf(path, tmp)
        tmp.rename(out)
    return out


# ---- phiforge model ----


def _our_tensors(cfg: ModelConfig, hf: dict) -> dict:
    """HF names -> our parameter names (gguf_export's map, inverted), fusing llama's q/k/v and gate/up rows."""
    hf = dict(hf)
    for i in range(cfg.num_hidden_layers):
        pre = f"model.layers.{i}."
        for fused, parts in (
            ("self_attn.qkv_proj.weight", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            ("mlp.gate_up_proj.weight", ("mlp.gate_proj", "mlp.up_proj")),
        ):
            names = [f"{pre}{p}.weight" for p in parts]
            if all(n in hf for n in names):
                hf[pre + fused] = _cat([hf.pop(n) for n in names])
    ours = {}
    gguf_to_ours = {v: k for k, v in tensor_map(cfg).items()}
    hf_to_gguf = {v: k for k, v in _TOP_NAMES.items()}
    for i in range(cfg.num_hidden_layers):
        for g, h in _LAYER_NAMES["phi3"].items():
            hf_to_gguf[f"model.layers.{i}.{h}"] = f"blk.{i}.{g}"
    for k, v in hf.items():
        ours[gguf_to_ours[hf_to_gguf[k]]] = v
    return ours


def _cat(parts):
    if all(isinstance(p, QTensor) for p in parts) and len({p.bits for p in parts}) == 1:
        return QTensor(
            parts[0].bits,
            *(np.concatenate([getattr(p, a) for p in parts]) for a in ("qweight", "scales", "mins")),
        )
    return np.concatenate([p.dequantize() if isinstance(p, QTensor) else p for p in parts])


def load_gguf(path: str | Path, device="cpu", dequantize: bool = False) -> tuple[Transformer, Tokenizer]:
    """A phiforge Transformer + Tokenizer from a GGUF file. Q4_0/Q4_1/Q8_0 weights stay integer
    (QuantLinear / QuantEmbedding, group 32) unless `dequantize`; everything else is fp32."""
    from torch import nn

    from .quant import QuantEmbedding, QuantLinear, _parent

    path = Path(path)
    hf_cfg, hf, tok = read_gguf(path)
    cfg = config_from_hf(hf_cfg, str(path))
    with torch.device("meta"):
        model = Transformer(cfg)
    sd = _our_tensors(cfg, hf)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(sd))
    if missing:
        raise CheckpointError(f"{path}: missing tensor for {missing[0]!r} ({len(missing)} missing)")
    for k, v in sd.items():
        if k not in expected or tuple(v.shape) != expected[k]:
            raise CheckpointError(
                f"{path}: tensor for {k!r} has shape {v.shape}, the metadata implies {expected.get(k)}"
            )
    if cfg.tie_word_embeddings and isinstance(sd["embed.weight"], QTensor) and not dequantize:
        sd["lm_head.weight"] = sd["embed.weight"]  # a quantized head cannot share nn.Embedding's weight
    dense = {}
    for k, v in sd.items():
        if not isinstance(v, QTensor) or dequantize:
            dense[k] = torch.from_numpy(np.ascontiguousarray(v.dequantize() if isinstance(v, QTensor) else v))
            continue
        buffers = [torch.from_numpy(np.ascontiguousarray(a)) for a in (v.qweight, v.scales, v.mins)]
        parent, attr = _parent(model, k.removesuffix(".weight"))
        if k == "embed.weight":
            m = QuantEmbedding(cfg.vocab_size, cfg.hidden_size, GROUP, device="meta")
            if v.bits == 4:  # QuantEmbedding is int8: the same q in 0..15, one per byte (exact)
                b = buffers[0].reshape(-1, cfg.hidden_size // 32, 1, 16)
                buffers[0] = torch.cat([b & 15, b >> 4], dim=2).reshape(-1, cfg.hidden_size).to(torch.int8)
        else:
            lin = getattr(parent, attr)
            m = QuantLinear(lin.in_features, lin.out_features, v.bits, GROUP, bias=False, device="meta")
        m.qweight, m.scales, m.mins = buffers
        setattr(parent, attr, m)
    model.load_state_dict(dense, strict=False, assign=True)
    if cfg.tie_word_embeddings and isinstance(model.lm_head, nn.Linear):
        model.lm_head.weight = model.embed.weight
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise CheckpointError(f"{path}: no tensor for {leftover[0]!r}")
    bits = [m.bits for m in model.modules() if isinstance(m, QuantLinear)]
    if bits:  # the most common width (a Q4 file's tied head is Q8_0)
        model.quantization = {"bits": max(set(bits), key=bits.count), "group_size": GROUP}
    return model.to(device), tok
