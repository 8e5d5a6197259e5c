"""ModelConfig, presets and memory estimates checked against transformers and the published checkpoints."""

from __future__ import annotations

import pytest
import torch

from phiforge.model import PRESETS, ModelConfig, build, get_preset, memory_table
from phiforge.model.hf import config_from_hf, config_to_hf

transformers = pytest.importorskip("transformers")

# Parameter counts of the published checkpoints (sum of tensor sizes in their safetensors files).
PUBLISHED = {
    "phi-1": 1_418_270_720,
    "phi-1.5": 1_418_270_720,
    "phi-2": 2_779_683_840,
    "phi-3-mini-4k": 3_821_079_552,
    "phi-3-mini-128k": 3_821_079_552,
    "phi-3.5-mini": 3_821_079_552,
    "phi-3-medium-4k": 13_960_238_080,
    "phi-4": 14_659_507_200,
    "phi-4-mini": 3_836_021_760,
    "smollm2-135m": 134_515_008,  # HuggingFaceTB/SmolLM2-135M(-Instruct)
}
# The rounded numbers model cards quote.
QUOTED_BILLIONS = {
    "phi-1": 1.42,
    "phi-2": 2.78,
    "phi-3-mini-4k": 3.82,
    "phi-3-medium-4k": 13.96,
    "phi-4": 14.66,
    "phi-4-mini": 3.84,
}


def hf_meta_model(cfg: ModelConfig):
    d = dict(config_to_hf(cfg))
    hf_cfg = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(hf_cfg)


def unique_numel(module: torch.nn.Module) -> int:
    return sum({id(p): p.numel() for p in module.parameters()}.values())  # tied weights once


# Phi-3-small is remote code, not in transformers: its 7.39B is checked in test_phi3_small.py
@pytest.mark.parametrize("name", [n for n, c in PRESETS.items() if not c.block_sparse])
def test_num_params_matches_transformers(name):
    cfg = get_preset(name)
    hf = hf_meta_model(cfg)
    want = {"phi3": "Phi3ForCausalLM", "phi": "PhiForCausalLM", "llama": "LlamaForCausalLM"}[cfg.arch]
    assert type(hf).__name__ == want
    n_hf = unique_numel(hf)
    assert cfg.num_params() == n_hf
    assert build(cfg, device="meta").num_params() == n_hf


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_num_params_matches_published_checkpoints(name):
    assert get_preset(name).num_params() == PUBLISHED[name]


@pytest.mark.parametrize("name", list(QUOTED_BILLIONS))
def test_num_params_near_quoted(name):
    n_hf = unique_numel(hf_meta_model(get_preset(name)))
    assert abs(QUOTED_BILLIONS[name] * 1e9 - n_hf) / n_hf < 0.01


def test_published_shapes():
    """Spot checks of fields the parameter count cannot see (from the published config.json files)."""
    assert get_preset("phi-2").rotary_dim == 32  # partial_rotary_factor 0.4 of head_dim 80
    assert get_preset("phi-1").rotary_dim == get_preset("phi-1.5").rotary_dim == 32  # 0.5 of 64
    mini4 = get_preset("phi-4-mini")
    assert (mini4.head_dim, mini4.rotary_dim, mini4.num_key_value_heads) == (128, 96, 8)
    assert mini4.tie_word_embeddings
    assert len(mini4.rope_scaling["long_factor"]) == 48
    assert get_preset("phi-3-mini-128k").original_max_position_embeddings == 4096
    assert get_preset("phi-4").rope_theta == 250000.0
    for name in ("phi-3-medium-4k", "phi-4"):
        assert get_preset(name).num_key_value_heads == 10


@pytest.mark.parametrize("name", list(PRESETS))
def test_config_dict_round_trip(name):
    cfg = get_preset(name)
    assert config_from_hf(config_to_hf(cfg)) == cfg


def test_get_preset_returns_a_copy_and_rejects_unknown():
    cfg = get_preset("phi-3-mini-128k")
    cfg.rope_scaling["type"] = "changed"
    cfg.hidden_size = 1
    assert PRESETS["phi-3-mini-128k"].rope_scaling["type"] == "longrope"
    assert PRESETS["phi-3-mini-128k"].hidden_size == 3072
    with pytest.raises(ValueError, match="no-such-model"):
        get_preset("no-such-model")


@pytest.mark.parametrize("name", list(PRESETS))
def test_memory_table_orders(name):
    t = memory_table(get_preset(name))
    assert t["bf16"] * 2 == t["fp32"]
    assert t["int4"] < t["int8"] < t["bf16"]


def test_memory_table_phi3_mini_int4_near_published():
    # The published q4 phi-3-mini downloads are ~1.8-2.3 GB; the estimate must land in that range.
    gb = memory_table(get_preset("phi-3-mini-4k"))["int4"] / 1e9
    assert 1.7 < gb < 2.4


def test_memory_table_group_size():
    cfg = get_preset("phi-3-mini-4k")
    assert memory_table(cfg, group_size=32)["int4"] > memory_table(cfg, group_size=128)["int4"]


def _longrope_kw(half: int) -> dict:
    return {"type": "longrope", "short_factor": [1.0] * half, "long_factor": [2.0] * half}


def test_validation_bad_arch():
    with pytest.raises(ValueError, match="arch"):
        ModelConfig(arch="mamba")


def test_validation_heads_not_dividing_hidden():
    with pytest.raises(ValueError, match="num_attention_heads") as e:
        ModelConfig(hidden_size=100, num_attention_heads=3)
    assert "hidden_size" in str(e.value)


def test_validation_kv_heads_not_dividing_heads():
    with pytest.raises(ValueError, match="num_key_value_heads"):
        ModelConfig(hidden_size=96, num_attention_heads=6, num_key_value_heads=4)


@pytest.mark.parametrize("key", ["short_factor", "long_factor"])
def test_validation_longrope_factor_length(key):
    # head_dim 96 -> 48 factors expected
    rs = _longrope_kw(48)
    rs[key] = [1.0] * 47
    with pytest.raises(ValueError, match=rf"rope_scaling\.{key}.*48"):
        ModelConfig(rope_scaling=rs)
    rs[key] = None
    with pytest.raises(ValueError, match=rf"rope_scaling\.{key}"):
        ModelConfig(rope_scaling=rs)


def test_validation_longrope_factor_length_follows_partial_rotary():
    # phi-4-mini: head_dim 128 * 0.75 -> 96 rotary dims -> 48 factors; 64 would be the full head
    kw = dict(hidden_size=3072, num_attention_heads=24, num_key_value_heads=8, partial_rotary_factor=0.75)
    ModelConfig(rope_scaling=_longrope_kw(48), **kw)
    with pytest.raises(ValueError, match="short_factor"):
        ModelConfig(rope_scaling=_longrope_kw(64), **kw)


def test_validation_unknown_rope_type():
    with pytest.raises(ValueError, match="rope_scaling"):
        ModelConfig(rope_scaling={"type": "dynamic", "factor": 2.0})


def test_rope_scaling_aliases():
    cfg = ModelConfig(rope_scaling={**_longrope_kw(48), "type": "su"}, max_position_embeddings=131072)
    assert cfg.rope_scaling["type"] == "longrope"
    assert cfg.original_max_position_embeddings == 131072  # defaults to max when absent
    assert ModelConfig(rope_scaling={"rope_type": "default"}).rope_scaling is None
