"""The command line as a user meets it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import torch


def test_info_preset_counts_without_allocating(phiforge):
    r = phiforge("info", "--preset", "phi-4")
    assert r.returncode == 0, r.stderr
    assert "14,659,507,200" in r.stdout
    for precision in ("fp32", "bf16", "int8", "int4"):
        assert precision in r.stdout


def test_info_list_names_every_preset(phiforge_subprocess):
    r = phiforge_subprocess("info", "--list")  # the real entry point, `python -m phiforge.cli`, once
    assert r.returncode == 0
    from phiforge.model import PRESETS

    for name in PRESETS:
        assert name in r.stdout


def test_generate_streams_completion(random_model_dir, phiforge):
    r = phiforge("generate", "-m", str(random_model_dir), "-p", "def f(x):", "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("def f(x):")
    assert "tok/s" in r.stderr


def test_chat_multi_turn_reset_and_exit(random_model_dir, phiforge):
    r = phiforge(
        "chat",
        "-m",
        str(random_model_dir),
        "--max-new-tokens",
        "4",
        "--seed",
        "0",
        stdin="hello\n/reset\nhi\n/exit\n",
    )
    assert r.returncode == 0, r.stderr
    assert "[conversation reset]" in r.stderr
    assert r.stderr.count("tok/s") == 2  # one speed line per reply


def test_missing_random_model_dir(tmp_path, phiforge, one_line_error):
    one_line_error(
        phiforge("generate", "-m", str(tmp_path / "nope"), "-p", "x"), "nope", "no such model directory"
    )


def test_corrupt_safetensors(random_model_dir, tmp_path, phiforge, one_line_error):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in random_model_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    one_line_error(phiforge("generate", "-m", str(bad), "-p", "x"), "model.safetensors")


def test_unknown_config_field(random_model_dir, tmp_path, phiforge, one_line_error):
    import json

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in random_model_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "config.json").read_text())
    cfg["num_experts"] = 8
    (bad / "config.json").write_text(json.dumps(cfg))
    one_line_error(phiforge("generate", "-m", str(bad), "-p", "x"), "num_experts")


def test_prompt_longer_than_context(random_model_dir, phiforge, one_line_error):
    one_line_error(phiforge("generate", "-m", str(random_model_dir), "-p", "x = 1\n" * 200), "context")


def test_unknown_preset(phiforge, one_line_error):
    one_line_error(phiforge("info", "--preset", "phi-5"), "phi-5")


def test_debug_shows_traceback(tmp_path, phiforge):
    r = phiforge("--debug", "generate", "-m", str(tmp_path), "-p", "x")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_wrong_shape_tensor_names_it(random_model_dir, tmp_path, phiforge, one_line_error):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in random_model_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    sd = load_file(bad / "model.safetensors")
    sd["model.norm.weight"] = torch.ones(7)
    save_file(sd, bad / "model.safetensors")
    one_line_error(phiforge("generate", "-m", str(bad), "-p", "x"), "model.norm.weight", "(7,)")
