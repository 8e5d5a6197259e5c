"""The rag_qa question set: deterministic, exact answers that the indexed source holds, scoring rules."""

from __future__ import annotations

import ast
from collections import Counter

import pytest

from phiforge.eval.tasks import GenItem, rag_qa, registry
from phiforge.rag.index import stdlib_files


@pytest.fixture(scope="module")
def items():
    return rag_qa.build()


def test_deterministic_and_balanced(items):
    assert rag_qa.build() == items
    assert rag_qa.build(seed=1) != items
    assert 200 <= len(items) <= rag_qa.N_ITEMS
    kinds = Counter(it["kind"] for it in items)
    assert set(kinds) == {"module", "default", "function"} and min(kinds.values()) >= 30
    assert len({it["id"] for it in items}) == len(items)


def test_answers_are_exact_in_the_source(items):
    files = {f"stdlib/{p.relative_to(r).as_posix()}": p for _, r, p in stdlib_files(rag_qa.CORPUS_BYTES)}
    trees = {}  # 300 items share far fewer files
    for it in items:
        if it["doc_prefix"] not in trees:
            trees[it["doc_prefix"]] = ast.parse(files[it["doc_prefix"]].read_text(encoding="utf-8"))
        tree = trees[it["doc_prefix"]]
        fn = next(
            n
            for n in tree.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == it["function"]
        )
        if it["kind"] == "module":
            assert files[it["doc_prefix"]].stem in (it["answer"].split(".")[-1], "__init__")
        elif it["kind"] == "default":
            a = fn.args
            pos = a.posonlyargs + a.args
            defaults = dict(zip([x.arg for x in pos[len(pos) - len(a.defaults) :]], a.defaults, strict=True))
            defaults |= {x.arg: d for x, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is not None}
            assert ast.unparse(defaults[it["param"]]) == it["answer"] != "None"
        else:
            described = it["question"].split(': "', 1)[1]
            assert it["answer"] == fn.name and fn.name.lower() not in described.lower()
            assert described[:-2] in " ".join((ast.get_docstring(fn) or "").split())


def test_check_rules():
    item = GenItem("x", "q", "'strict'", meta={"kind": "default"})
    assert rag_qa.check(item, "'strict'")["correct"]
    assert rag_qa.check(item, 'The default is "strict".')["correct"]
    assert rag_qa.check(item, "`strict`\nmore")["correct"]
    assert not rag_qa.check(item, "\n\nstrictly\n'strict'")["correct"]  # only the first non-empty line counts
    num = GenItem("y", "q", "0", meta={"kind": "default"})
    assert rag_qa.check(num, "0")["correct"]
    assert not rag_qa.check(num, "10")["correct"] and not rag_qa.check(num, "0.5")["correct"]
    fn = GenItem("z", "q", "quote", meta={"kind": "function", "retrieved": True})
    assert rag_qa.check(fn, "shlex.quote") == {
        "correct": True,
        "extracted": "shlex.quote",
        "kind": "function",
        "retrieved": True,
    }
    assert not rag_qa.check(fn, "quoted")["correct"]


def test_relevant_chunk():
    it = {"doc_prefix": "stdlib/shlex.py", "needle": "def quote("}
    assert rag_qa.relevant({"doc_id": "stdlib/shlex.py:quote", "text": "def quote(s):\n"}, it)
    assert not rag_qa.relevant({"doc_id": "stdlib/shlex.py:quote", "text": "    return s\n"}, it)
    assert not rag_qa.relevant({"doc_id": "stdlib/pipes.py:quote", "text": "def quote(s):\n"}, it)


def test_registered_variants():
    reg = registry()
    assert reg["rag_qa"].prepare is rag_qa.prepare_closed
    assert reg["rag_qa_retrieval"].prepare is rag_qa.prepare_retrieval


def test_harness_runs_closed_book_and_needs_an_index_for_retrieval(engine):
    from phiforge.eval.harness import run
    from phiforge.rag import RagError

    report = run("tiny", ["rag_qa"], limit=3, engine=engine, show_progress=False, max_new_tokens=4)
    res = report["tasks"]["rag_qa"]
    assert res["n"] == 3 and 0.0 <= res["metrics"]["exact_match"]["value"] <= 1.0
    assert [s["kind"] for s in res["samples"]] == ["module", "default", "function"]
    with pytest.raises(RagError, match="rag_qa_retrieval needs an index: --rag-index IDX"):
        run("tiny", ["rag_qa_retrieval"], limit=1, engine=engine, show_progress=False)
