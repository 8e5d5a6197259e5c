"""`phiforge train --dry-run`, `phiforge sft` and `phiforge plot` end to end through the CLI."""

import json
from pathlib import Path

import pytest

from phiforge.train import dry_run, from_dict, load_recipe, pretrain
from train_helpers import recipe, run

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # builds Phi-3-mini on the meta device, ~9 s
def test_dry_run_phi3_mini_on_meta():
    cfg = load_recipe(ROOT / "recipes/phi3-mini.yaml")
    r = dry_run(cfg, world=512, peak_flops=989e12)
    assert r["params"] == 3_821_079_552  # Phi-3-mini, as transformers counts it
    n, D = r["params"], r["tokens_trained"]
    assert D >= 3.3e12 and r["flops"] > 6 * n * D * 0.99  # 6ND (less the embedding) + attention
    assert r["memory_bytes"]["adamw"] == 8 * n / 512  # FSDP shards weights, grads and Adam states
    p = run(
        "train", "--recipe", ROOT / "recipes/phi3-mini.yaml", "--dry-run", "--world", 8, "--peak-flops", 1e15
    )
    assert p.returncode == 0, p.stderr
    assert "params: 3,821,079,552" in p.stdout and "estimated time at 40% MFU" in p.stdout


def test_tiny_cpu_recipe_parses():
    cfg = load_recipe(ROOT / "recipes/tiny-cpu.yaml")
    assert [p.name for p in cfg.phases] == ["general", "mixture"] and cfg.schedule == "wsd"


@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_sft_and_plot_cli(train_data, tmp_path):
    base = pretrain(from_dict(recipe(train_data, tmp_path / "pre", eval_every=0, save_every=0)))
    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}
    (tmp_path / "c.jsonl").write_text((json.dumps(conv) + "\n") * 20)
    sets = ["--set", "seq_len=32", "--set", "micro_batch=4", "--set", "peak_flops=1e11"]
    p = run(
        "sft",
        "--model",
        base,
        "--data",
        tmp_path / "c.jsonl",
        "--out",
        tmp_path / "sft",
        "--epochs",
        2,
        *sets,
    )
    assert p.returncode == 0, p.stderr
    out = Path(p.stdout.strip().splitlines()[-1])
    assert out.parent == tmp_path / "sft/ckpt" and (out / "model.safetensors").is_file()
    p = run("plot", tmp_path / "pre")
    assert p.returncode == 0, p.stderr
    for name in ("loss.png", "lr.png"):
        assert (tmp_path / "pre/plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p = run("plot", tmp_path / "nothing")
    assert p.returncode == 1 and "no metrics.jsonl" in p.stderr
