"""Pivotal Token Search on a scripted "model" whose p(success | prefix) is known exactly, then on a tiny real
engine: the subdivision finds exactly the planted token, prefixes travel as ids, the cache makes a re-run
free and a killed run resumes to the same output."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from phiforge.infer.engine import Engine, Result
from phiforge.model import build, get_preset
from phiforge.train import pts, pts_tasks
from phiforge.train.pts_tasks import Problem

G, Z, END = 6, 25, 11  # 'g' makes an answer right, 'z' wrong ('z' wins); 'l' ends a continuation
K = 4


class FakeTok:
    """ids 0..25 are the letters a..z; a question's prompt is the single id 100 + its number. No encode: the
    search must never re-encode text."""

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(97 + i) for i in ids if i < 26)

    def apply_chat_template(self, msgs, add_generation_prompt=False):
        return [100 + int(msgs[0]["content"].split()[-1])]

    def render_chat(self, msgs, add_generation_prompt=False):
        return f"<|user|>{msgs[0]['content']}<|assistant|>"


class FakeEngine:
    """Row j of the K rows of a prompt: from the empty prefix row 0 is the planted solution; otherwise a prefix
    holding 'z' or 'g' is decided and ends, and an undecided one continues with 'g' (rows 0, 2) or 'z' (rows
    1, 3), so p = 1/2 until the pivotal token, then 1 ('g') or 0 ('z'). The empty prefix gets p = 1/2 too."""

    def __init__(self, solutions: dict[int, list[int]], fail_after: int | None = None):
        self.tok, self.solutions, self.calls, self.fail_after = FakeTok(), solutions, [], fail_after

    def generate(self, prompts, params):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt  # a kill mid-run
        self.calls.append([list(p) for p in prompts])
        seen, out = {}, []
        for p in prompts:
            j = seen[tuple(p)] = seen.get(tuple(p), -1) + 1
            pre, sol = p[1:], self.solutions[p[0] - 100]
            if not pre and j == 0:
                toks = sol
            elif Z in pre or G in pre:
                toks = [END]
            elif not pre:  # rows 1..3 of the empty prefix: p(success) = 1/2 overall
                toks = [G, END] if j == 1 or (j == 2 and Z in sol) else [Z, END]
            else:
                toks = [G, END] if j % 2 == 0 else [Z, END]
            out.append(Result(tokens=toks[: params.max_new_tokens]))
        return out


def check(jobs):
    return ["z" not in text and "g" in text for _, text in jobs]


def solution(at: int, planted: int, n: int = 12) -> list[int]:
    s = [i for i in range(n + 1) if i != G][:n]  # letters, no 'g' or 'z'
    s[at] = planted
    return s


def problems(n: int) -> list[Problem]:
    return [Problem(f"p{i}", f"question {i}", None, 32) for i in range(n)]


def rows(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


CFG = pts.PTSConfig(samples=K, p_gap=0.2, group=1)


@pytest.mark.parametrize("at", [0, 1, 5, 6, 11])
@pytest.mark.parametrize("planted", [G, Z])
def test_subdivision_finds_exactly_the_planted_token(tmp_path, at, planted):
    sol = solution(at, planted)
    eng = FakeEngine({0: sol})
    stats = pts.run(eng, problems(1), check, tmp_path / "pairs.jsonl", CFG)
    (pair,) = rows(tmp_path / "pairs.jsonl")
    m = pair["metadata"]
    assert m["position"] == at and m["p_before"] == 0.5
    assert pair["prompt_ids"] == [100, *sol[:at]]
    assert pair["prompt"] == "<|user|>question 0<|assistant|>" + FakeTok().decode(sol[:at])
    if planted == G:  # raises p: chosen, against the sampled 'z' (p 0)
        assert (pair["chosen_ids"], pair["rejected_ids"]) == ([G], [Z]) and m["pivotal_is"] == "chosen"
        assert (m["p_after"], m["p_chosen"], m["p_rejected"]) == (1.0, 1.0, 0.0)
    else:  # lowers p: rejected, against the sampled 'g' (p 1)
        assert (pair["chosen_ids"], pair["rejected_ids"]) == ([G], [Z]) and m["pivotal_is"] == "rejected"
        assert (m["p_after"], m["p_chosen"], m["p_rejected"]) == (0.0, 1.0, 0.0)
    assert (pair["chosen"], pair["rejected"]) == ("g", "z")
    # one engine call per level of the binary subdivision (+ the first samples + the alternatives), every
    # prompt = the question's ids + a prefix of the sampled ids, never re-encoded text
    assert eng.calls[0] == [[100]] * K
    prefixes = [list(p[1:]) for call in eng.calls[1:-1] for p in call]
    assert all(p == sol[: len(p)] for p in prefixes)
    assert len(eng.calls) - 2 <= 4  # ceil(log2(12)) levels at most
    assert eng.calls[-1] == [[100, *sol[:at], G if planted == Z else Z]] * K
    assert stats.kept == stats.pivotal == stats.pairs == 1 and stats.no_alternative == 0


def test_no_pivot_when_p_never_moves_enough(tmp_path):
    cfg = pts.PTSConfig(samples=K, p_gap=0.6)  # every step here moves p by 1/2
    stats = pts.run(FakeEngine({0: solution(5, G)}), problems(1), check, tmp_path / "o.jsonl", cfg)
    assert stats.kept == 1 and stats.pivotal == stats.pairs == stats.whole_pairs == 0
    assert (tmp_path / "o.jsonl").read_text() == ""


def test_problems_outside_the_p_band_are_not_searched(tmp_path):
    cfg = pts.PTSConfig(samples=K, p_min=0.6, p_max=0.8)  # every problem here has p = 1/2
    eng = FakeEngine({0: solution(3, G), 1: solution(4, Z)})
    stats = pts.run(eng, problems(2), check, tmp_path / "o.jsonl", cfg)
    assert (stats.problems, stats.kept, stats.pairs, len(eng.calls)) == (2, 0, 0, 1)


def test_whole_answer_pairs_match_the_pts_count(tmp_path):
    sols = {0: solution(2, G), 1: solution(7, Z), 2: solution(9, G)}
    stats = pts.run(FakeEngine(sols), problems(3), check, tmp_path / "o.jsonl", CFG)
    whole = rows(pts.paths(tmp_path / "o.jsonl")["whole"])
    assert stats.pairs == 3 and len(whole) == stats.whole_pairs == 3
    assert [w["metadata"]["problem"] for w in whole] == ["p0", "p1", "p2"]  # round-robin over problems
    for w in whole:
        assert check([(None, w["chosen"])]) == [True] and check([(None, w["rejected"])]) == [False]
        assert w["prompt_ids"] == [100 + int(w["metadata"]["problem"][1:])]


def test_rerun_hits_the_cache_and_a_killed_run_resumes(tmp_path):
    sols = {0: solution(2, G), 1: solution(7, Z), 2: solution(9, G)}
    ref = tmp_path / "ref" / "o.jsonl"
    pts.run(FakeEngine(sols), problems(3), check, ref, CFG)
    again = FakeEngine(sols)
    stats = pts.run(again, problems(3), check, ref, CFG)
    assert again.calls == [] and stats.rollouts == 0 and stats.cached > 0 and stats.pairs == 3

    out = tmp_path / "run" / "o.jsonl"
    with pytest.raises(KeyboardInterrupt):  # dies inside the second problem's search
        pts.run(FakeEngine(sols, fail_after=6), problems(3), check, out, CFG)
    assert len(rows(out)) == 1
    with open(out, "a") as f:  # half a line written by the killed run after its last recorded problem
        f.write('{"prompt": "cut')
    resumed = FakeEngine(sols)
    stats = pts.run(resumed, problems(3), check, out, CFG)
    assert out.read_text() == ref.read_text()
    assert pts.paths(out)["whole"].read_text() == pts.paths(ref)["whole"].read_text()
    # nothing drawn twice: no first samples (one-id prompts), nothing of the finished first problem
    assert stats.pivotal == 3 and all(len(p) > 1 and p[0] != 100 for c in resumed.calls for p in c)
    with pytest.raises(ValueError, match="other settings"):
        pts.run(FakeEngine(sols), problems(3), check, out, pts.PTSConfig(samples=K, p_gap=0.3))


def test_config_errors():
    with pytest.raises(ValueError, match="samples"):
        pts.PTSConfig(samples=1)
    with pytest.raises(ValueError, match="p_min"):
        pts.PTSConfig(p_min=0.9, p_max=0.1)
    with pytest.raises(ValueError, match="temperature"):
        pts.PTSConfig(temperature=0)


# ---- a real engine -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(train_data):
    from phiforge.tokenizer import Tokenizer

    tok = Tokenizer.from_file(train_data["tok"])
    cfg = get_preset("tiny").replace(vocab_size=tok.vocab_size, num_hidden_layers=2)
    torch.manual_seed(0)
    return Engine(build(cfg, seed=0), tok)


@pytest.mark.slow  # a real engine's rollouts, ~10 s
def test_real_engine_pairs_carry_the_sampled_ids(engine, tmp_path):
    # a random model and an oracle that is right about half the time: some problems land in the band
    def coin(jobs):
        return [len(text) % 2 == 0 for _, text in jobs]

    probs = pts_tasks.load("arith", None, 4)
    for p in probs:
        p.max_new_tokens = 12
    cfg = pts.PTSConfig(samples=4, temperature=1.0, p_min=0.0, p_max=1.0, max_batch=6)
    stats = pts.run(engine, probs, coin, tmp_path / "o.jsonl", cfg, model_key="tiny")
    assert stats.problems == stats.kept == 4 and stats.rollouts > 16 and stats.pairs > 0
    tok = engine.tok
    for r in rows(tmp_path / "o.jsonl"):
        m = r["metadata"]
        q = next(p for p in probs if p.id == m["problem"])
        head = tok.apply_chat_template([{"role": "user", "content": q.question}], add_generation_prompt=True)
        assert r["prompt_ids"][: len(head)] == head and len(r["prompt_ids"]) == len(head) + m["position"]
        assert r["prompt"] == tok.render_chat([{"role": "user", "content": q.question}], True) + tok.decode(
            r["prompt_ids"][len(head) :]
        )
        assert (
            abs(m["p_after"] - m["p_before"]) >= cfg.p_gap
            and abs(m["p_chosen"] - m["p_rejected"]) >= cfg.p_gap
        )
        assert len(r["chosen_ids"]) == len(r["rejected_ids"]) == 1 and r["chosen_ids"] != r["rejected_ids"]
    again = pts.run(engine, probs, coin, tmp_path / "o.jsonl", cfg, model_key="tiny")
    assert again.rollouts == 0 and again.pairs == stats.pairs
    other = pts.run(engine, probs, coin, tmp_path / "o2.jsonl", cfg, model_key="other")  # new model: no reuse
    assert other.cached == 0


def test_arith_oracle_through_the_real_engine(engine, tmp_path):
    probs = pts_tasks.load("arith", None, 3)
    for p in probs:
        p.max_new_tokens = 8
    cfg = pts.PTSConfig(samples=2, max_batch=4)
    stats = pts.run(engine, probs, partial(pts_tasks.check_many, "arith"), tmp_path / "o.jsonl", cfg)
    assert stats.problems == 3 and stats.rollouts == 6  # a random model is never right: nothing kept
    assert stats.kept == stats.pairs == 0 and pts.paths(tmp_path / "o.jsonl")["whole"].read_text() == ""


@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_cli_pts_writes_pairs_and_a_summary(engine, tmp_path, phiforge, one_line_error):
    from phiforge.model import save_model

    run = phiforge

    model = tmp_path / "model"
    save_model(engine.model, model)
    engine.tok.save(model)
    out = tmp_path / "pts" / "pairs.jsonl"
    r = run("pts", "--model", model, "--task", "arith", "--out", out, "--limit", 2, "-k", 2, "--max-batch", 4)
    assert r.returncode == 0, r.stderr
    assert (
        "problems 2, kept in [0.2, 0.8] 0, pivotal tokens 0" in r.stdout
        and "rollouts 4 generated" in r.stdout
    )
    assert out.is_file() and pts.paths(out)["whole"].is_file() and pts.paths(out)["cache"].is_file()
    r = run("pts", "--model", model, "--task", "gsm8k", "--out", out)
    one_line_error(r, "error: gsm8k task: no --data given (the GSM8K train.jsonl or the folder holding it)")
