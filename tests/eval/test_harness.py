"""The harness end to end on a tiny model: reports, resume, known log-likelihood orderings, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

import phiforge.eval as ev
from conftest import write_jsonl
from phiforge.eval.harness import EvalSettings, run_mc
from phiforge.eval.tasks import MCItem, Task
from phiforge.eval.tasks.code import humaneval_solutions
from phiforge.infer.engine import Engine
from phiforge.infer.score import bits_per_byte

PIQA = [
    {
        "query": f"Question: How do I do thing {i}?\n",
        "choices": [f"Use a spoon {i}.", f"Use a fork and a knife {i}."],
        "gold": i % 2,
    }
    for i in range(6)
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_jsonl(d / "piqa" / "piqa.jsonl", PIQA)
    return d


def test_run_writes_reports_and_resumes(model_dir, data, tmp_path):
    out = tmp_path / "run"
    r = ev.run(
        model_dir,
        ["sanity", "piqa", "humaneval"],
        data_dir=data,
        limit=3,
        out=out,
        max_new_tokens=24,
        show_progress=False,
    )
    root = out / "eval"
    saved = json.loads((root / "results.json").read_text())
    assert saved["tasks"].keys() == r["tasks"].keys() == {"sanity", "piqa", "humaneval"}
    assert saved["settings"]["limit"] == 3 and saved["settings"]["max_new_tokens"] == 24
    piqa = saved["tasks"]["piqa"]
    assert piqa["shots"] == 5 and piqa["n"] == 3 and "item excluded" in piqa["setting"]
    for m in ("acc", "acc_norm"):
        v = piqa["metrics"][m]
        assert 0 <= v["value"] <= 1 and v["stderr"] >= 0
    assert set(saved["tasks"]["humaneval"]["metrics"]) == {"pass@1", "outcomes"}
    assert sum(saved["tasks"]["humaneval"]["metrics"]["outcomes"].values()) == 3
    he = [json.loads(x) for x in (root / "samples" / "humaneval.jsonl").read_text().splitlines()]
    assert len(he) == 3 and all(s["status"] in ("passed", "failed", "timeout", "memory", "error") for s in he)
    assert len((root / "samples" / "sanity.jsonl").read_text().splitlines()) == 3
    md = (root / "results.md").read_text()
    assert "| piqa | 5 | 3 | acc |" in md and "## Settings" in md and "sample outputs" in md
    # a rerun with the same settings reuses the per-task files
    before = {p.name: p.stat().st_mtime_ns for p in (root / "tasks").iterdir()}
    r2 = ev.run(
        model_dir,
        ["sanity", "piqa", "humaneval"],
        data_dir=data,
        limit=3,
        out=out,
        max_new_tokens=24,
        show_progress=False,
    )
    assert r2["tasks"] == json.loads(json.dumps(r["tasks"], default=str))
    assert before == {p.name: p.stat().st_mtime_ns for p in (root / "tasks").iterdir()}
    # different settings recompute
    ev.run(model_dir, ["piqa"], data_dir=data, limit=3, out=out, shots={"piqa": 0}, show_progress=False)
    assert json.loads((root / "tasks" / "piqa.json").read_text())["result"]["shots"] == 0


def test_known_loglikelihood_orderings(model_dir):
    """With the final norm zeroed the model is uniform over V: ll(option) = -tokens * ln V, so the option
    with the fewest tokens wins acc and the fewest tokens per character wins acc_norm."""
    eng = Engine.load(model_dir)
    with torch.no_grad():
        eng.model.norm.weight.zero_()
    V = eng.cfg.vocab_size
    ntok = [len(eng.tok.encode(o)) for o in (" x", " x x x x", " abcdefghijklmnopqrstuvwxyz")]
    opts = [" x", " x x x x", " abcdefghijklmnopqrstuvwxyz"]
    items = [
        MCItem("a", [("Q: pick\nA:", o) for o in opts], 0, opts),
        MCItem("b", [("Q: pick\nA:", o) for o in opts], 2, opts),
    ]
    res, per = run_mc(eng, Task("t", "mc", 0, "", None), items, EvalSettings(tasks=["t"]))
    for r in per:
        assert r["lls"] == pytest.approx([-n * math.log(V) for n in ntok], rel=1e-5)
    per_char = [n / len(o) for n, o in zip(ntok, opts, strict=True)]
    best_norm = min(range(3), key=per_char.__getitem__)
    assert (
        best_norm == 2
    )  # the long word is few tokens per character (BPE of letters), so acc and acc_norm split
    assert [r["acc"] for r in per] == [1.0, 0.0] and [r["acc_norm"] for r in per] == [0.0, 1.0]
    assert res["acc"]["value"] == 0.5 and res["acc_norm"]["value"] == 0.5
    # MC2: probability mass V^-n normalized; true = the 1-token option
    mc2 = MCItem("c", items[0].pairs, -1, opts, labels=[1, 0, 0])
    res, _ = run_mc(eng, Task("t", "mc2", 0, "", None), [mc2], EvalSettings(tasks=["t"]))
    p = [V ** (-n) for n in ntok]
    assert res["mc2"]["value"] == pytest.approx(p[0] / sum(p), rel=1e-5)


def test_bits_per_byte_api(model_dir):
    eng = Engine.load(model_dir)
    texts = humaneval_solutions()
    assert len(texts) == 164 and texts[0].startswith("from typing import List")
    bpb = bits_per_byte(eng, texts[:5])
    assert 0 < bpb < 20


def test_bad_settings(model_dir):
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        ev.run(model_dir, ["nope"])
    with pytest.raises(ValueError, match="n_samples > 1 needs temperature"):
        ev.run(model_dir, ["sanity"], n_samples=3)
    with pytest.raises(ValueError, match="dtype 'float33' is not a torch dtype"):
        ev.run(model_dir, ["sanity"], dtype="float33")
    # data is checked for every task before the model runs any
    with pytest.raises(ValueError, match="GSM8K file not found"):
        ev.run(model_dir, ["sanity", "gsm8k"], data_dir=model_dir, engine=object())


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "phiforge.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_cli_eval(model_dir, data, tmp_path):
    p = _cli(
        "eval",
        "-m",
        str(model_dir),
        "--tasks",
        "piqa",
        "--data",
        str(data),
        "--limit",
        "2",
        "--shots",
        "piqa=1",
        "--out",
        str(tmp_path),
    )
    assert p.returncode == 0, p.stderr
    assert "piqa" in p.stdout and "| piqa | 1 | 2 | acc |" in p.stdout
    assert (
        "piqa             1-shot" in p.stdout and "(default 5-shot;" in p.stdout
    )  # the banner shows --shots
    assert (tmp_path / "eval" / "results.json").is_file()
    p = _cli("eval", "-m", str(model_dir), "--tasks", "gsm8k", "--data", str(tmp_path / "nothing"))
    assert p.returncode == 1 and p.stderr.startswith("error: GSM8K file not found:"), p.stderr
    p = _cli("eval", "-m", str(model_dir), "--tasks", "bogus")
    assert p.returncode == 1 and "error: unknown task 'bogus'" in p.stderr
