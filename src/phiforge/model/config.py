"""One config dataclass for every supported architecture, and named presets.

An architecture is data: `arch` names a row of ARCHS (block shape, norm, MLP, biases) and the model code
reads those flags, never the name. Adding a Llama-shaped family is a row here plus a weight-name map in
hf.py. Field names follow the Hugging Face config.json so hf.py maps them 1:1.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Arch:
    """What an architecture name means to the module (transformer.py) and the kernels."""

    parallel_block: bool  # h = norm(x); x + attn(h) + mlp(h)  (else two pre-norm residual steps)
    norm: str  # "rms" (weight only) | "layer" (weight + bias)
    gated_mlp: bool  # down(act(gate) * up) with gate|up fused in one matrix, else down(act(up))
    attention_bias: bool  # bias on qkv and the output projection
    mlp_bias: bool
    lm_head_bias: bool
    yarn_is_longrope: bool = False  # early Phi-3 configs call longrope "yarn" (transformers renames it)
    block_sparse: bool = False  # alternate block-sparse and dense attention layers (attention.py)


ARCHS = {
    # Phi-3/3.5/4: RMSNorm, fused qkv, SwiGLU, GQA, longrope
    "phi3": Arch(False, "rms", True, False, False, False, yarn_is_longrope=True),
    # phi-1/1.5/2: LayerNorm, parallel attention+MLP, gelu, biases everywhere, partial rotary
    "phi": Arch(True, "layer", False, True, True, True),
    # Llama 2/3, SmolLM2, TinyLlama, Mistral: the Phi-3 block, with its own rope scalings
    "llama": Arch(False, "rms", True, False, False, False),
    # Phi-3-small: LayerNorm, GEGELU, biases on every linear, block-sparse attention on every other layer
    "phi3small": Arch(False, "layer", True, True, True, False, block_sparse=True),
}
ROPE_KINDS = ("longrope", "linear", "llama3", "yarn")
# rope_scaling keys each kind needs (the rest are optional: transformers' defaults apply)
ROPE_REQUIRED = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
    "yarn": ("factor",),
}


@dataclass
class ModelConfig:
    arch: str = "phi3"  # a key of ARCHS
    vocab_size: int = 32064
    hidden_size: int = 3072
    intermediate_size: int = 8192
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None -> = num_attention_heads (no GQA)
    max_position_embeddings: int = 4096
    original_max_position_embeddings: int | None = None  # longrope switch point / llama3, yarn base length
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 1.0
    rope_scaling: dict | None = None  # {"type": "longrope" | "linear" | "llama3" | "yarn", ...}
    norm_eps: float = 1e-5  # rms_norm_eps (rms norm) / layer_norm_eps (layer norm)
    hidden_act: str = "silu"  # phi3, llama: silu (SwiGLU); phi: gelu_new
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 32000
    pad_token_id: int | None = 32000
    sliding_window: int | None = None  # attend to the last W positions only (as transformers' Phi3)
    dropout: float = 0.0  # resid/embd/attn dropout, one knob (training only)
    head_size: int | None = None  # HF "head_dim" where it is not hidden_size / num_attention_heads
    # Phi-3-small (its config.json names). GEGELU: gate clamped above, linear half clamped to +-limit.
    gegelu_limit: float | None = None
    # muP: embeddings times this, logits divided by the width multiplier, attention scale
    # mup_attn_multiplier / head_dim instead of 1/sqrt(head_dim) when mup_use_scaling
    mup_embedding_multiplier: float | None = None
    mup_width_multiplier: float | None = None
    mup_attn_multiplier: float = 1.0
    mup_use_scaling: bool = False
    # block-sparse attention (arch flag block_sparse): a query block sees its last num_local_blocks key
    # blocks and every vert_stride-th block before them (offset per head unless homo_head_pattern);
    # layer i is dense when (i + 1) % dense_attention_every_n_layers == 0
    blocksparse_block_size: int = 64
    blocksparse_num_local_blocks: int = 16
    blocksparse_vert_stride: int = 8
    blocksparse_homo_head_pattern: bool = False
    dense_attention_every_n_layers: int | None = 2
    masked_token_ids: tuple[int, ...] = ()  # logits forced to the dtype's minimum (unused vocabulary slots)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}: expected one of {', '.join(map(repr, ARCHS))}")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_size is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} not divisible by "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.rope_scaling is not None:
            self._check_rope_scaling()
        self.masked_token_ids = tuple(self.masked_token_ids)
        bad = [i for i in self.masked_token_ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"masked_token_ids: id {bad[0]} outside the vocabulary (size {self.vocab_size})")
        if self.block_sparse:
            for key in ("blocksparse_block_size", "blocksparse_num_local_blocks", "blocksparse_vert_stride"):
                if getattr(self, key) < 1:
                    raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")

    def _check_rope_scaling(self) -> None:
        rs = dict(self.rope_scaling)
        kind = rs.pop("rope_type", rs.get("type"))
        if kind == "su" or (kind == "yarn" and ARCHS[self.arch].yarn_is_longrope):
            kind = "longrope"  # old Phi-3 names for the same thing (as transformers does)
        if kind == "default":
            self.rope_scaling = None
            return
        if kind not in ROPE_KINDS:
            raise ValueError(
                f"unsupported rope_scaling type {kind!r}: expected one of {', '.join(ROPE_KINDS)}"
            )
        if kind == "longrope":
            half = self.rotary_dim // 2
            for key in ("short_factor", "long_factor"):
                f = rs.get(key)
                if not isinstance(f, (list, tuple)) or len(f) != half:
                    raise ValueError(f"rope_scaling.{key} must be a list of {half} numbers, got {f!r:.60}")
        for key in ROPE_REQUIRED.get(kind, ()):
            if not isinstance(rs.get(key), (int, float)):
                raise ValueError(
                    f"rope_scaling.{key} must be a number for type {kind!r}, got {rs.get(key)!r}"
                )
        self.rope_scaling = {**rs, "type": kind}
        if kind != "linear" and self.original_max_position_embeddings is None:
            self.original_max_position_embeddings = self.max_position_embeddings

    # ---- derived: what the architecture means (transformer.py, kernels.py and hf.py read these) ---------
    @property
    def parallel_block(self) -> bool:
        return ARCHS[self.arch].parallel_block

    @property
    def norm_kind(self) -> str:
        return ARCHS[self.arch].norm

    @property
    def gated_mlp(self) -> bool:
        return ARCHS[self.arch].gated_mlp

    @property
    def attention_bias(self) -> bool:
        return ARCHS[self.arch].attention_bias

    @property
    def mlp_bias(self) -> bool:
        return ARCHS[self.arch].mlp_bias

    @property
    def lm_head_bias(self) -> bool:
        return ARCHS[self.arch].lm_head_bias

    @property
    def block_sparse(self) -> bool:
        return ARCHS[self.arch].block_sparse

    def sparse_layer(self, i: int) -> bool:
        """Phi-3-small's rule (its remote code and vLLM): layer i is dense when (i + 1) is a multiple of
        dense_attention_every_n_layers, block-sparse otherwise (all sparse when that is None/0)."""
        n = self.dense_attention_every_n_layers
        return self.block_sparse and not (n and (i + 1) % n == 0)

    @property
    def attention_scale(self) -> float:
        if self.mup_use_scaling:
            return self.mup_attn_multiplier / self.head_dim
        return self.head_dim**-0.5

    @property
    def rope_kind(self) -> str:
        return self.rope_scaling["type"] if self.rope_scaling else "default"

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden_size // self.num_attention_heads

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    def norm_params(self) -> int:
        """Parameters of every norm: one per block (parallel) or two, plus the final one."""
        per = self.hidden_size * (2 if self.norm_kind == "layer" else 1)
        return per * (self.num_hidden_layers * (1 if self.parallel_block else 2) + 1)

    def bias_params(self) -> int:
        h, i = self.hidden_size, self.intermediate_size
        attn = (self.q_dim + 2 * self.kv_dim + h) if self.attention_bias else 0
        mlp = ((2 * i if self.gated_mlp else i) + h) if self.mlp_bias else 0
        return self.num_hidden_layers * (attn + mlp) + (self.vocab_size if self.lm_head_bias else 0)

    def num_params(self) -> int:
        """Exact parameter count (equal to transformers' for the same config), computed without building."""
        h, i, v, L = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_hidden_layers
        attn = h * (self.q_dim + 2 * self.kv_dim) + self.q_dim * h
        mlp = h * i * (3 if self.gated_mlp else 2)
        head = 0 if self.tie_word_embeddings else v * h
        return L * (attn + mlp) + v * h + head + self.norm_params() + self.bias_params()


def _longrope(rotary_dim: int, short: float = 1.0, long_max: float = 8.0) -> dict:
    # Real checkpoints ship searched factors; presets carry a smooth ramp of the right length so a
    # freshly built model exercises the same code path (load a checkpoint to get the published ones).
    half = rotary_dim // 2
    long = [1.0 + (long_max - 1.0) * (k / max(half - 1, 1)) ** 2 for k in range(half)]
    return {"type": "longrope", "short_factor": [short] * half, "long_factor": long}


def _phi3(**kw) -> ModelConfig:
    return ModelConfig(arch="phi3", **kw)


def _llama(**kw) -> ModelConfig:
    return ModelConfig(arch="llama", **kw)


def _phi(**kw) -> ModelConfig:
    base = dict(
        arch="phi",
        vocab_size=51200,
        max_position_embeddings=2048,
        partial_rotary_factor=0.5,
        hidden_act="gelu_new",
        bos_token_id=1,  # as transformers' PhiConfig defaults; real phi-1/2 configs say 50256
        eos_token_id=2,
        pad_token_id=None,
    )
    base.update(kw)
    return ModelConfig(**base)


# Phi-3-small's tokenizer is cl100k_base padded to 100352 ids; these are never produced (cl100k's unused
# fim/endofprompt specials, id 100256 that maps to nothing, the dummy ids) and its remote code masks
# their logits (tokenization_phi3_small.py's dummy_token_indices: 91 ids).
PHI3_SMALL_MASKED_IDS = (100256, 100258, 100259, 100260, 100264, 100265, *range(100267, 100352))


def _phi3small(**kw) -> ModelConfig:
    base = dict(
        arch="phi3small",
        vocab_size=100352,
        hidden_size=4096,
        intermediate_size=14336,  # ff_intermediate_size
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=1e6,  # rope_embedding_base
        hidden_act="gegelu",
        gegelu_limit=20.0,
        mup_embedding_multiplier=10.0,
        mup_width_multiplier=8.0,
        mup_attn_multiplier=1.0,
        mup_use_scaling=True,
        tie_word_embeddings=True,
        bos_token_id=100257,
        eos_token_id=100257,
        pad_token_id=None,
        masked_token_ids=PHI3_SMALL_MASKED_IDS,
    )
    base.update(kw)
    return ModelConfig(**base)


# Public Phi checkpoints, numbers checked against their published config.json files
# (tests/model/test_config.py compares parameter counts with transformers).
PRESETS: dict[str, ModelConfig] = {
    "phi-1": _phi(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=24,
        num_attention_heads=32,
        eos_token_id=50256,
        bos_token_id=50256,
    ),
    "phi-1.5": _phi(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=24,
        num_attention_heads=32,
        eos_token_id=50256,
        bos_token_id=50256,
    ),
    "phi-2": _phi(
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=32,
        num_attention_heads=32,
        partial_rotary_factor=0.4,
        eos_token_id=50256,
        bos_token_id=50256,
    ),  # rotary_dim 32 of 80
    "phi-3-mini-4k": _phi3(
        eos_token_id=32000,
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        sliding_window=2047,
    ),
    "phi-3-mini-128k": _phi3(
        max_position_embeddings=131072,
        original_max_position_embeddings=4096,
        rope_scaling=_longrope(96),
        sliding_window=262144,
    ),
    "phi-3-medium-4k": _phi3(
        hidden_size=5120,
        intermediate_size=17920,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=10,
        sliding_window=2047,
        original_max_position_embeddings=4096,
    ),
    "phi-3.5-mini": _phi3(
        max_position_embeddings=131072,
        original_max_position_embeddings=4096,
        rope_scaling=_longrope(96),
        sliding_window=262144,
        eos_token_id=32000,
    ),
    "phi-4": _phi3(
        vocab_size=100352,
        hidden_size=5120,
        intermediate_size=17920,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=10,
        max_position_embeddings=16384,
        original_max_position_embeddings=16384,
        rope_theta=250000.0,
        bos_token_id=100257,
        eos_token_id=100265,
        pad_token_id=100349,
    ),
    "phi-4-mini": _phi3(
        vocab_size=200064,
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=32,
        num_attention_heads=24,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        original_max_position_embeddings=4096,
        partial_rotary_factor=0.75,
        rope_scaling=_longrope(96),
        tie_word_embeddings=True,
        bos_token_id=199999,
        eos_token_id=199999,
        pad_token_id=199999,
    ),
    # Phi-3-small-8k/128k-instruct: Phi3SmallConfig's defaults (remote code), 7.39B with tied embeddings
    "phi-3-small-8k": _phi3small(),
    "phi-3-small-128k": _phi3small(
        max_position_embeddings=131072,
        original_max_position_embeddings=8192,
        rope_scaling=_longrope(128),
    ),
    # SmolLM2-135M(-Instruct): HuggingFaceTB's published config.json, the embedded real model
    "smollm2-135m": _llama(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    ),
    # Tiny Phi-3-architecture presets for CPU work (vocab sized for a small BPE tokenizer).
    "tiny": _phi3(
        vocab_size=8192,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=1024,
        original_max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=0,
    ),
    "tiny-10m": _phi3(
        vocab_size=8192,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=8,
        num_attention_heads=8,
        max_position_embeddings=2048,
        original_max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=0,
    ),
    "tiny-30m": _phi3(
        vocab_size=16384,
        hidden_size=384,
        intermediate_size=1536,
        num_hidden_layers=12,
        num_attention_heads=6,
        max_position_embeddings=2048,
        original_max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=0,
    ),
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])


