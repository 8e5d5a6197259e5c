"""Seeds: the topics the teacher writes about, mined from the best documents of a filtered corpus.

Phi-4 curates seeds from high-quality web and code data; here a topic is something the best-scored
documents use: a module they import (`the json module`), a concept their syntax shows (`list
comprehensions`, `context managers`), or a function they define (`a function like parse_header`). The
documents read (the top `docs` by metadata.quality, else teacher_score) are also what the synthetic set is
deduplicated against, so the teacher's text is not a copy of its seeds.
"""

from __future__ import annotations

import ast
import heapq
from collections import Counter
from pathlib import Path

from .. import DataError
from ..sources import iter_documents

# syntax -> the concept a student would name; one node type may teach several
_CONCEPTS = {
    ast.ListComp: "list comprehensions",
    ast.DictComp: "dictionary comprehensions",
    ast.GeneratorExp: "generator expressions",
    ast.Yield: "generators and yield",
    ast.With: "context managers and the with statement",
    ast.Try: "exceptions and try/except",
    ast.Lambda: "lambda functions",
    ast.ClassDef: "classes and methods",
    ast.JoinedStr: "f-strings and string formatting",
    ast.AsyncFunctionDef: "async functions",
    ast.Slice: "slicing sequences",
    ast.Dict: "dictionaries",
    ast.Set: "sets",
    ast.While: "while loops",
    ast.AnnAssign: "type hints",
}
_SKIP_MODULES = {"__future__", "typing", "os", "sys"}  # in nearly every file: they say nothing of a topic


def best_documents(in_dir: str | Path, k: int) -> list:
    """The `k` documents with the highest quality score (metadata.quality, else teacher_score, else 0)."""

    def score(doc) -> float:
        m = doc.metadata
        return float(m.get("quality", m.get("teacher_score", 0.0)) or 0.0)

    docs = iter_documents(in_dir)
    return heapq.nlargest(k, docs, key=lambda d: (score(d), d.id))


def topics_of(text: str) -> list[str]:
    """The topics one document shows: concepts from its syntax, modules it imports, functions it defines."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    found = []
    for node in ast.walk(tree):
        if type(node) in _CONCEPTS:
            found.append(_CONCEPTS[type(node)])
        if isinstance(node, ast.Import):
            found += [f"the {a.name.split('.')[0]} module" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(f"the {node.module.split('.')[0]} module")
        elif isinstance(node, ast.FunctionDef) and not node.name.startswith("_") and len(node.name) > 3:
            found.append(f"writing a function like {node.name}")
    skip = {f"the {m} module" for m in _SKIP_MODULES}
    return [t for t in dict.fromkeys(found) if t not in skip]


def mine_topics(in_dir: str | Path, docs: int = 2000, max_topics: int = 200) -> tuple[list[str], list]:
    """(topics by how many of the best documents show them, those documents)."""
    best = best_documents(in_dir, docs)
    if not best:
        raise DataError(f"{in_dir}: no documents to mine topics from")
    counts = Counter(t for d in best for t in topics_of(d.text))
    if not counts:
        raise DataError(f"{in_dir}: no topics found in the {len(best)} best documents (not Python code?)")
    return [t for t, _ in counts.most_common(max_topics)], best


def read_topics(path: str | Path) -> list[str]:
    """A topic list: one topic a line; blank lines and lines starting with # are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"--topics {path}: {e}") from None
    topics = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not topics:
        raise DataError(f"--topics {path}: no topics (one a line)")
    return topics
