"""`phiforge quantize`, `phiforge export gguf` and `phiforge info --bits` as a user runs them."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest

from phiforge.model import build, get_preset, save_model
from phiforge.model.config import quantized_bytes
from phiforge.tokenizer import train_bpe


def phiforge(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "phiforge.cli", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)


def _one_line_error(r: subprocess.CompletedProcess, needle: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert needle in lines[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    tok = train_bpe([inspect.getsource(json.decoder), inspect.getsource(subprocess)], vocab_size=400)
    cfg = get_preset("tiny").replace(
        vocab_size=tok.vocab_size, max_position_embeddings=64, eos_token_id=tok.eos_id
    )
    save_model(build(cfg, seed=0), d)
    tok.save(d)
    return d


def test_quantize_then_generate_and_chat(model_dir, tmp_path):
    out = tmp_path / "int4"
    r = phiforge("quantize", "-m", str(model_dir), "--bits", "4", "--group-size", "64", "--out", str(out))
    assert r.returncode == 0, r.stderr
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (qc["bits"], qc["group_size"]) == (4, 64)
    r = phiforge("generate", "-m", str(out), "-p", "def f(x):", "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("def f(x):") and "8 tokens" in r.stderr
    r = phiforge("chat", "-m", str(out), "--max-new-tokens", "4", stdin="hi\n/exit\n")
    assert r.returncode == 0, r.stderr


def test_export_gguf(model_dir, tmp_path):
    gguf = pytest.importorskip("gguf")
    out = tmp_path / "m.gguf"
    r = phiforge("export", "gguf", "-m", str(model_dir), "--type", "q8_0", "--out", str(out))
    assert r.returncode == 0, r.stderr
    reader = gguf.GGUFReader(out)
    assert {t.tensor_type.name for t in reader.tensors} == {"Q8_0", "F32"}


def test_info_bits_prints_the_breakdown():
    r = phiforge("info", "--preset", "phi-3-mini-4k", "--bits", "4")
    assert r.returncode == 0, r.stderr
    total = sum(quantized_bytes(get_preset("phi-3-mini-4k"), 4, 128).values())
    assert f"int4 g128 (phiforge quantize): {total / 1e9:.1f} GB" in " ".join(r.stdout.split())
    assert "embedding (int8)" in r.stdout and "lm_head" in r.stdout


def test_bad_inputs(model_dir, tmp_path):
    _one_line_error(
        phiforge("quantize", "-m", str(model_dir), "--bits", "3", "--out", str(tmp_path / "q")),
        "bits must be 4 or 8",
    )
    _one_line_error(
        phiforge("quantize", "-m", str(model_dir), "--group-size", "100", "--out", str(tmp_path / "q")),
        "group size 100 must be a positive multiple of 32",
    )
    _one_line_error(
        phiforge("export", "gguf", "-m", str(model_dir), "--type", "q2_k", "--out", str(tmp_path / "x.gguf")),
        "unknown GGUF type 'q2_k'",
    )
    _one_line_error(
        phiforge("export", "gguf", "-m", str(tmp_path / "nope"), "--out", str(tmp_path / "x.gguf")),
        "config.json",
    )
