"""answer(): the best chunks that fit the context budget, numbered sources, clear refusals; on a tiny model."""

from __future__ import annotations

import pytest

from phiforge.infer.sampling import SamplingParams
from phiforge.rag import Answer, Index, RagError, answer
from phiforge.rag.answer import build_prompt

Q = "how do I escape a string for the shell"


def test_answer_cites_numbered_sources_within_budget(built, engine):
    idx, _, _ = built
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    ans = answer(engine, idx, Q, k=3, params=params)
    assert [s["n"] for s in ans.sources] == [1, 2, 3]
    assert ans.sources[0]["doc_id"] == "shells.txt"  # best first
    assert ans.prompt_tokens <= engine.cfg.max_position_embeddings - params.max_new_tokens
    prompt, used, n = build_prompt(engine, idx, Q, k=3, max_new_tokens=8)
    for i, h in enumerate(used, 1):
        assert f"[{i}] {h.title}\n{h.text}" in prompt
    assert "Cite the sources you use as [1], [2]" in prompt
    assert prompt.startswith("<|user|>\n") and prompt.endswith("<|assistant|>\n")  # the chat template
    assert len(engine.tok.encode(prompt)) == n


def test_budget_drops_what_does_not_fit(built, engine):
    idx, _, _ = built
    _, all3, n3 = build_prompt(engine, idx, Q, k=3, max_new_tokens=8)
    _, best, n1 = build_prompt(engine, idx, Q, k=1, max_new_tokens=8)
    assert len(all3) == 3 and n1 < n3
    # room for the best source only: the others are passed over, the prompt still fits
    _, some, n = build_prompt(engine, idx, Q, k=3, max_new_tokens=8, budget=n1 + 8)
    assert [h.doc_id for h in some] == ["shells.txt"] and n == n1


def test_refusals(built, engine, tmp_path):
    idx, _, _ = built
    with pytest.raises(RagError, match="the question alone takes .* prompt tokens; the context leaves"):
        answer(engine, idx, "why " * 400)
    with pytest.raises(RagError, match="the question is empty"):
        answer(engine, idx, "  ")
    with pytest.raises(RagError, match="the index is empty"):
        answer(engine, Index.create(tmp_path / "empty"), Q)


def test_cited_numbers():
    a = Answer("Use shlex.quote [2]; see also [1] and [2], not [7].", [{"n": 1}, {"n": 2}])
    assert a.cited == [2, 1]
