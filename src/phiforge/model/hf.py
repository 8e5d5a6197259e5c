"""Hugging Face layout in and out: config.json <-> ModelConfig, safetensors (single or sharded) <-> Transformer.

One conversion path each way, driven by per-architecture name maps (litgpt's pattern). The phi (1/1.5/2)
checkpoints keep q/k/v separate; we fuse them on load and split them on save.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..io import atomic_path, write_json
from .config import PHI3_SMALL_MASKED_IDS, ModelConfig
from .transformer import Transformer


class CheckpointError(ValueError):
    """Bad checkpoint input; the message is one line naming the file, field or value."""


@dataclass(frozen=True)
class HFArch:
    """One architecture's Hugging Face spelling: class and model_type, config.json keys, tensor names."""

    hf_class: str
    model_type: str
    names: dict[str, str]  # HF tensor name ({i} = layer) -> our name
    fused: dict[str, tuple[str, ...]]  # our fused tensor -> the HF tensors concatenated (rows) to make it
    eps_key: str  # config.json's name for norm_eps
    rotary_default: float = 1.0  # partial_rotary_factor when config.json leaves it out
    extra: tuple[str, ...] = ()  # config.json fields written only for this architecture
    renames: dict[str, str] = field(default_factory=dict)  # config.json key -> our field, where they differ
    defaults: dict = field(default_factory=dict)  # our field -> the HF config class's default when absent
    reorder: dict[str, str] = field(default_factory=dict)  # our tensor -> how HF orders its rows (_ORDERS)


