"""Teacher labels: the educational value (0-5) of a sample of documents, for the quality classifier to learn.

Two annotators share one interface, `annotate(texts, kinds) -> list[Annotation | None]`:

- `HeuristicAnnotator`: offline and deterministic, so the whole pipeline runs with no LLM. For code it reads
  the `ast` (docstrings, comments, names, size, imports, generated/test/data markers); for prose it uses
  a few surface signals.
- `TeacherAnnotator`: any OpenAI-compatible endpoint (vLLM, llama.cpp server, OpenAI) asked the phi-1 question
  for code and a FineWeb-Edu style additive rubric for prose. Every answer is kept in a sqlite cache the moment
  it arrives, so a run that dies half-way (or an endpoint that goes down) costs nothing to resume.

`AnnotateStep` wraps either one as a datatrove pipeline step that writes `teacher_score`, `teacher_reason`
and `teacher` into each document's metadata and drops documents whose answer could not be parsed.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import re
import sqlite3
import threading
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.batching import batched
from datatrove.utils.typeshelper import StatHints

from . import DataError

# --------------------------------------------------------------------------------------------------------------
# prompts

_ANSWER_FORMAT = """Answer with exactly two lines and nothing else:
Score: <an integer from 0 to 5>
Reason: <one line>"""

# The phi-1 criterion ("Textbooks Are All You Need"): would this teach a student who is learning to program?
CODE_PROMPT = (
    """Below is a code file. Judge its educational value for a student learning to program: would studying it
teach basic coding concepts, algorithms or good practice?

High value: clear, self-contained, instructive code that shows a concept or algorithm, with descriptive names,
docstrings or comments that explain why, and a length a student can read in one sitting.
Low value: boilerplate, configuration, generated code (protobuf, "DO NOT EDIT", autogen), test files made of
asserts, data tables or long literals, code that only makes sense inside a larger project, or code that is
hard to read.

0: no educational value (generated, configuration, data, broken or empty)
1: mostly boilerplate or glue; a student would learn almost nothing
2: some useful code but tangled with project specifics, poorly named or undocumented
3: understandable and somewhat instructive, but needs context or lacks explanation
4: clear, well-named and documented code that teaches a concept, mostly self-contained
5: textbook quality: self-contained, well explained, a model of how to write and reason about code

Code:
```
{text}
```

"""
    + _ANSWER_FORMAT
)

# FineWeb-Edu's additive rubric: each point is earned on top of the previous ones, which makes the teacher's
# scores more consistent than asking for one number directly.
PROSE_PROMPT = (
    """Below is an extract from a web page. Judge whether it has high educational value and could be useful in
an educational setting for teaching from primary school to grade school levels, using this additive
5-point scoring system. Points accumulate:

- Add 1 point if the extract provides some basic information relevant to educational topics, even if it
  includes some irrelevant or non-academic content like advertisements and promotional material.
- Add another point if the extract addresses certain elements pertinent to education but does not align
  closely with educational standards. It might mix educational content with non-educational material,
  offer a superficial overview, or be disorganized.
- Award a third point if the extract is appropriate for educational use and introduces key concepts
  relevant to school curricula. It is coherent though it may not be comprehensive.
- Grant a fourth point if the extract is highly relevant and beneficial for educational purposes, with a
  clear and consistent writing style, like a chapter from a textbook or a tutorial, with substantial
  educational content and minimal extraneous information.
- Bestow a fifth point if the extract is outstanding in its educational value, perfectly suited for teaching,
  with detailed reasoning, easy to follow, and insights into the subject.

A score of 0 means no educational value at all (spam, navigation menus, boilerplate, gibberish).

Extract:
<<<
{text}
>>>

