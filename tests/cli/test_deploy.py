"""`phiforge quantize`, `phiforge export gguf` and `phiforge info --bits` as a user runs them."""

from __future__ import annotations

import json

import pytest

from phiforge.model import get_preset
from phiforge.model.config import quantized_bytes


@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_quantize_then_generate_and_chat(random_model_dir, tmp_path, phiforge):
    out = tmp_path / "int4"
    r = phiforge(
        "quantize", "-m", str(random_model_dir), "--bits", "4", "--group-size", "64", "--out", str(out)
    )
    assert r.returncode == 0, r.stderr
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (qc["bits"], qc["group_size"]) == (4, 64)
    r = phiforge("generate", "-m", str(out), "-p", "def f(x):", "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("def f(x):") and "8 tokens" in r.stderr
    r = phiforge("chat", "-m", str(out), "--max-new-tokens", "4", stdin="hi\n/exit\n")
    assert r.returncode == 0, r.stderr


@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_export_gguf(random_model_dir, tmp_path, phiforge):
    gguf = pytest.importorskip("gguf")
    out = tmp_path / "m.gguf"
    r = phiforge("export", "gguf", "-m", str(random_model_dir), "--type", "q8_0", "--out", str(out))
    assert r.returncode == 0, r.stderr
    reader = gguf.GGUFReader(out)
    assert {t.tensor_type.name for t in reader.tensors} == {"Q8_0", "F32"}


def test_info_bits_prints_the_breakdown(phiforge):
    r = phiforge("info", "--preset", "phi-3-mini-4k", "--bits", "4")
    assert r.returncode == 0, r.stderr
    total = sum(quantized_bytes(get_preset("phi-3-mini-4k"), 4, 128).values())
    assert f"int4 g128 (phiforge quantize): {total / 1e9:.1f} GB" in " ".join(r.stdout.split())
    assert "embedding (int8)" in r.stdout and "lm_head" in r.stdout


@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_bad_inputs(random_model_dir, tmp_path, phiforge, one_line_error):
    one_line_error(
        phiforge("quantize", "-m", str(random_model_dir), "--bits", "3", "--out", str(tmp_path / "q")),
        "bits must be 4 or 8",
    )
    one_line_error(
        phiforge(
            "quantize", "-m", str(random_model_dir), "--group-size", "100", "--out", str(tmp_path / "q")
        ),
        "group size 100 must be a positive multiple of 32",
    )
    one_line_error(
        phiforge(
            "export", "gguf", "-m", str(random_model_dir), "--type", "q2_k", "--out", str(tmp_path / "x.gguf")
        ),
        "unknown GGUF type 'q2_k'",
    )
    one_line_error(
        phiforge("export", "gguf", "-m", str(tmp_path / "nope"), "--out", str(tmp_path / "x.gguf")),
        "nope: no such model directory",
    )
