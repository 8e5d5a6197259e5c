"""benchmarks/longctx.py at smoke size, on a stand-in speedrun run dir (a random tiny model, the shared
shards): every method extends, fine-tunes, and is measured; the plot and results are written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from phiforge.model import build, get_preset, save_model
from phiforge.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~90 s on 2 quiet cores: 3 searches/fine-tunes + perplexity + passkey
def test_benchmark_smoke(train_data, tmp_path):
    run = tmp_path / "run"
    tok = Tokenizer.from_file(train_data["tok"])
    cfg = get_preset("tiny").replace(vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id,
                                     max_position_embeddings=256, original_max_position_embeddings=256)  # fmt: skip
    save_model(build(cfg, seed=0), run / "ckpt")
    tok.save(run / "ckpt")
    (run / "shards_all").symlink_to(train_data["a"])
    (run / "stages").mkdir()
    (run / "stages" / "pretrain.json").write_text(json.dumps({"result": {"ckpt": str(run / "ckpt")}}))
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks/longctx.py"),
        "--size",
        "smoke",
        "--run",
        str(run),
        "--out",
        str(out),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "results-tiny.json").read_text())
    names = {"none", "pi", "pi+ft", "yarn", "yarn+ft", "longrope", "longrope+ft"}
    assert set(res["curves"]) == names and set(res["passkey"]) == names
    assert all(set(c) == {"256", "512"} and all(v > 1 for v in c.values()) for c in res["curves"].values())
    assert res["longrope"]["rope_scaling"]["type"] == "longrope" and (out / "longctx.png").is_file()
    assert "| longrope+ft |" in r.stdout