"""
    + _ANSWER_FORMAT
)

KINDS = ("code", "prose")
_TRUNCATED = "\n[... truncated ...]"


def build_prompt(text: str, kind: str, max_chars: int = 6000) -> str:
    """The teacher prompt for one document; text beyond `max_chars` is cut (and marked, so the teacher knows)."""
    if kind not in KINDS:
        raise DataError(f"annotate: kind must be one of {KINDS}, got {kind!r}")
    if len(text) > max_chars:
        text = text[:max_chars] + _TRUNCATED
    return (CODE_PROMPT if kind == "code" else PROSE_PROMPT).format(text=text)


# --------------------------------------------------------------------------------------------------------------
# parsing teacher answers


@dataclass(frozen=True)
class Annotation:
    score: int  # 0..5
    reason: str  # one line


# A score stated at the start of a line, after optional markdown and up to two words ("Educational score"):
# "Score: 4", "**Score:** 4/5", "score (0-5): 3", '"score": 4', "Final score is 4 out of 5".
_SCORE_RE = re.compile(
    r"""^[\W_]*(?:[a-z]+[ \t]+){0,2}?scores?\b[ \t]*(?:\([^)\n]*\))?[\s*_:='"]*(?:is[ \t]+|of[ \t]+)?"""
    r"""(-?\d+(?:\.\d+)?)(?:[ \t]*(?:/|out[ \t]+of)[ \t]*(\d+))?""",
    re.I | re.M,
)
_REASON_RE = re.compile(
    r"""^[\W_]*(?:reason|reasoning|justification|explanation)\b[\s*_:='"]*(.+)$""", re.I | re.M
)
_JSON_RE = re.compile(r"\{.*\}", re.S)


def parse_answer(answer: str) -> Annotation | None:
    """The teacher's score and reason, or None when the answer is malformed. Never raises.

    Accepts "Score: 4\\nReason: ...", markdown ("**Score:** 4/5"), a JSON object {"score": 4, "reason": ...}
    (fenced or not) and prefixed forms ("Educational score: 3"). Malformed: no score, a score outside 0..5,
    a score on another scale ("8/10"), several scores that disagree, and non-integers: "3.5" is not rounded,
    because a teacher that ignores the integer format is not trusted to be on our scale either.
    """
    if not isinstance(answer, str):
        return None
    scores, reason = [], ""
    if (js := _from_json(answer)) is not None:
        scores.append(_as_score(js.get("score")))
        reason = str(js.get("reason") or "")
    for m in _SCORE_RE.finditer(answer):
        other_scale = m.group(2) is not None and m.group(2) != "5"
        scores.append(None if other_scale else _as_score(m.group(1)))
    if not scores and (bare := re.fullmatch(r"\s*\**\s*(\d)\s*\**\s*", answer)):
        scores.append(_as_score(bare.group(1)))  # a bare "4" is unambiguous
    if not scores or None in scores or len(set(scores)) != 1:
        return None
    if not reason and (m := _REASON_RE.search(answer)):
        reason = m.group(1)
    return Annotation(scores[0], _one_line(reason.strip().strip("*\"',").strip()))


def _from_json(answer: str) -> dict | None:
    """The outermost {...} of the answer as a dict with lower-cased keys (synonyms folded), else None."""
    m = _JSON_RE.search(answer)
    if not m:
        return None
    try:
        obj = json.loads(m.group(0))
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    low = {str(k).lower().replace(" ", "_"): v for k, v in obj.items()}
    score = next((low[k] for k in ("score", "educational_score", "rating") if k in low), None)
    if score is None:
        return None
    reason = next((low[k] for k in ("reason", "justification", "explanation", "reasoning") if k in low), "")
    return {"score": score, "reason": reason}


