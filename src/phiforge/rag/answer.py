"""Answer a question from an index: retrieve, fit the best chunks into the model's context, ask through the
chat template, return the answer with its numbered sources.

    ans = phiforge.rag.answer(engine, phiforge.rag.Index.load("idx"), "What does shlex.quote return?")
    ans.text, ans.sources  # "... [1]", [{"n": 1, "title": "shlex:quote", ...}]

`phiforge serve --index` builds its prompts with the same build_prompt(), the chat's earlier turns in front.
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
ANSWER_TOKENS = 256  # the answer's share of the context when the caller names none


@dataclass
class Answer:
    text: str
    sources: list[dict] = field(default_factory=list)  # cite(): n, doc_id, chunk, title, score, text
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


def messages_for(question: str, hits: list[Hit], history: list[dict] = ()) -> list[dict]:
    """The conversation so far (`history`, a chat server's earlier turns) then the question as the user's
    turn, with the numbered sources in front of it."""
    if not hits:
        return [*history, {"role": "user", "content": f"{CLOSED_BOOK}\n\nQuestion: {question}"}]
    blocks = "\n\n".join(f"[{n}] {h.title}\n{h.text.strip()}" for n, h in enumerate(hits, 1))
    return [*history, {"role": "user", "content": f"{INSTRUCTIONS}\n\n{blocks}\n\nQuestion: {question}"}]


def fit(tok, question: str, hits: list[Hit], budget: int, history: list[dict] = ()):
    """The prompt with as many of `hits` (best first) as fit in `budget` tokens; a chunk too long to fit is
    passed over for the next one. Returns (messages, hits used, prompt tokens)."""
    used = []
    n = len(tok.apply_chat_template(messages_for(question, [], history), add_generation_prompt=True))
    if n > budget:
        what = "the question alone takes" if not history else "the conversation and question take"
        raise RagError(f"{what} {n} prompt tokens; the context leaves {budget} for the prompt")
    for h in hits:
        m = len(
            tok.apply_chat_template(messages_for(question, [*used, h], history), add_generation_prompt=True)
        )
        if m <= budget:
            used.append(h)
            n = m
    return messages_for(question, used, history), used, n


def build_prompt(
    engine,
    index: Index | None,
    question: str,
    k: int = 8,
    max_new_tokens: int = ANSWER_TOKENS,
    budget: int | None = None,
    query: str | None = None,
    history: list[dict] = (),
) -> tuple[str, list[Hit], int]:
    """(rendered chat prompt, sources used, prompt tokens): what `rag ask`, the rag_qa task and `serve --index`
    send to the model. index None = closed book. The budget defaults to the model's context less the answer's
    tokens; `query` (default: the question) is what is searched for; `history` = earlier chat turns."""
    if not question.strip():
        raise RagError("the question is empty")
    ctx = engine.cfg.max_position_embeddings
    budget = min(budget or ctx, ctx) - max_new_tokens
    hits = index.search(query or question, k=k) if index is not None else []
    messages, used, n = fit(engine.tokenizer, question, hits, budget, history)
    return engine.tokenizer.render_chat(messages, add_generation_prompt=True), used, n


def cite(used: list[Hit]) -> list[dict]:
    """The numbered sources of a prompt: n (as cited, [n]), doc_id, chunk (its number in the document), title,
    retrieval score, text."""
    keys = ("doc_id", "chunk", "title", "score", "text")
    return [{"n": n, **{k: getattr(h, k) for k in keys}} for n, h in enumerate(used, 1)]


def answer(engine, index: Index, question: str, k: int = 8, params=None, budget: int | None = None) -> Answer:
    """Retrieve the top-k chunks for `question`, fit the best into the context, generate, return text + sources."""
    from ..infer.sampling import SamplingParams

    params = params or SamplingParams(max_new_tokens=ANSWER_TOKENS, temperature=0.0)
    prompt, used, n = build_prompt(engine, index, question, k, params.max_new_tokens, budget)
    res = engine.generate([engine.tokenizer.encode(prompt)], params)[0]
    return Answer(res.text.strip(), cite(used), n)
