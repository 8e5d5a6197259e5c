"""The speedrun's synth stage (speedrun/run.py) called directly with a scripted teacher endpoint: the stage and
its marker, the shards phase 2 mixes in, the phase-2 weights, and the three-arm ablation verdict."""

from __future__ import annotations

import importlib
import json

import pytest

from phiforge.io import write_jsonl
from phiforge.tokenizer import train_bpe

sr = importlib.import_module("phiforge.speedrun.run")  # the package exports a function of that name

EXERCISE = 'area(w, h):\n    """Return the area of a w by h rectangle."""\n    return w * h\n\nassert area(2, 3) == 6\n```'


def script(prompt: str) -> str:
    topic = prompt.split("about ", 1)[1].split(" ")[0] if "about " in prompt else "x"
    if "exercise" in prompt:
        return EXERCISE.replace("area", f"area_{topic}")
    if "textbook" in prompt:
        return f"Lists of {topic} keep order.\n```python\nvalues_{topic} = [3, 1, 2]\nprint(sorted(values_{topic}))\n```"
    return f"Question: How do I sort {topic} values in Python?\nAnswer: Call sorted() on them: it returns a new list."


@pytest.fixture
def run_dir(tmp_path):
    texts = [f"import json\n\ndef load_{i}(s):\n    return [x for x in json.loads(s)]\n" for i in range(20)]
    write_jsonl(tmp_path / "data" / "clean" / "00000.jsonl.gz",
                [{"id": f"d{i}", "text": t, "metadata": {"quality": 4.0}} for i, t in enumerate(texts)])  # fmt: skip
    train_bpe(texts * 3, vocab_size=300, out_dir=tmp_path / "tokenizer")
    return tmp_path


def test_synth_stage_writes_shards_for_phase_2_and_a_marker(run_dir, teacher_server):
    teacher_server.script = script
    cfg = sr.SpeedrunConfig(
        out=str(run_dir), budget="smoke", teacher_url=teacher_server.url, synth_requests=9
    )
    st = sr.Stages(run_dir)
    syn = sr.synth_stages(run_dir, cfg, st, {"k": 1})
    f = syn["funnel"]
    assert f["requested"] == 9 and f["kept"] == syn["docs_out"] > 0 and syn["shards"]["train"]["tokens"] > 0
    assert json.loads((run_dir / "stages" / "synth.json").read_text())["result"]["funnel"] == f
    assert (run_dir / "data" / "synth" / "card.md").is_file() and (
        run_dir / "shards_synth" / "index.json"
    ).is_file()
    assert "9 requested ->" in sr._synth_summary(syn)
    n = len(teacher_server.log)
    assert sr.synth_stages(run_dir, cfg, sr.Stages(run_dir), {"k": 1}) == syn and len(teacher_server.log) == n


def test_no_synth_stage_at_the_smoke_budget(run_dir):
    assert sr.BUDGETS["smoke"].synth_requests == 0
    st = sr.Stages(run_dir)
    assert sr.synth_stages(run_dir, sr.SpeedrunConfig(out=str(run_dir), budget="smoke"), st, {}) is None
    assert st.rows == [] and not (run_dir / "stages" / "synth.json").exists()


def test_phase_2_mixes_synthetic_tokens_only_when_there_are_some(run_dir, monkeypatch):
    import phiforge.train as train

    seen = {}
    monkeypatch.setattr(
        train, "pretrain", lambda cfg, resume: seen.setdefault("phases", cfg.phases) and "ckpt"
    )
    b = sr.BUDGETS["smoke"]
    for synth in (False, True):
        seen.clear()
        sr.pretrain_stage(run_dir, b, 0, 10_000, synth)
        p2 = {d.name: d.weight for d in seen["phases"][1].datasets}
        want = {"quality": 0.7, "instruct": 0.3}
        if synth:
            want = {"quality": 0.7 - sr.SYNTH_WEIGHT, "instruct": 0.3, "synthetic": sr.SYNTH_WEIGHT}
        assert p2 == pytest.approx(want)


def test_three_arm_verdict_names_the_winner_and_the_margins():
    arm = lambda bpb, loss, p: {"humaneval_bpb": bpb, "val_loss_quality": loss, "humaneval_pass@1": p}  # noqa: E731
    v = sr._arms_verdict({"quality": arm(2.0, 3.0, 0.0), "unfiltered": arm(2.2, 3.3, 0.0),
                          "quality+synth": arm(1.9, 3.1, 0.1)})  # fmt: skip
    assert "HumanEval bits/byte: **filtered + synthetic** 1.9 vs quality-filtered 2 (-5.0%)" in v
    assert "held-out loss on quality code: **quality-filtered** 3 vs" in v
    assert "HumanEval pass@1: **filtered + synthetic**" in v
    tie = sr._arms_verdict({a: arm(2.0, 3.0, 0.0) for a in ("quality", "unfiltered", "quality+synth")})
    assert "HumanEval pass@1: a tie (0)" in tie
    two = sr._arms_verdict({"quality": arm(2.0, 3.0, 0.0), "unfiltered": arm(2.2, 2.9, 0.0)})  # no synth arm
    assert two.startswith("2 arms at equal tokens and seed.")
    assert "HumanEval bits/byte: **quality-filtered** 2 vs unfiltered 2.2 (-9.1%)" in two
    assert "held-out loss on quality code: **unfiltered** 2.9 vs quality-filtered 3 (-3.3%)" in two