def _as_score(v) -> int | None:
    """An integer in 0..5 from an int, an integral float or a numeric string; anything else is None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        try:
            v = int(v) if re.fullmatch(r"\s*-?\d+\s*", v) else float(v)
        except (ValueError, OverflowError):
            return None
    if isinstance(v, float):
        if not v.is_integer():
            return None
        v = int(v)
    return v if isinstance(v, int) and 0 <= v <= 5 else None


def _one_line(s: str, limit: int = 300) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _check_batch(texts: list[str], kinds: list[str]) -> None:
    if len(texts) != len(kinds):
        raise DataError(f"annotate: {len(texts)} texts but {len(kinds)} kinds")
    for k in kinds:
        if k not in KINDS:
            raise DataError(f"annotate: kind must be one of {KINDS}, got {k!r}")


# --------------------------------------------------------------------------------------------------------------
# heuristic annotator: no LLM needed


class HeuristicAnnotator:
    """Deterministic 0-5 scores from cheap signals; the offline default and a sanity baseline for a teacher.

    Code is read as Python (the phi-1 target language): anything that does not parse scores 0.
    """

    name = "heuristic-v1"

    def annotate(self, texts: list[str], kinds: list[str]) -> list[Annotation | None]:
        _check_batch(texts, kinds)
        return [score_code(t) if k == "code" else score_prose(t) for t, k in zip(texts, kinds, strict=True)]


def _ramp(x: float, lo: float, hi: float) -> float:
    """0 at lo, 1 at hi, linear in between (lo > hi ramps down)."""
    if lo == hi:
        return float(x >= hi)
    return min(1.0, max(0.0, (x - lo) / (hi - lo)))


def _to_score(quality: float, cap: int = 5) -> int:
    return min(cap, max(0, int(quality + 0.5)))  # round half up: Python's round() would bank to even


def _summary(values: dict[str, float], labels: dict[str, str], caps: list[str]) -> str:
    """'<caps>; good: <factors near 1>; weak: <factors near 0>', the factors named with their measurements."""
    good = [labels[k] for k, v in values.items() if v >= 0.8]
    weak = [labels[k] for k, v in values.items() if v < 0.5]
    parts = [
        ", ".join(caps),
        "good: " + ", ".join(good) if good else "",
        "weak: " + ", ".join(weak) if weak else "",
    ]
    return "; ".join(p for p in parts if p)


# Generated code announces itself in a header comment; protobuf modules also by their imports.
_GENERATED_RE = re.compile(r"generated by|do not edit|auto-?generated|@generated|code generated", re.I)
_PROTOBUF_RE = re.compile(r"_pb2\b|_sym_db\b|descriptor_pool|serialized_pb")
_SHORT_OK = {"_", "i", "j", "k"}  # loop indices are idiomatic, not a naming smell
_CODE_WEIGHTS = {"docs": 1.25, "comments": 1.0, "names": 1.0, "imports": 0.75, "size": 1.0}  # sums to 5


def score_code(text: str) -> Annotation:
    """The phi-1 question answered by heuristics: would a student learn from reading this file?"""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences etc. in third-party code
            tree = ast.parse(text.removeprefix("\ufeff"))  # a byte-order mark is encoding, not code
    except SyntaxError as e:
        return Annotation(0, f"syntax error at line {e.lineno}: does not parse as Python")
    except (ValueError, RecursionError, MemoryError):  # null bytes, absurd nesting
        return Annotation(0, "does not parse as Python")
    f = _code_features(text, tree)
    values = {
        "docs": f["doc_cov"],
        "comments": _ramp(f["explain"], 0.0, 0.25),
        "names": _ramp(f["names"], 0.5, 0.9),
        "imports": _ramp(f["imports"] - f["import_budget"], f["import_budget"] + 4, 0),
        "size": _ramp(f["lines"], 2, 10) if f["lines"] < 300 else _ramp(f["lines"], 1500, 300),
    }
    labels = {
        "docs": f"docstrings {f['doc_cov']:.0%}",
        "comments": f"explanation {f['explain']:.0%} of code",
        "names": f"descriptive names {f['names']:.0%}",
        "imports": f"{f['imports']:g} imports",
        "size": f"{f['lines']} lines",
    }
    caps, cap = [], 5
    for flag, limit, why in (
        (f["generated"], 0, "generated code"),
        (f["test"], 1, "test file"),
        (f["data"] > 0.5, 1, f"data literals {f['data']:.0%}"),
        (f["lines"] == 0, 0, "no code"),
        (0 < f["lines"] < 3, 1, "too short"),
    ):
        if flag:
            caps.append(why)
            cap = min(cap, limit)
    quality = sum(_CODE_WEIGHTS[k] * v for k, v in values.items())
    return Annotation(_to_score(quality, cap), _summary(values, labels, caps))


def _code_features(text: str, tree: ast.Module) -> dict:
    """Everything `score_code` weighs, from one walk over the tree and one pass over the lines."""
    nonblank = [ln.strip() for ln in text.splitlines() if ln.strip()]
    comments = sum(ln.startswith("#") and not ln.startswith(("#!", "# -*-")) for ln in nonblank)
    w = _walk(tree)
    code_lines = max(0, len(nonblank) - comments - w["doc_lines"])
    names = {n for n in w["names"] if n not in _SHORT_OK and not n.startswith("__")}
    header = "\n".join(ln for ln in nonblank[:40] if ln.startswith(("#", "//", "/*", "*")))
    defs, mod_doc = w["defs"], ast.get_docstring(tree, clean=False) is not None
    return {
        "lines": code_lines,
        "doc_cov": w["documented"] / defs if defs else (0.5 if mod_doc else 0.0),
        "explain": (comments + w["doc_lines"]) / max(code_lines, 1),
        "names": sum(len(n) >= 3 for n in names) / len(names) if names else 0.5,
        "imports": w["imports"],
        "import_budget": 2 + code_lines / 50,  # a long file may need more imports than a short one
        "generated": bool(_GENERATED_RE.search(header) or "DO NOT EDIT" in text or _PROTOBUF_RE.search(text)),
        "test": (w["tests"] >= 2 and w["tests"] >= defs / 2)
        or (w["asserts"] >= 3 and w["asserts"] >= 0.2 * w["stmts"]),
        "data": len(w["data_lines"]) / max(code_lines, 1),
    }


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_BODIES = (ast.Module, *_DEFS)
_LITERALS = (ast.List, ast.Tuple, ast.Set, ast.Dict, ast.Constant)


def _walk(tree: ast.Module) -> dict:
    """Counts over every node. One pass: ast.walk dominates the heuristic's run time."""
    w = dict.fromkeys(("defs", "documented", "tests", "asserts", "stmts", "imports", "doc_lines"), 0)
    names, data_lines, doc_ids = set(), set(), set()
    for node in ast.walk(tree):  # breadth first: a docstring's parent is seen before the docstring
        if isinstance(node, ast.expr):  # most nodes are expressions: handle them first and move on
            if isinstance(node, ast.Name):
                if isinstance(node.ctx, ast.Store):
                    names.add(node.id)
            elif isinstance(node, ast.Call):
                w["asserts"] += _is_assert_call(node)
            elif isinstance(node, _LITERALS) and _is_data_literal(node, doc_ids):
                data_lines.update(range(node.lineno, node.end_lineno + 1))
            continue
        w["stmts"] += isinstance(node, ast.stmt)
        if isinstance(node, _BODIES):
            doc = _docstring(node)
            if doc is not None:
                doc_ids.add(id(doc))
                w["doc_lines"] += doc.end_lineno - doc.lineno + 1
            if isinstance(node, _DEFS):
                w["defs"] += 1
                w["documented"] += doc is not None
                w["tests"] += node.name.startswith("test") and not isinstance(node, ast.ClassDef)
                names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            # relative imports tie the file to its package: a student cannot run it alone
            w["imports"] += len(node.names) * (2 if getattr(node, "level", 0) else 1)
        elif isinstance(node, ast.Assert):
            w["asserts"] += 1
    return w | {"names": names, "data_lines": data_lines}


