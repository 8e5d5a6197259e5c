"""`phiforge extend` end to end through the CLI: a baseline extension written as a loadable checkpoint,
the cluster recipe of --dry-run, and one-line errors."""

import json

from phiforge.model import load_model


def test_extend_pi_writes_a_longer_model(phiforge, random_model_dir, tmp_path):
    text = tmp_path / "held.txt"
    text.write_text("def f(x):\n    return x + 1\n" * 400)
    r = phiforge("extend", "--model", random_model_dir, "--length", 256, "--method", "yarn",
                 "--heldout", text, "--out", tmp_path / "out")  # fmt: skip
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["scale"] == 4.0 and rep["model"] == str(tmp_path / "out" / "extended")
    m = load_model(rep["model"])
    assert m.cfg.max_position_embeddings == 256 and m.cfg.original_max_position_embeddings == 64
    assert m.cfg.rope_scaling["long_factor"] == m.cfg.rope_scaling["short_factor"]  # phi3: YaRN as longrope
    assert (tmp_path / "out" / "extended" / "tokenizer.json").is_file()


def test_dry_run_recipe(phiforge):
    r = phiforge("extend", "--length", 131072, "--dry-run", "--world", 64)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "phi-3-mini-4k (3.82B) from 4,096 to 131,072 tokens (32x) on 64 GPUs" in out
    assert "population 64 x 41 generations" in out and "400 steps of 8 sequences" in out


def test_errors(phiforge, one_line_error, random_model_dir, tmp_path):
    one_line_error(phiforge("extend", "--length", 128), "--model is required")
    one_line_error(phiforge("extend", "--model", random_model_dir, "--length", 32, "--method", "pi",
                            "--out", tmp_path), "--length 32: must exceed the original context 64")  # fmt: skip
    one_line_error(phiforge("extend", "--model", random_model_dir, "--length", 128, "--method", "ntk",
                            "--out", tmp_path), "--method 'ntk'")  # fmt: skip
