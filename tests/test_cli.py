"""The command line as a user meets it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from phiforge.model import build, get_preset, save_model
from phiforge.tokenizer import train_bpe


def phiforge(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "phiforge.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import inspect
    import json

    d = tmp_path_factory.mktemp("ckpt")
    tok = train_bpe([inspect.getsource(json.decoder), inspect.getsource(subprocess)], vocab_size=400)
    cfg = get_preset("tiny").replace(
        vocab_size=tok.vocab_size, max_position_embeddings=64, eos_token_id=tok.eos_id
    )
    save_model(build(cfg, seed=0), d)
    tok.save(d)
    return d


def test_info_preset_counts_without_allocating():
    r = phiforge("info", "--preset", "phi-4")
    assert r.returncode == 0, r.stderr
    assert "14,659,507,200" in r.stdout
    for precision in ("fp32", "bf16", "int8", "int4"):
        assert precision in r.stdout


def test_info_list_names_every_preset():
    r = phiforge("info", "--list")
    assert r.returncode == 0
    from phiforge.model import PRESETS

    for name in PRESETS:
        assert name in r.stdout


def test_generate_streams_completion(model_dir):
    r = phiforge("generate", "-m", str(model_dir), "-p", "def f(x):", "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("def f(x):")
    assert "tok/s" in r.stderr


def test_chat_multi_turn_reset_and_exit(model_dir):
    r = phiforge(
        "chat",
        "-m",
        str(model_dir),
        "--max-new-tokens",
        "4",
        "--seed",
        "0",
        stdin="hello\n/reset\nhi\n/exit\n",
    )
    assert r.returncode == 0, r.stderr
    assert "[conversation reset]" in r.stderr
    assert r.stderr.count("tok/s") == 2  # one speed line per reply


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0]


def test_missing_model_dir(tmp_path):
    _one_line_error(phiforge("generate", "-m", str(tmp_path / "nope"), "-p", "x"), "config.json", "not found")


def test_corrupt_safetensors(model_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in model_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    _one_line_error(phiforge("generate", "-m", str(bad), "-p", "x"), "model.safetensors")


def test_unknown_config_field(model_dir, tmp_path):
    import json

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in model_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "config.json").read_text())
    cfg["num_experts"] = 8
    (bad / "config.json").write_text(json.dumps(cfg))
    _one_line_error(phiforge("generate", "-m", str(bad), "-p", "x"), "num_experts")


def test_prompt_longer_than_context(model_dir):
    _one_line_error(phiforge("generate", "-m", str(model_dir), "-p", "x = 1\n" * 200), "context")


def test_unknown_preset():
    _one_line_error(phiforge("info", "--preset", "phi-5"), "phi-5")


def test_debug_shows_traceback(tmp_path):
    r = phiforge("--debug", "generate", "-m", str(tmp_path), "-p", "x")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_wrong_shape_tensor_names_it(model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in model_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    sd = load_file(bad / "model.safetensors")
    sd["model.norm.weight"] = torch.ones(7)
    save_file(sd, bad / "model.safetensors")
    _one_line_error(phiforge("generate", "-m", str(bad), "-p", "x"), "model.norm.weight", "(7,)")