def _docstring(node: ast.AST) -> ast.Constant | None:
    first = node.body[0] if node.body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        return first.value
    return None


def _is_assert_call(node: ast.Call) -> bool:
    """self.assertEqual(...), pytest.raises(...), np.testing.assert_allclose(...)."""
    fn = node.func
    name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
    return name.startswith(("assert", "fail")) or name == "raises"


def _is_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp):  # -1
        node = node.operand
    if isinstance(node, ast.Tuple | ast.List):
        return all(isinstance(e, ast.Constant) for e in node.elts)
    return isinstance(node, ast.Constant)


def _is_data_literal(node: ast.AST, doc_ids: set[int]) -> bool:
    """A table (16+ literal elements) or a long string that is not a docstring: data, not code to learn from."""
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        elts = node.elts
    elif isinstance(node, ast.Dict):
        elts = [k for k in node.keys if k is not None] + node.values
    elif isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
        return len(node.value) > 600 and id(node) not in doc_ids
    else:
        return False
    return len(elts) >= 16 and sum(map(_is_literal, elts)) >= 0.8 * len(elts)


# Words that explain rather than list: a cheap proxy for "teaches something".
_EXPLAIN_WORDS = frozenset(
    (  # noqa: SIM905 (a word list reads better as one string)
        "because therefore thus hence example instance means mean defined define definition called consider "
        "suppose explain explains reason result results step steps concept principle theorem formula equation "
        "process cause causes effect why how important"
    ).split()
)
_PROSE_WEIGHTS = {"length": 1.0, "sentences": 1.0, "letters": 1.0, "repeats": 1.0, "explains": 1.0}