_QKV = tuple(f"model.layers.{{i}}.self_attn.{p}_proj.weight" for p in "qkv")
_ATTN_OUT = {"model.layers.{i}.self_attn.o_proj.weight": "blocks.{i}.attn.out.weight"}
_RMS_BLOCK = {
    "model.embed_tokens.weight": "embed.weight",
    "model.layers.{i}.input_layernorm.weight": "blocks.{i}.norm1.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blocks.{i}.norm2.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blocks.{i}.mlp.down.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
}
HF_ARCHS = {
    "phi3": HFArch(
        "Phi3ForCausalLM",
        "phi3",
        {
            **_RMS_BLOCK,
            **_ATTN_OUT,
            "model.layers.{i}.self_attn.qkv_proj.weight": "blocks.{i}.attn.qkv.weight",
            "model.layers.{i}.mlp.gate_up_proj.weight": "blocks.{i}.mlp.up.weight",
        },
        {},
        "rms_norm_eps",
        extra=("original_max_position_embeddings", "sliding_window"),
    ),
    "phi": HFArch(
        "PhiForCausalLM",
        "phi",
        {
            "model.embed_tokens.weight": "embed.weight",
            "model.layers.{i}.input_layernorm.weight": "blocks.{i}.norm1.weight",
            "model.layers.{i}.input_layernorm.bias": "blocks.{i}.norm1.bias",
            "model.layers.{i}.self_attn.dense.weight": "blocks.{i}.attn.out.weight",
            "model.layers.{i}.self_attn.dense.bias": "blocks.{i}.attn.out.bias",
            "model.layers.{i}.mlp.fc1.weight": "blocks.{i}.mlp.up.weight",
            "model.layers.{i}.mlp.fc1.bias": "blocks.{i}.mlp.up.bias",
            "model.layers.{i}.mlp.fc2.weight": "blocks.{i}.mlp.down.weight",
            "model.layers.{i}.mlp.fc2.bias": "blocks.{i}.mlp.down.bias",
            "model.final_layernorm.weight": "norm.weight",
            "model.final_layernorm.bias": "norm.bias",
            "lm_head.weight": "lm_head.weight",
            "lm_head.bias": "lm_head.bias",
        },
        {
            "blocks.{i}.attn.qkv.weight": _QKV,
            "blocks.{i}.attn.qkv.bias": tuple(n.replace("weight", "bias") for n in _QKV),
        },
        "layer_norm_eps",
        rotary_default=0.5,
        extra=("qk_layernorm",),
    ),
    "llama": HFArch(
        "LlamaForCausalLM",
        "llama",
        {**_RMS_BLOCK, **_ATTN_OUT},
        {
            "blocks.{i}.attn.qkv.weight": _QKV,
            "blocks.{i}.mlp.up.weight": (
                "model.layers.{i}.mlp.gate_proj.weight",
                "model.layers.{i}.mlp.up_proj.weight",
            ),
        },
        "rms_norm_eps",
        extra=("head_dim",),
    ),
    # Phi-3-small (remote code Phi3SmallForCausalLM): its own tensor and config names, qkv rows grouped by KV
    # head, GEGELU's up_proj rows interleaved gelu/linear; lm_head tied to the embedding
    "phi3small": HFArch(
        "Phi3SmallForCausalLM",
        "phi3small",
        {
            "model.embed_tokens.weight": "embed.weight",
            **{
                f"model.{hf}.{w}": f"{ours}.{w}"
                for hf, ours in (
                    ("layers.{i}.input_layernorm", "blocks.{i}.norm1"),
                    ("layers.{i}.post_attention_layernorm", "blocks.{i}.norm2"),
                    ("layers.{i}.self_attn.query_key_value", "blocks.{i}.attn.qkv"),
                    ("layers.{i}.self_attn.dense", "blocks.{i}.attn.out"),
                    ("layers.{i}.mlp.up_proj", "blocks.{i}.mlp.up"),
                    ("layers.{i}.mlp.down_proj", "blocks.{i}.mlp.down"),
                    ("final_layernorm", "norm"),
                )
                for w in ("weight", "bias")
            },
            "lm_head.weight": "lm_head.weight",
        },
        {},
        "layer_norm_epsilon",
        extra=(
            "gegelu_limit",
            "mup_embedding_multiplier",
            "mup_width_multiplier",
            "mup_attn_multiplier",
            "mup_use_scaling",
            "blocksparse_block_size",
            "blocksparse_num_local_blocks",
            "blocksparse_vert_stride",
            "blocksparse_homo_head_pattern",
            "dense_attention_every_n_layers",
        ),
        renames={
            "rope_embedding_base": "rope_theta",
            "ff_intermediate_size": "intermediate_size",
            "dummy_token_indices": "masked_token_ids",
        },
        defaults=dict(  # Phi3SmallConfig's (and PretrainedConfig's tie_word_embeddings)
            vocab_size=100352,
            max_position_embeddings=8192,
            rope_theta=1e6,
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            hidden_act="gegelu",
            gegelu_limit=20.0,
            intermediate_size=14336,
            mup_use_scaling=True,
            mup_width_multiplier=8.0,
            mup_embedding_multiplier=10.0,
            tie_word_embeddings=True,
            bos_token_id=100257,
            eos_token_id=100257,
            pad_token_id=None,
        ),
        reorder={
            "blocks.{i}.attn.qkv.weight": "qkv_by_kv_group",
            "blocks.{i}.attn.qkv.bias": "qkv_by_kv_group",
            "blocks.{i}.mlp.up.weight": "gate_up_interleaved",
            "blocks.{i}.mlp.up.bias": "gate_up_interleaved",
        },
    ),
}
# an HF config's architectures[0] / model_type -> our arch
ARCH_OF = {a.hf_class: k for k, a in HF_ARCHS.items()}
MODEL_TYPE_OF = {a.model_type: k for k, a in HF_ARCHS.items()}

