"""The Phi model family: config + presets, the module, rotary embeddings and HF-layout interop."""

from .config import PRESETS, ModelConfig, get_preset, memory_table
from .hf import CheckpointError, load_config, load_model, save_model
from .transformer import KVCache, Transformer, build

__all__ = [
    "PRESETS",
    "CheckpointError",
    "KVCache",
    "ModelConfig",
    "Transformer",
    "build",
    "get_preset",
    "load_config",
    "load_model",
    "memory_table",
    "save_model",
]