def score_prose(text: str) -> Annotation:
    """Surface signals of readable, explanatory prose (no LLM): length, sentences, letters, repeats, cue words."""
    words = re.findall(r"[^\W\d_]+", text.lower())
    sentences = [s for s in re.split(r"[.!?]+(?:\s+|$)", text) if s.strip()]
    per_sentence = len(words) / max(len(sentences), 1)
    chars = re.sub(r"\s", "", text)
    letters = sum(c.isalpha() for c in chars) / max(len(chars), 1)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    repeated = 1 - len(set(lines)) / len(lines) if lines else 0.0
    cues = 100 * sum(w in _EXPLAIN_WORDS for w in words) / max(len(words), 1)
    values = {
        "length": _ramp(len(words), 20, 150) if len(words) < 5000 else 0.7,
        "sentences": _ramp(per_sentence, 3, 8) if per_sentence < 35 else _ramp(per_sentence, 80, 35),
        "letters": _ramp(letters, 0.6, 0.85),
        "repeats": _ramp(repeated, 0.3, 0.0),
        "explains": _ramp(cues, 0.0, 2.0),
    }
    labels = {
        "length": f"{len(words)} words",
        "sentences": f"~{per_sentence:.0f} words/sentence",
        "letters": f"{letters:.0%} letters",
        "repeats": f"{repeated:.0%} repeated lines",
        "explains": f"{cues:.1f} explanatory words/100",
    }
    caps = ["too short"] if len(words) < 20 else []
    quality = sum(_PROSE_WEIGHTS[k] * v for k, v in values.items())
    return Annotation(_to_score(quality, 1 if caps else 5), _summary(values, labels, caps))


# --------------------------------------------------------------------------------------------------------------
# teacher LLM


@dataclass
class TeacherConfig:
    url: str | None = None  # OpenAI-compatible base url, e.g. http://localhost:8000/v1; None: heuristic
    model: str = "gpt-4o-mini"
    api_key_env: str = "PHIFORGE_TEACHER_KEY"  # the name of the variable, never the key: configs get saved
    concurrency: int = 8  # requests in flight at once
    max_retries: int = 5  # per request, after the first attempt
    timeout: float = 60.0  # seconds per request
    backoff: float = 1.0  # first retry waits ~backoff s, then doubles (capped at _MAX_BACKOFF)
    cache_path: str | None = None  # sqlite file of raw answers; None: in memory, lost at exit


def make_annotator(cfg: TeacherConfig) -> HeuristicAnnotator | TeacherAnnotator:
    return TeacherAnnotator(cfg) if cfg.url else HeuristicAnnotator()


