"""`rag_qa` / `rag_qa_retrieval`: knowledge questions about the local Python installation that a small model
cannot memorise but retrieval can answer (the Phi-3 report's remedy for low TriviaQA: "augmentation with a
search engine").

The questions are built, not written: from the abstract syntax trees of the public standard-library modules
that `phiforge rag index --source python-stdlib` indexes (the same files, so every answer is in the index),
three kinds with exact answers:
  module    which module defines the function `f`?                     -> "email.utils"
  default   the default value of parameter `p` of `mod.f`?              -> "'strict'"
  function  which function of `mod` is described as "<docstring line>"? -> "quote"
Definitions are read with `ast`, not `inspect`: nothing is imported (some stdlib modules act on import),
and the answers are spelled exactly as in the indexed source. Function names are unique in the corpus, the
selection is fixed by the seed, and the order of files is the hash order of `list_python_files`.

Scoring: the first non-empty line of the reply must contain the answer as a whole token (a quoted default
also counts without its quotes). The closed-book variant asks the bare question through the chat template;
the retrieval variant puts the chunks `phiforge.rag` retrieves from `--rag-index` in front of it.
"""

from __future__ import annotations

import ast
import copy
import functools
import random
import re
from collections import Counter

from . import GenItem, Task

N_ITEMS = 300
SEED = 0
CORPUS_BYTES = (
    800_000  # `phiforge rag index --source python-stdlib --max-bytes` must match (its default does)
)
RETRIEVE_K = 4  # chunks in the prompt: ~1k tokens, so 300 questions stay minutes on a CPU
REPLY = {
    "module": "Reply with the module name only.",
    "default": "Reply with the value only.",
    "function": "Reply with the function name only.",
}


def _first_sentence(doc: str | None) -> str:
    if not doc:
        return ""
    para = doc.strip().split("\n\n")[0]
    s = " ".join(para.split())
    m = re.match(r"(.+?[.!?])(\s|$)", s)
    return m.group(1) if m else s


@functools.cache  # the whole public stdlib is parsed for name uniqueness: once per process
def _top_level(path):
    from ...data.sources import read_source

    text, _ = read_source(path)
    try:
        return ast.parse(text or "").body
    except (SyntaxError, ValueError):
        return []


@functools.cache  # parsing the stdlib takes seconds; closed-book and retrieval runs build the same set
def _stdlib_candidates(max_bytes: int) -> dict[str, list[dict]]:
    from ...rag.index import stdlib_files

    return _candidates(stdlib_files(max_bytes), stdlib_files(None))


def _candidates(files, all_files) -> dict[str, list[dict]]:
    from ...data.sources import module_name

    names = Counter()  # over every public stdlib module, so "which module defines f" has one answer
    for _origin, _root, path in all_files:
        names.update(
            n.name
            for n in _top_level(path)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        )
    defs = []  # (module, rel, node)
    for _origin, root, path in files:
        rel = path.relative_to(root)
        mod = module_name("stdlib", rel)
        defs += [
            (mod, rel.as_posix(), n)
            for n in _top_level(path)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        ]
    out: dict[str, list[dict]] = {k: [] for k in REPLY}
    for mod, rel, fn in defs:
        name = fn.name
        if name.startswith("_") or names[name] > 1 or len(name) < 4:
            continue  # private, or ambiguous: another module defines the same name
        gold = {"doc_prefix": f"stdlib/{rel}", "needle": f"def {name}("}
        base = {"module": mod, "function": name, **gold}
        out["module"].append(
            {**base, "kind": "module", "answer": mod, "question": f"Which module of the Python standard library defines the function `{name}`?"}
        )  # fmt: skip
        a = fn.args
        pos = (a.posonlyargs + a.args)[len(a.posonlyargs + a.args) - len(a.defaults) :]
        params = list(zip(pos, a.defaults, strict=True))
        params += [(p, d) for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is not None]
        for p, d in params:
            value = ast.unparse(d)
            if value != "None" and len(value) <= 24 and "\n" not in value:  # None: what a guesser says
                out["default"].append(
                    {**base, "kind": "default", "answer": value, "param": p.arg, "question": f"What is the default value of the parameter `{p.arg}` of `{mod}.{name}`?"}
                )  # fmt: skip
        sent = _first_sentence(ast.get_docstring(fn))
        if 5 <= len(sent.split()) <= 40 and name.lower() not in sent.lower():
            out["function"].append(
                {**base, "kind": "function", "answer": name, "question": f'Which function of the `{mod}` module is described as: "{sent}"?'}
            )  # fmt: skip
    return out


