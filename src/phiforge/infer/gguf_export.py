"""GGUF export for llama.cpp: Phi-3 architecture ("phi3"), tokenizer included, F16 / Q8_0 / Q4_0.

Tensor names and metadata keys follow llama.cpp's convert_hf_to_gguf.py (Phi3MiniModel) through the
`gguf` package's constants. Our fused qkv and gate|up projections are exactly the `attn_qkv` and `ffn_up`
tensors llama.cpp's phi3 graph expects. Norms (and rope factors) stay F32, as llama.cpp does. In a Q4_0
file the token embedding is Q8_0 (decode reads one row of it; phiforge's int4 keeps it int8 too) and
`output.weight` is Q4_0, like phiforge's int4 lm_head, so the two decode the same bytes per token.

The tokenizer is written as a GPT-2 style byte-level BPE (`tokenizer.ggml.model` = "gpt2") with
`tokenizer.ggml.pre` = "gpt-2": llama.cpp's converter identifies pre-tokenizers by hashing their output
and refuses a freshly trained one, but our pre-tokenizer is GPT-2's split regex + byte-level mapping.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_path
from ..model import Transformer
from ..model.hf import CheckpointError, load_config
from ..tokenizer import PHI3_CHAT_TEMPLATE
from .load import load_model
from .quant import dequantized_state

TYPES = ("f32", "f16", "q8_0", "q4_0")
ARCH = "phi3"


def _qtype(kind: str, name: str, tensor: torch.Tensor):
    import gguf

    Q = gguf.GGMLQuantizationType
    if tensor.dim() == 1 or kind == "f32":
        return Q.F32
    if kind == "f16":
        return Q.F16
    if kind == "q8_0" or name == "token_embd.weight":
        return Q.Q8_0
    return Q.Q4_0


def tensor_map(cfg) -> dict[str, str]:
    """our parameter name -> GGUF tensor name"""
    m = {
        "embed.weight": "token_embd.weight",
        "norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    for i in range(cfg.num_hidden_layers):
        for ours, theirs in (
            ("norm1.weight", "attn_norm.weight"),
            ("attn.qkv.weight", "attn_qkv.weight"),
            ("attn.out.weight", "attn_output.weight"),
            ("norm2.weight", "ffn_norm.weight"),
            ("mlp.up.weight", "ffn_up.weight"),
            ("mlp.down.weight", "ffn_down.weight"),
        ):
            m[f"blocks.{i}.{ours}"] = f"blk.{i}.{theirs}"
    return m


def _vocab(tok_file: Path, vocab_size: int):
    """tokens, token types and merges for tokenizer.ggml.*, padded to the model's vocab size."""
    import gguf

    T = gguf.TokenType
    d = json.loads(tok_file.read_text(encoding="utf-8"))
    model = d.get("model", {})
    if model.get("type") != "BPE":
        raise CheckpointError(f"{tok_file}: model.type {model.get('type')!r} is not supported (expected BPE)")
    tokens, types = [f"[PAD{i}]" for i in range(vocab_size)], [T.UNUSED] * vocab_size
    for text, i in model["vocab"].items():
        if i < vocab_size:
            tokens[i], types[i] = text, T.NORMAL
    for t in d.get("added_tokens", []):
        if t["id"] < vocab_size:
            tokens[t["id"]] = t["content"]
            types[t["id"]] = T.CONTROL if t.get("special") else T.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def export_gguf(
    model_dir: str | Path,
    out: str | Path,
    kind: str = "f16",
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write `out` (atomically) from a phiforge or HF-layout Phi-3 directory (a quantized one is dequantized)."""
    import gguf
    from gguf.quants import quantize

    if kind not in TYPES:
        raise ValueError(f"unknown GGUF type {kind!r}: expected one of {', '.join(TYPES)}")
    model_dir, out = Path(model_dir), Path(out)
    if (model_dir / "config.json").is_file() and load_config(model_dir).block_sparse:  # before 7B of weights
        raise CheckpointError(
            f"{model_dir}: GGUF export refused: llama.cpp has no architecture for Phi-3-small "
            "(block-sparse attention, GEGELU, muP); serve it with phiforge or vLLM instead"
        )
    model: Transformer = load_model(model_dir)
    cfg = model.cfg
    if cfg.arch != ARCH:  # llama.cpp's llama graph wants separate, permuted q/k: not written here
        raise CheckpointError(
            f"{model_dir}: GGUF export supports the Phi-3 architecture only, not {cfg.arch!r}"
        )
    tok_file = model_dir / "tokenizer.json"
    if not tok_file.is_file():
        raise CheckpointError(f"{tok_file}: not found (GGUF files carry their tokenizer)")
    sd = dequantized_state(model)
    if "lm_head.weight" not in sd:  # tied: llama.cpp's phi3 graph reads output.weight
        sd["lm_head.weight"] = sd["embed.weight"]

    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }.get(kind, gguf.LlamaFileType.MOSTLY_Q4_0)
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(tmp, ARCH)
        w.add_name(model_dir.resolve().name)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_rope_scaling_orig_ctx_len(cfg.original_max_position_embeddings or cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_rope_dimension_count(cfg.rotary_dim)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_sliding_window(cfg.sliding_window or 0)
        w.add_file_type(ftype)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        if cfg.rope_scaling:
            from ..model.rope import attention_scaling

            w.add_rope_scaling_attn_factors(attention_scaling(cfg))
            for key in ("long_factor", "short_factor"):
                sd[f"rope.{key}"] = torch.tensor(cfg.rope_scaling[key], dtype=torch.float32)

        tokens, types, merges = _vocab(tok_file, cfg.vocab_size)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        eos = cfg.eos_token_id[0] if isinstance(cfg.eos_token_id, list) else cfg.eos_token_id
        if cfg.bos_token_id is not None:
            w.add_bos_token_id(cfg.bos_token_id)
        if eos is not None:
            w.add_eos_token_id(eos)
        if cfg.pad_token_id is not None:
            w.add_pad_token_id(cfg.pad_token_id)
        w.add_add_bos_token(False)  # Phi-3's template starts with <|user|>, no BOS from the tokenizer
        w.add_chat_template(PHI3_CHAT_TEMPLATE)

        names = tensor_map(cfg)
        names.update(
            {"rope.long_factor": "rope_factors_long.weight", "rope.short_factor": "rope_factors_short.weight"}
        )
        items = [(names[k], v) for k, v in sd.items() if k in names]
        for j, (name, t) in enumerate(items):
            qt = _qtype(kind, name, t)
            data = t.float().numpy()
            if qt == gguf.GGMLQuantizationType.F32:
                w.add_tensor(name, data)
            elif qt == gguf.GGMLQuantizationType.F16:
                w.add_tensor(name, data.astype(np.float16))
            else:
                w.add_tensor(name, quantize(data, qt), raw_dtype=qt)
            if progress:
                progress(j + 1, len(items))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out