class ResponseCache:
    """Raw teacher answers in sqlite, keyed by sha256(model, prompt). Safe across threads and the processes
    of one machine (keep the file on a local disk).

    Every put is committed at once: an answer is paid for, so a crash must not lose it.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            # timeout: datatrove workers are processes that may share this file; wait for each other's writes
            self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
            # WAL + synchronous=NORMAL: a commit survives a crashed process without an fsync each (~50x faster
            # here, which matters with a fast local endpoint). WAL needs a local disk, not NFS.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL)"
            )
            self._db.commit()
        except sqlite3.Error as e:  # a directory, a file that is not sqlite, no permission
            raise DataError(f"teacher cache {self.path}: {e}") from e

    @staticmethod
    def key(model: str, prompt: str) -> str:
        return hashlib.sha256(f"{model}\0{prompt}".encode()).hexdigest()

    def get(self, model: str, prompt: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT answer FROM answers WHERE key = ?", (self.key(model, prompt),)
            ).fetchone()
        return row[0] if row else None

    def put(self, model: str, prompt: str, answer: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?)", (self.key(model, prompt), answer)
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class TeacherUnavailable(DataError):
    """The teacher endpoint kept failing after all retries; what was answered is cached, so re-run to resume."""


class _Transient(Exception):
    """A failed request worth retrying; the error is its __cause__."""


class _GaveUp(Exception):
    def __init__(self, attempts: int, last: BaseException | None):
        super().__init__(attempts, last)
        self.attempts, self.last = attempts, last


_MAX_BACKOFF = 60.0
STAT_KEYS = ("requests", "cached", "malformed", "retries", "ok")


def _backoff_delay(backoff: float, attempt: int) -> float:
    """Exponential, capped, with jitter so parallel requests that failed together do not retry together."""
    return min(backoff * 2**attempt, _MAX_BACKOFF) * random.uniform(0.5, 1.0)


def _describe(e: BaseException | None) -> str:
    return _one_line(f"{type(e).__name__}: {e}", 200) if e is not None else "no error recorded"


class TeacherAnnotator:
    """Scores documents by asking an LLM on an OpenAI-compatible endpoint, with a cache, retries and a bound
    on requests in flight.

    `stats` counts: requests (HTTP requests sent, retries included), retries, ok (answers received),
    cached (documents answered from the cache) and malformed (answers, fresh or cached, that did not parse).
    """

    def __init__(self, cfg: TeacherConfig):
        if not cfg.url:
            raise DataError("teacher: url is not set (url=None means the heuristic annotator)")
        if cfg.concurrency < 1 or cfg.max_retries < 0:
            raise DataError(
                f"teacher: need concurrency >= 1 and max_retries >= 0, got {cfg.concurrency}, {cfg.max_retries}"
            )
        self.cfg = cfg
        self.name = f"{cfg.model} @ {cfg.url}"
        self.cache = ResponseCache(cfg.cache_path or ":memory:")
        self.stats: Counter = Counter(dict.fromkeys(STAT_KEYS, 0))
        self._stats_lock = threading.Lock()
        self._stop = threading.Event()  # set once a request failed for good: the batch fails, send no more
        from openai import OpenAI  # imported here: the heuristic path should not pay a second for it

        # max_retries=0: retries are ours, so they are counted and the give-up message can say how many
        api_key = os.environ.get(cfg.api_key_env, "none")
        self._client = OpenAI(base_url=cfg.url, api_key=api_key, timeout=cfg.timeout, max_retries=0)

    def annotate(self, texts: list[str], kinds: list[str]) -> list[Annotation | None]:
        _check_batch(texts, kinds)
        prompts = [build_prompt(t, k) for t, k in zip(texts, kinds, strict=True)]
        answers = {}
        for p in dict.fromkeys(prompts):  # unique prompts, in order: duplicates cost one request
            if (hit := self.cache.get(self.cfg.model, p)) is not None:
                answers[p] = hit
        self._count("cached", sum(p in answers for p in prompts))
        answers.update(self._fetch([p for p in dict.fromkeys(prompts) if p not in answers]))
        return [self._parse(answers[p]) for p in prompts]

    def close(self) -> None:
        self._client.close()
        self.cache.close()

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:  # Counter += is a read-modify-write; worker threads race on it
            self.stats[key] += n

    def _parse(self, answer: str) -> Annotation | None:
        ann = parse_answer(answer)
        if ann is None:
            self._count("malformed")
        return ann

    def _fetch(self, prompts: list[str]) -> dict[str, str]:
        """Ask for every prompt, at most cfg.concurrency at a time; answers are cached as they arrive."""
        if not prompts:
            return {}
        out = {}
        self._stop.clear()
        pool = ThreadPoolExecutor(max_workers=min(self.cfg.concurrency, len(prompts)))
        futures = {pool.submit(self._ask_or_skip, p): p for p in prompts}
        try:
            for fut in as_completed(futures):
                if (answer := fut.result()) is not None:
                    out[futures[fut]] = answer
        except _GaveUp as e:
            pool.shutdown(wait=True, cancel_futures=True)  # requests in flight finish and land in the cache
            raise TeacherUnavailable(self._gave_up_message(e)) from e.last
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return out

    def _gave_up_message(self, e: _GaveUp) -> str:
        cfg = self.cfg
        return (
            f"teacher {cfg.url} (model {cfg.model}) failed after {e.attempts} attempts, last error {_describe(e.last)}; "
            f"re-run to resume: {len(self.cache)} answers are cached at {self.cache.path}"
        )

    def _ask_or_skip(self, prompt: str) -> str | None:
        """The answer, or None when another request already failed for good (the batch fails anyway)."""
        if self._stop.is_set():
            return None
        try:
            return self._ask(prompt)
        except BaseException:
            self._stop.set()  # here, not in _fetch: this worker thread may pick up the next prompt right away
            raise

    def _ask(self, prompt: str) -> str | None:
        """One answer, retrying what may heal (connection errors, timeouts, 429, 5xx) with backoff."""
        cfg, last = self.cfg, None
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                if self._stop.is_set():
                    return None
                self._count("retries")
                time.sleep(_backoff_delay(cfg.backoff, attempt - 1))
            self._count("requests")
            try:
                answer = self._request(prompt)
            except _Transient as e:
                last = e.__cause__
                continue
            self._count("ok")
            # malformed answers are cached too: they were paid for, and at temperature 0 they would repeat
            self.cache.put(cfg.model, prompt, answer)
            return answer
        raise _GaveUp(cfg.max_retries + 1, last)

    def _request(self, prompt: str) -> str:
        """One HTTP request: the answer text; _Transient for what a retry may heal, DataError for what it won't."""
        import openai

        url = self.cfg.url
        try:
            resp = self._client.chat.completions.create(
                model=self.cfg.model,
                messages=[{"role": "user", "content": prompt}],
                temperature=0,
                max_tokens=96,
            )
        except openai.APIStatusError as e:
            if e.status_code == 429 or e.status_code >= 500:
                raise _Transient from e
            # another 4xx: a bad key, model name or path; the same request would fail the same way
            raise DataError(
                f"teacher {url} answered HTTP {e.status_code} (not retried): {_describe(e)}"
            ) from e
        except openai.APIConnectionError as e:  # APITimeoutError included
            raise _Transient from e
        except ValueError as e:  # a 200 whose body is not JSON
            raise DataError(f"teacher {url} answered with a body that is not JSON: {_describe(e)}") from e
        if getattr(resp, "choices", None) is None:  # an HTML page, or JSON from some other API
            raise DataError(
                f"teacher {url} answered with something that is not a chat completion: {_one_line(resp, 120)}"
            )
        return (resp.choices[0].message.content if resp.choices else None) or ""