def build(n: int = N_ITEMS, seed: int = SEED, max_bytes: int = CORPUS_BYTES) -> list[dict]:
    """The question set: n items taken round-robin over the three kinds, each kind shuffled by `seed`;
    at most two default questions per function, so one long signature does not fill the set."""
    cands = copy.deepcopy(_stdlib_candidates(max_bytes))  # build mutates the items it takes
    rng = random.Random(seed)
    pools = []
    for kind in REPLY:
        pool = sorted(cands[kind], key=lambda c: (c["module"], c["function"], c.get("param", "")))
        rng.shuffle(pool)
        if kind == "default":
            seen, kept = Counter(), []
            for c in pool:
                seen[c["module"], c["function"]] += 1
                if seen[c["module"], c["function"]] <= 2:
                    kept.append(c)
            pool = kept
        pools.append(pool)
    items = []
    while len(items) < n and any(pools):
        for pool in pools:
            if pool and len(items) < n:
                items.append(pool.pop(0))
    for i, it in enumerate(items):
        it["id"] = f"rag_qa/{i}/{it['kind']}/{it['module']}.{it['function']}"
    return items


def relevant(chunk: dict, item: dict) -> bool:
    """The chunk that answers the item: from the defining file, holding the `def` line (signature + docstring)."""
    return chunk["doc_id"].startswith(item["doc_prefix"]) and item["needle"] in chunk["text"]


def recall_at_k(index, items: list[dict], ks=(1, 5, 10), modes=("bm25", "dense", "fused")) -> dict:
    """{mode: {k: fraction of items whose relevant chunk is in the top k}} for the bare questions."""
    top = max(ks)
    out = {}
    for mode in modes:
        ranks = []
        for it in items:
            hits = index.search(it["question"], k=top, mode=mode)
            r = next((i for i, h in enumerate(hits) if relevant(index.chunks[h.row], it)), None)
            ranks.append(r)
        out[mode] = {k: sum(r is not None and r < k for r in ranks) / len(items) for k in ks}
    return out


# ---- harness plumbing ------------------------------------------------------------------------------
def load(data_dir, limit, shots) -> list[GenItem]:
    items = build()
    gen = [
        GenItem(it["id"], f"{it['question']} {REPLY[it['kind']]}", it["answer"], max_new_tokens=32, meta=it)
        for it in items
    ]
    return gen[:limit] if limit else gen


def _alternatives(answer: str) -> list[str]:
    if len(answer) >= 3 and answer[0] == answer[-1] and answer[0] in "'\"":
        inner = answer[1:-1]
        return [f"'{inner}'", f'"{inner}"', inner]  # either quoting, or none
    return [answer]


def check(item: GenItem, text: str) -> dict:
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "").replace("`", "")
    ok = any(re.search(rf"(?<!\w){re.escape(a)}(?!\w|\.\w)", line) for a in _alternatives(str(item.target)))
    out = {"correct": ok, "extracted": line[:200], "kind": item.meta["kind"]}
    if "retrieved" in item.meta:
        out["retrieved"] = item.meta["retrieved"]
    return out


def prepare_closed(engine, items: list[GenItem], settings) -> list[GenItem]:
    from ...rag.answer import build_prompt

    for it in items:
        it.prompt = build_prompt(engine, None, it.prompt, max_new_tokens=it.max_new_tokens)[0]
    return items


def prepare_retrieval(engine, items: list[GenItem], settings) -> list[GenItem]:
    from ...rag.answer import build_prompt
    from ...rag.index import Index, RagError

    if not settings.rag_index:
        raise RagError(
            "rag_qa_retrieval needs an index: --rag-index IDX (`phiforge rag index --source python-stdlib`)"
        )
    index = Index.load(settings.rag_index)
    for it in items:
        it.prompt, used, _ = build_prompt(
            engine,
            index,
            it.prompt,
            k=RETRIEVE_K,
            max_new_tokens=it.max_new_tokens,
            query=it.meta["question"],
        )
        it.meta = {**it.meta, "retrieved": any(relevant(index.chunks[h.row], it.meta) for h in used)}
    return items


def tasks() -> list[Task]:
    what = f"up to {N_ITEMS} questions on the local stdlib (module / default value / function from its docstring), seed {SEED}"
    return [
        Task(
            "rag_qa",
            "gen",
            0,
            f"{what}; closed book, chat template",
            load,
            check=check,
            prepare=prepare_closed,
        ),
        Task(
            "rag_qa_retrieval",
            "gen",
            0,
            f"{what}; top-{RETRIEVE_K} fused BM25+MiniLM chunks from --rag-index in the prompt",
            load,
            check=check,
            prepare=prepare_retrieval,
        ),
    ]