# config.json keys that carry no meaning for inference here (training knobs, bookkeeping).
IGNORED_KEYS = {
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "auto_map",
    "use_cache",
    "initializer_range",
    "attention_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "is_encoder_decoder",
    "tokenizer_class",
    "problem_type",
    "id2label",
    "label2id",
    "chunk_size_feed_forward",
    "model_type",
    "architectures",
    "full_attn_mod",
    "interpolate_factor",
    "layer_types",
    "use_return_dict",
    "pruned_heads",
    "tf_legacy_loss",
    "use_bfloat16",
    "torchscript",
    "task_specific_params",
    "is_llama_config",  # SmolLM2's exporter bookkeeping
    "transformers.js_config",
    "quantization_config",  # phiforge quantize: read by infer/quant.py, config-only readers (info) skip it
    # Phi-3-small: training-only knobs (dropouts, padding to 64 for its Triton kernel's backward)
    "attention_dropout_prob",
    "embedding_dropout_prob",
    "ffn_dropout_prob",
    "pad_sequence_to_multiple_of_64",
    "reorder_and_upcast_attn",
    "gegelu_pad_to_256",  # only applies with ff_dim_multiplier, which must be null
}
# keys that must hold this value because we do not implement the alternative
REQUIRED_VALUES = {
    "attention_bias": False,
    "mlp_bias": False,
    "lm_head_bias": False,
    "qk_layernorm": False,
    "rope_interleaved": False,
    "pretraining_tp": 1,
    "ff_dim_multiplier": None,  # Phi-3-small: ff_intermediate_size gives the width
}