def quantized_bytes(cfg: ModelConfig, bits: int, group_size: int = 128) -> dict[str, int]:
    """Bytes of each part of a model in phiforge's quantized format (infer/quant.py): every linear layer,
    lm_head included, at `bits` with an fp16 scale and min per group; the embedding table int8 (decode
    reads one row per token, so only its size matters); norms and biases fp32."""
    H, V = cfg.hidden_size, cfg.vocab_size
    emb = lm_head = V * H
    norms, biases = cfg.norm_params(), cfg.bias_params()
    blocks = cfg.num_params() - emb - norms - biases - (0 if cfg.tie_word_embeddings else lm_head)

    def packed(count: int, b: int) -> int:
        return count * b // 8 + 4 * math.ceil(count / group_size)  # + fp16 scale and min per group

    return {
        "transformer linears": packed(blocks, bits),
        "lm_head": packed(lm_head, bits),
        "embedding (int8)": packed(emb, 8),
        "norms + biases (fp32)": 4 * (norms + biases),
    }


def memory_table(cfg: ModelConfig, group_size: int = 128) -> dict[str, int]:
    """Weight bytes at each precision; int8/int4 in phiforge's quantized format (see quantized_bytes)."""
    n = cfg.num_params()
    out = {"fp32": 4 * n, "bf16": 2 * n}
    for bits in (8, 4):
        out[f"int{bits}"] = sum(quantized_bytes(cfg, bits, group_size).values())
    return out


__all__ = [
    "ARCHS",
    "Arch",
    "ModelConfig",
    "PRESETS",
    "get_preset",
    "memory_table",
    "quantized_bytes",
    "field",
]