# --------------------------------------------------------------------------------------------------------------
# datatrove step


def doc_kind(metadata: dict) -> str:
    """'prose' for documents whose metadata kind is prose/text, else 'code'."""
    return "prose" if str(metadata.get("kind", "")).strip().lower() in {"prose", "text"} else "code"


class AnnotateStep(PipelineStep):
    """Adds teacher_score (int 0..5), teacher_reason and teacher (annotator name) to each document's metadata.

    Documents whose answer is malformed are dropped (stat "malformed"). The annotator is built inside `run`,
    not here: datatrove pickles steps into worker processes, and clients, locks and sqlite handles do not pickle.
    Each worker process has its own client, so up to workers x teacher.concurrency requests are in flight.
    If the teacher goes down the task fails with TeacherUnavailable; re-running the executor redoes only the
    unfinished tasks, and their answers so far come from the cache.
    """

    name = "annotate"
    type = "📝 - ANNOTATE"

    def __init__(self, teacher: TeacherConfig, batch_size: int = 64):
        super().__init__()
        if batch_size < 1:
            raise DataError(f"annotate: batch_size must be >= 1, got {batch_size}")
        self.teacher = teacher
        self.batch_size = batch_size

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        annotator = make_annotator(self.teacher)
        try:
            for batch in batched(data or [], self.batch_size):
                self.stat_update("batches")
                with self.track_time("batch"):
                    results = annotator.annotate(
                        [d.text for d in batch], [doc_kind(d.metadata) for d in batch]
                    )
                for doc, ann in zip(batch, results, strict=True):
                    self.stat_update(StatHints.total)
                    if ann is None:
                        self.stat_update("malformed", StatHints.dropped)
                        continue
                    doc.metadata.update(
                        teacher_score=ann.score, teacher_reason=ann.reason, teacher=annotator.name
                    )
                    self.stat_update(StatHints.forwarded, f"score_{ann.score}")
                    self.update_doc_stats(doc)
                    yield doc
        finally:
            self._close(annotator)

    def _close(self, annotator) -> None:
        """Fold the teacher's request counters into this step's stats, then release its client and cache."""
        for key, n in getattr(annotator, "stats", {}).items():
            if n and key != "malformed":  # malformed is already counted per document above
                self.stat_update(f"teacher_{key}", value=n, unit="task")
        if hasattr(annotator, "close"):
            annotator.close()