def config_from_hf(d: dict, source: str = "config.json") -> ModelConfig:
    archs = d.get("architectures") or []
    arch = ARCH_OF.get(archs[0] if archs else "") or MODEL_TYPE_OF.get(d.get("model_type"))
    if arch is None:
        known = ", ".join(a.hf_class for a in HF_ARCHS.values())
        raise CheckpointError(
            f"{source}: unknown architecture {archs or d.get('model_type')!r} (supported: {known})"
        )
    spec = HF_ARCHS[arch]
    d = dict(d)
    if arch == "phi3small":
        d = _phi3small_from_hf(d, source)
    for key, ours in spec.renames.items():
        if key in d:
            d[ours] = d.pop(key)
    d = {**spec.defaults, **d}
    rope = d.pop("rope_parameters", None) or {}  # transformers >= 5 nests rope settings here
    scaling = d.pop("rope_scaling", None) or (rope if rope.get("rope_type", "default") != "default" else None)
    kw = dict(arch=arch, rope_theta=d.pop("rope_theta", rope.get("rope_theta", 10000.0)))
    kw["partial_rotary_factor"] = d.pop(
        "partial_rotary_factor", rope.get("partial_rotary_factor", spec.rotary_default)
    )
    if scaling:
        scaling = {k: v for k, v in scaling.items() if k not in ("rope_theta", "partial_rotary_factor")}
        if "original_max_position_embeddings" in scaling:
            kw["original_max_position_embeddings"] = scaling.pop("original_max_position_embeddings")
        kw["rope_scaling"] = scaling
    kw["norm_eps"] = d.pop(spec.eps_key, 1e-5)
    for key, want in REQUIRED_VALUES.items():
        if key in d and (got := d.pop(key)) != want and (got is not None or key == "ff_dim_multiplier"):
            raise CheckpointError(f"{source}: field {key}={got!r} is not supported (only {want!r})")
    head_dim = d.pop("head_dim", None)  # transformers writes it even when derived: keep only a real override
    if (
        head_dim
        and d.get("num_attention_heads")
        and head_dim * d["num_attention_heads"] != d.get("hidden_size")
    ):
        kw["head_size"] = head_dim
    fields = set(ModelConfig.__dataclass_fields__) - {
        "arch",
        "norm_eps",
        "dropout",
        "rope_scaling",
        "head_size",
    }
    for key, value in d.items():
        if key in fields:
            kw[key] = value
        elif key not in IGNORED_KEYS:
            raise CheckpointError(f"{source}: unknown config field {key!r}")
    try:
        return ModelConfig(**kw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: {e}") from None


def _phi3small_from_hf(d: dict, source: str) -> dict:
    kernel = d.pop("blocksparse_triton_kernel_block_size", None)
    if kernel is not None and kernel != d.get("blocksparse_block_size", 64):
        raise CheckpointError(
            f"{source}: field blocksparse_triton_kernel_block_size={kernel!r} differs from "
            f"blocksparse_block_size (only equal sizes are supported)"
        )
    scale = d.pop("rope_position_scale", 1.0)
    if scale != 1.0:  # positions divided by scale: linear rope scaling (as vLLM reads it)
        if d.get("rope_scaling"):
            raise CheckpointError(f"{source}: rope_position_scale={scale!r} together with rope_scaling")
        d["rope_scaling"] = {"type": "linear", "factor": scale}
    if "dummy_token_indices" not in d:  # the remote code derives them from its tokenizer
        vocab = d.get("vocab_size", 100352)
        d["dummy_token_indices"] = [i for i in PHI3_SMALL_MASKED_IDS if i < vocab]
    return d


def _phi3small_to_hf(cfg: ModelConfig, d: dict) -> dict:
    d["rope_embedding_base"] = d.pop("rope_theta")
    d["ff_intermediate_size"] = d.pop("intermediate_size")
    d.pop("masked_token_ids", None)
    if list(cfg.masked_token_ids) != [i for i in PHI3_SMALL_MASKED_IDS if i < cfg.vocab_size]:
        d["dummy_token_indices"] = list(cfg.masked_token_ids)  # else the remote code derives its own list
    d["blocksparse_triton_kernel_block_size"] = cfg.blocksparse_block_size
    d["ff_dim_multiplier"] = None
    d.pop("partial_rotary_factor")
    d["rope_position_scale"] = 1.0
    if cfg.rope_kind == "linear":
        d["rope_position_scale"] = d.pop("rope_scaling")["factor"]
    elif cfg.rope_kind == "longrope":  # as the published 128k config.json spells it
        d["rope_scaling"] = {**d["rope_scaling"], "type": "su"}
    return d


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    spec = HF_ARCHS[cfg.arch]
    d = {
        "architectures": [spec.hf_class],
        "model_type": spec.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": cfg.rope_theta,
        "partial_rotary_factor": cfg.partial_rotary_factor,
        "rope_scaling": cfg.rope_scaling,
        "hidden_act": cfg.hidden_act,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "initializer_range": 0.02,
        "use_cache": True,
        spec.eps_key: cfg.norm_eps,
    }
    if "original_max_position_embeddings" in spec.extra:
        d["original_max_position_embeddings"] = (
            cfg.original_max_position_embeddings or cfg.max_position_embeddings
        )
    elif cfg.rope_kind in (
        "llama3",
        "yarn",
        "longrope",
    ):  # the rest keep the pretraining length in rope_scaling
        d["rope_scaling"] = {
            **cfg.rope_scaling,
            "original_max_position_embeddings": cfg.original_max_position_embeddings,
        }
    if "sliding_window" in spec.extra:
        d["sliding_window"] = cfg.sliding_window
    if "qk_layernorm" in spec.extra:
        d["qk_layernorm"] = False
    if cfg.head_size is not None or "head_dim" in spec.extra:
        d["head_dim"] = cfg.head_dim
    for key in spec.extra:
        if key not in d and hasattr(cfg, key):
            d[key] = getattr(cfg, key)
    if cfg.masked_token_ids:
        d["masked_token_ids"] = list(cfg.masked_token_ids)
    if cfg.arch == "phi3small":
        d = _phi3small_to_hf(cfg, d)
    return d


def _expand(cfg: ModelConfig) -> dict[str, str]:
    """Concrete HF name -> our name for every unfused tensor of this config."""
    out = {}
    for hf, ours in HF_ARCHS[cfg.arch].names.items():
        if "{i}" not in hf:
            out[hf] = ours
            continue
        for i in range(cfg.num_hidden_layers):
            out[hf.format(i=i)] = ours.format(i=i)
    if cfg.tie_word_embeddings:
        out.pop("lm_head.weight")
    return out


def _fused(cfg: ModelConfig) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """Our fused tensor -> [(HF name, shape)] of the parts concatenated along rows, in order."""
    out = {}
    for ours, parts in HF_ARCHS[cfg.arch].fused.items():
        # our fused layouts: qkv = [q; k; v], up = [gate; up] (the MLP chunks it in that order)
        rows = [cfg.q_dim, cfg.kv_dim, cfg.kv_dim] if ".attn.qkv." in ours else [cfg.intermediate_size] * 2
        cols = (cfg.hidden_size,) if ours.endswith("weight") else ()
        for i in range(cfg.num_hidden_layers):
            out[ours.format(i=i)] = [(hf.format(i=i), (r, *cols)) for hf, r in zip(parts, rows, strict=True)]
    return out


def _row_order(kind: str, cfg: ModelConfig) -> torch.Tensor:
    """Index r of our row r in the HF tensor (ours = hf[order]; hf = ours[argsort(order)])."""
    if kind == "qkv_by_kv_group":  # HF: per KV head j, [q heads of group j..., k_j, v_j]
        g, hd = cfg.num_attention_heads // cfg.num_key_value_heads, cfg.head_dim
        heads = torch.arange(cfg.num_key_value_heads * (g + 2)).view(-1, g + 2)
        ours = torch.cat([heads[:, :g].flatten(), heads[:, g], heads[:, g + 1]])  # [q; k; v]
        return (ours[:, None] * hd + torch.arange(hd)).flatten()
    if kind == "gate_up_interleaved":  # HF: gelu half at even rows, linear half at odd rows
        n = 2 * cfg.intermediate_size
        return torch.cat([torch.arange(0, n, 2), torch.arange(1, n, 2)])
    raise ValueError(f"unknown row order {kind!r}")


def _orders(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our tensor name -> row order, for every tensor HF stores in another row order."""
    out = {}
    for ours, kind in HF_ARCHS[cfg.arch].reorder.items():
        order = _row_order(kind, cfg)
        for i in range(cfg.num_hidden_layers):
            out[ours.format(i=i)] = order
    return out


def load_config(path: str | Path) -> ModelConfig:
    f = Path(path) / "config.json"
    if not f.is_file():
        raise CheckpointError(f"{f}: not found (expected a Hugging Face model directory)")
    try:
        d = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: invalid JSON ({e})") from None
    return config_from_hf(d, str(f))


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: invalid index ({e})") from None
        files = [path / n for n in names]
    else:
        files = [path / "model.safetensors"]
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: not found")
    return files


def _read_tensors(files: list[Path]):
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    yield f, key, st.get_tensor(key)
        except SafetensorError as e:
            raise CheckpointError(f"{f}: corrupt safetensors file ({e})") from None


def load_state_dict(path: str | Path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    path = Path(path)
    names = _expand(cfg)
    fused = _fused(cfg)
    part_of = {hf: ours for ours, parts in fused.items() for hf, _ in parts}
    got: dict[str, torch.Tensor] = {}  # fused parts by HF name
    sd: dict[str, torch.Tensor] = {}
    for f, key, t in _read_tensors(_weight_files(path)):
        if key in names:
            sd[names[key]] = t
        elif key in part_of:
            got[key] = t
        elif key == "lm_head.weight" and cfg.tie_word_embeddings or key.endswith("rotary_emb.inv_freq"):
            continue  # redundant copies some exporters write
        else:
            raise CheckpointError(f"{f}: unexpected tensor {key!r} for {HF_ARCHS[cfg.arch].hf_class}")
    for ours, parts in fused.items():
        if not any(hf in got for hf, _ in parts):
            continue  # wholly missing: load_model names it
        for (
            hf,
            want,
        ) in parts:  # check each part so errors name the HF tensor (torch.cat would raise RuntimeError)
            if hf not in got:
                raise CheckpointError(f"{path}: missing tensor {hf!r}")
            if tuple(got[hf].shape) != want:
                raise CheckpointError(
                    f"{path}: tensor {hf!r} has shape {tuple(got[hf].shape)}, config.json implies {want}"
                )
        sd[ours] = torch.cat([got[hf] for hf, _ in parts], dim=0)
    for ours, order in _orders(cfg).items():
        if ours in sd and sd[ours].shape[0] == len(order):  # a wrong shape is named by load_model
            sd[ours] = sd[ours][order]
    return sd


def load_model(path: str | Path, device="cpu", dtype: torch.dtype | None = None) -> Transformer:
    """Load a HF-layout directory into a phiforge Transformer (weights keep their stored dtype unless `dtype`)."""
    path = Path(path)
    cfg = load_config(path)
    with torch.device("meta"):
        model = Transformer(cfg)
    sd = load_state_dict(path, cfg)
    expected = model.state_dict()
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(sd))
    if missing:
        raise CheckpointError(
            f"{path}: missing tensor {to_hf_name(missing[0], cfg)!r} ({len(missing)} missing)"
        )
    for k, t in sd.items():
        if tuple(t.shape) != tuple(expected[k].shape):
            raise CheckpointError(
                f"{path}: tensor {to_hf_name(k, cfg)!r} has shape {tuple(t.shape)}, config.json implies {tuple(expected[k].shape)}"
            )
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    model.load_state_dict(sd, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed.weight
    return model.to(device)


def to_hf_name(ours: str, cfg: ModelConfig) -> str:
    fused = _fused(cfg)
    if ours in fused:  # fused on load: name the first of the separate HF tensors
        return fused[ours][0][0]
    return {v: k for k, v in _expand(cfg).items()}.get(ours, ours)


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    sd = model.state_dict()
    out = {hf: sd[ours].contiguous() for hf, ours in _expand(cfg).items() if ours in sd}
    for ours, parts in _fused(cfg).items():
        pieces = sd[ours].split([shape[0] for _, shape in parts], dim=0)
        for (hf, _), t in zip(parts, pieces, strict=True):
            out[hf] = t.contiguous().clone()
    to_hf = {ours: hf for hf, ours in _expand(cfg).items()}
    for ours, order in _orders(cfg).items():
        out[to_hf[ours]] = sd[ours][torch.argsort(order)].contiguous()
    return out


def save_model(model: Transformer, path: str | Path, max_shard_bytes: int = 5 * 2**30) -> None:
    """Write config.json, generation_config.json and model.safetensors (sharded with an index past
    `max_shard_bytes`) so that transformers' AutoModelForCausalLM.from_pretrained(path) loads it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = hf_state_dict(model)
    dtype = next(iter(sd.values())).dtype
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, t in sd.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += nbytes
    if len(shards) == 1:
        with atomic_path(path / "model.safetensors") as tmp:
            save_file(shards[0], tmp, metadata={"format": "pt"})
        (path / "model.safetensors.index.json").unlink(missing_ok=True)
    else:
        n = len(shards)
        weight_map = {}
        for j, shard in enumerate(shards):
            name = f"model-{j + 1:05d}-of-{n:05d}.safetensors"
            with atomic_path(path / name) as tmp:
                save_file(shard, tmp, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(t.numel() * t.element_size() for t in sd.values())
        write_json(
            path / "model.safetensors.index.json",
            {"metadata": {"total_size": total}, "weight_map": weight_map},
        )
        (path / "model.safetensors").unlink(missing_ok=True)
    cfg = model.cfg
    write_json(path / "config.json", config_to_hf(cfg, dtype))
    gen = {
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
    }
    write_json(path / "generation_config.json", {k: v for k, v in gen.items() if v is not None})
