"""Answer a question from an index: retrieve, fit the best chunks into the model's context, ask through the
chat template, return the answer with its numbered sources.

    ans = phiforge.rag.answer(engine, phiforge.rag.Index.load("idx"), "What does shlex.quote return?")
    ans.text, ans.sources  # "... [1]", [{"n": 1, "title": "shlex:quote", ...}]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .index import Hit, Index, RagError

INSTRUCTIONS = (
    "Answer the question using the numbered sources below. Cite the sources you use as [1], [2]. "
    "If the sources do not hold the answer, say so."
)
CLOSED_BOOK = "Answer the question briefly."


@dataclass
class Answer:
    text: str
    sources: list[dict] = field(default_factory=list)  # the chunks in the prompt: n, title, doc_id, text
    prompt_tokens: int = 0

    @property
    def cited(self) -> list[int]:
        """Source numbers the answer cites, in order of first citation."""
        out = []
        for m in re.finditer(r"\[(\d+)\]", self.text):
            n = int(m.group(1))
            if 1 <= n <= len(self.sources) and n not in out:
                out.append(n)
        return out


def messages_for(question: str, hits: list[Hit]) -> list[dict]:
    if not hits:
        return [{"role": "user", "content": f"{CLOSED_BOOK}\n\nQuestion: {question}"}]
    blocks = "\n\n".join(f"[{n}] {h.title}\n{h.text.strip()}" for n, h in enumerate(hits, 1))
    return [{"role": "user", "content": f"{INSTRUCTIONS}\n\n{blocks}\n\nQuestion: {question}"}]


def fit(tok, question: str, hits: list[Hit], budget: int) -> tuple[list[dict], list[Hit], int]:
    """The prompt with as many of `hits` (best first) as fit in `budget` tokens; a chunk too long to fit is
    passed over for the next one. Returns (messages, hits used, prompt tokens)."""
    used = []
    n = len(tok.apply_chat_template(messages_for(question, []), add_generation_prompt=True))
    if n > budget:
        raise RagError(
            f"the question alone takes {n} prompt tokens; the context leaves {budget} for the prompt"
        )
    for h in hits:
        m = len(tok.apply_chat_template(messages_for(question, [*used, h]), add_generation_prompt=True))
        if m <= budget:
            used.append(h)
            n = m
    return messages_for(question, used), used, n


def build_prompt(
    engine,
    index: Index | None,
    question: str,
    k: int = 8,
    max_new_tokens: int = 256,
    budget: int | None = None,
    query: str | None = None,
) -> tuple[str, list[Hit], int]:
    """(rendered chat prompt, sources used, prompt tokens); index None = closed book. The budget defaults to
    the model's context less the answer's tokens; `query` (default: the question) is what is searched for."""
    ctx = engine.cfg.max_position_embeddings
    budget = min(budget or ctx, ctx) - max_new_tokens
    hits = index.search(query or question, k=k) if index is not None else []
    messages, used, n = fit(engine.tokenizer, question, hits, budget)
    return engine.tokenizer.render_chat(messages, add_generation_prompt=True), used, n


def answer(engine, index: Index, question: str, k: int = 8, params=None, budget: int | None = None) -> Answer:
    """Retrieve the top-k chunks for `question`, fit the best into the context, generate, return text + sources."""
    from ..infer.sampling import SamplingParams

    if not question.strip():
        raise RagError("the question is empty")
    params = params or SamplingParams(max_new_tokens=256, temperature=0.0)
    prompt, used, n = build_prompt(engine, index, question, k, params.max_new_tokens, budget)
    res = engine.generate([engine.tokenizer.encode(prompt)], params)[0]
    sources = [{"n": i, "title": h.title, "doc_id": h.doc_id, "text": h.text} for i, h in enumerate(used, 1)]
    return Answer(res.text.strip(), sources, n)
