"""Hugging Face layout in and out: config.json <-> ModelConfig, safetensors (single or sharded) <-> Transformer.

One conversion path each way, driven by per-architecture name maps (litgpt's pattern). The phi (1/1.5/2)
checkpoints keep q/k/v separate; we fuse them on load and split them on save.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..io import atomic_path, write_json
from .config import ModelConfig
from .transformer import Transformer


class CheckpointError(ValueError):
    """Bad checkpoint input; the message is one line naming the file, field or value."""


# HF tensor name (with {i} for the layer) -> our name. q/k/v of phi are handled by FUSED below.
NAME_MAPS = {
    "phi3": {
        "model.embed_tokens.weight": "embed.weight",
        "model.layers.{i}.input_layernorm.weight": "blocks.{i}.norm1.weight",
        "model.layers.{i}.self_attn.qkv_proj.weight": "blocks.{i}.attn.qkv.weight",
        "model.layers.{i}.self_attn.o_proj.weight": "blocks.{i}.attn.out.weight",
        "model.layers.{i}.post_attention_layernorm.weight": "blocks.{i}.norm2.weight",
        "model.layers.{i}.mlp.gate_up_proj.weight": "blocks.{i}.mlp.up.weight",
        "model.layers.{i}.mlp.down_proj.weight": "blocks.{i}.mlp.down.weight",
        "model.norm.weight": "norm.weight",
        "lm_head.weight": "lm_head.weight",
    },
    "phi": {
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
}
FUSED = {"phi": ("model.layers.{i}.self_attn.{p}_proj.{kind}", "blocks.{i}.attn.qkv.{kind}", ("q", "k", "v"))}
HF_ARCH = {"phi3": ("Phi3ForCausalLM", "phi3"), "phi": ("PhiForCausalLM", "phi")}

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
    "head_dim",
    "layer_types",
    "use_return_dict",
    "pruned_heads",
    "tf_legacy_loss",
    "use_bfloat16",
    "torchscript",
    "task_specific_params",
    "quantization_config",  # phiforge quantize: read by infer/quant.py, config-only readers (info) skip it
}
# keys that must hold this value because we do not implement the alternative
REQUIRED_VALUES = {"attention_bias": False, "mlp_bias": False, "lm_head_bias": False, "qk_layernorm": False}


def config_from_hf(d: dict, source: str = "config.json") -> ModelConfig:
    archs = d.get("architectures") or []
    model_type = d.get("model_type")
    arch = {"Phi3ForCausalLM": "phi3", "PhiForCausalLM": "phi"}.get(archs[0] if archs else "")
    arch = arch or {"phi3": "phi3", "phi": "phi"}.get(model_type)
    if arch is None:
        raise CheckpointError(
            f"{source}: unknown architecture {archs or model_type!r} (supported: Phi3ForCausalLM, PhiForCausalLM)"
        )
    d = dict(d)
    rope = d.pop("rope_parameters", None) or {}  # transformers >= 5 nests rope settings here
    scaling = d.pop("rope_scaling", None) or (rope if rope.get("rope_type", "default") != "default" else None)
    kw = dict(arch=arch, rope_theta=d.pop("rope_theta", rope.get("rope_theta", 10000.0)))
    kw["partial_rotary_factor"] = d.pop(
        "partial_rotary_factor", rope.get("partial_rotary_factor", 0.5 if arch == "phi" else 1.0)
    )
    if scaling:
        scaling = {k: v for k, v in scaling.items() if k not in ("rope_theta", "partial_rotary_factor")}
        if "original_max_position_embeddings" in scaling:
            kw["original_max_position_embeddings"] = scaling.pop("original_max_position_embeddings")
        kw["rope_scaling"] = scaling
    kw["norm_eps"] = d.pop("rms_norm_eps" if arch == "phi3" else "layer_norm_eps", 1e-5)
    for key, want in REQUIRED_VALUES.items():
        if key in d and bool(d.pop(key)) != want:
            raise CheckpointError(f"{source}: field {key}={not want} is not supported")
    fields = set(ModelConfig.__dataclass_fields__) - {"arch", "norm_eps", "dropout", "rope_scaling"}
    for key, value in d.items():
        if key in fields:
            kw[key] = value
        elif key not in IGNORED_KEYS:
            raise CheckpointError(f"{source}: unknown config field {key!r}")
    try:
        return ModelConfig(**kw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: {e}") from None


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    name, model_type = HF_ARCH[cfg.arch]
    d = {
        "architectures": [name],
        "model_type": model_type,
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
    }
    if cfg.arch == "phi3":
        d["rms_norm_eps"] = cfg.norm_eps
        d["original_max_position_embeddings"] = (
            cfg.original_max_position_embeddings or cfg.max_position_embeddings
        )
        d["sliding_window"] = cfg.sliding_window
    else:
        d["layer_norm_eps"] = cfg.norm_eps
        d["qk_layernorm"] = False
    return d


def _expand(cfg: ModelConfig) -> dict[str, str]:
    """Concrete HF name -> our name for every tensor of this config."""
    out = {}
    for hf, ours in NAME_MAPS[cfg.arch].items():
        if "{i}" not in hf:
            out[hf] = ours
            continue
        for i in range(cfg.num_hidden_layers):
            out[hf.format(i=i)] = ours.format(i=i)
    if cfg.tie_word_embeddings:
        out.pop("lm_head.weight")
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
    fused: dict[str, dict[str, torch.Tensor]] = {}
    sd: dict[str, torch.Tensor] = {}
    fuse_re = None
    if cfg.arch in FUSED:
        fuse_re = re.compile(r"model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")
    for f, key, t in _read_tensors(_weight_files(path)):
        if key in names:
            sd[names[key]] = t
        elif fuse_re and (m := fuse_re.match(key)):
            fused.setdefault(f"blocks.{m[1]}.attn.qkv.{m[3]}", {})[m[2]] = t
        elif key == "lm_head.weight" and cfg.tie_word_embeddings or key.endswith("rotary_emb.inv_freq"):
            continue  # redundant copies some exporters write
        else:
            raise CheckpointError(f"{f}: unexpected tensor {key!r} for {HF_ARCH[cfg.arch][0]}")
    rows = {"q": cfg.hidden_size, "k": cfg.kv_dim, "v": cfg.kv_dim}
    for ours, parts in fused.items():
        i, kind = ours.split(".")[1], ours.rsplit(".", 1)[1]
        for p in "qkv":  # check each part so errors name the HF tensor (torch.cat would raise RuntimeError)
            hf = f"model.layers.{i}.self_attn.{p}_proj.{kind}"
            if p not in parts:
                raise CheckpointError(f"{path}: missing tensor {hf!r}")
            want = (rows[p], cfg.hidden_size) if kind == "weight" else (rows[p],)
            if tuple(parts[p].shape) != want:
                raise CheckpointError(
                    f"{path}: tensor {hf!r} has shape {tuple(parts[p].shape)}, config.json implies {want}"
                )
        sd[ours] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
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
    inverse = {v: k for k, v in _expand(cfg).items()}
    m = re.fullmatch(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", ours)
    if m and cfg.arch in FUSED:  # fused on load: name the first of the separate HF tensors
        return f"model.layers.{m[1]}.self_attn.q_proj.{m[2]}"
    return inverse.get(ours, ours)


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    sd = model.state_dict()
    out = {hf: sd[ours].contiguous() for hf, ours in _expand(cfg).items() if ours in sd}
    if cfg.arch in FUSED:
        sizes = [cfg.hidden_size, cfg.kv_dim, cfg.kv_dim]
        for i in range(cfg.num_hidden_layers):
            for kind in ("weight", "bias"):
                parts = sd[f"blocks.{i}.attn.qkv.{kind}"].split(sizes, dim=0)
                for p, t in zip("qkv", parts, strict=True):
                    out[f"model.layers.{i}.self_attn.{p}_proj.{kind}"] = t.contiguous().clone()
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
