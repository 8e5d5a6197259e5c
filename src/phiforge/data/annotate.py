"""Teacher labels: the educational value (0-5) of a sample of documents, for the quality classifier to learn.

Two annotators share one interface, `annotate(texts, kinds) -> list[Annotation | None]`:

- `HeuristicAnnotator`: offline and deterministic, so the whole pipeline runs with no LLM. For code it reads
  the `ast` (docstrings, comments, names, size, imports, generated/test/data markers); for prose it uses
  a few surface signals.
- `TeacherAnnotator`: an LLM asked the phi-1 question for code and a FineWeb-Edu style additive rubric for
  prose, through the one client (`phiforge.teacher`: endpoints or an in-process engine, cache, retries).
  Its answer is read as text ("Score: 4"), or, for a small model that ignores the format, as probabilities:
  G-Eval's digit-weighted score after "Score:", or Ask-LLM's P(yes) to "is this good for teaching?".

`AnnotateStep` wraps either one as a datatrove pipeline step that writes `teacher_score`, `teacher_reason`
and `teacher` into each document's metadata and drops documents whose answer could not be used.
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import re
import warnings
from dataclasses import dataclass

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.batching import batched
from datatrove.utils.typeshelper import StatHints

from ..teacher import Answer, Client, LocalClient, Request, TeacherError, TokenLogprob
from . import DataError

# --------------------------------------------------------------------------------------------------------------
# prompts

_ANSWER_FORMAT = """Answer with exactly two lines and nothing else:
Score: <an integer from 0 to 5>
Reason: <one line>"""

# The phi-1 criterion ("Textbooks Are All You Need"): would this teach a student who is learning to program?
CODE_RUBRIC = """Below is a code file. Judge its educational value for a student learning to program: would studying it
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

# FineWeb-Edu's additive rubric: each point is earned on top of the previous ones, which makes the teacher's
# scores more consistent than asking for one number directly.
PROSE_RUBRIC = """Below is an extract from a web page. Judge whether it has high educational value and could be useful in
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

# What each method asks after the rubric: text parses two lines; geval reads the digit after the prefill
# "Score:"; askllm reads yes/no after "Answer:" (Ask-LLM's question, with the rubric as its definition of good).
_ASK = {
    "text": _ANSWER_FORMAT,
    "geval": 'Answer with the score only: one digit from 0 to 5, after "Score:".',
    "askllm": {
        "code": "Is this code good for teaching a student to code? Answer yes or no.",
        "prose": "Is this extract good for teaching a student at school? Answer yes or no.",
    },
}
CODE_PROMPT = CODE_RUBRIC + _ANSWER_FORMAT
PROSE_PROMPT = PROSE_RUBRIC + _ANSWER_FORMAT

KINDS = ("code", "prose")
_TRUNCATED = "\n[... truncated ...]"


def build_prompt(text: str, kind: str, max_chars: int = 6000, method: str = "text") -> str:
    """The teacher prompt for one document; text beyond `max_chars` is cut (and marked, so the teacher knows)."""
    if kind not in KINDS:
        raise DataError(f"annotate: kind must be one of {KINDS}, got {kind!r}")
    if len(text) > max_chars:
        text = text[:max_chars] + _TRUNCATED
    ask = _ASK[method] if method != "askllm" else _ASK[method][kind]
    return (CODE_RUBRIC if kind == "code" else PROSE_RUBRIC).format(text=text) + ask


# --------------------------------------------------------------------------------------------------------------
# parsing teacher answers


@dataclass(frozen=True)
class Annotation:
    score: int | float  # 0..5: an integer from a text answer or the heuristic, a mean from probabilities
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
# teacher LLM: the rubric asked through the one client (phiforge.teacher), read as text or as probabilities

METHODS = ("text", "geval", "askllm")


@dataclass
class TeacherConfig:
    url: str | None = None  # OpenAI-compatible base url, e.g. http://localhost:8000/v1; None: heuristic
    model: str = "gpt-4o-mini"
    api_key_env: str = "PHIFORGE_TEACHER_KEY"  # the name of the variable, never the key: configs get saved
    concurrency: int = 32  # requests in flight at once
    max_retries: int = 5  # per request, after the first attempt
    timeout: float = 60.0  # seconds per request
    backoff: float = 1.0  # first retry waits ~backoff s, then doubles
    cache_path: str | None = None  # sqlite file of answers; None: in memory, lost at exit
    # text: parse "Score: n" from the answer; geval: the probability-weighted digit after "Score:";
    # askllm: P(yes) to "is this good for teaching?". A small instruct model that ignores the answer format
    # still has usable probabilities.
    method: str = "text"
    local: str | None = None  # a model directory run in this process as the teacher (instead of url)

    def __post_init__(self):
        if self.method not in METHODS:
            raise DataError(f"teacher: method must be one of {', '.join(METHODS)}, got {self.method!r}")


def make_annotator(cfg: TeacherConfig) -> HeuristicAnnotator | TeacherAnnotator:
    if cfg.local:
        return TeacherAnnotator(cfg, make_client(cfg))
    return TeacherAnnotator(cfg) if cfg.url else HeuristicAnnotator()


def make_client(cfg: TeacherConfig) -> Client | LocalClient:
    """The client a teacher config names: the in-process model (`local`) or the endpoint (`url`)."""
    if cfg.local:
        import torch

        from ..infer.engine import Engine  # loaded in each worker process: an engine does not pickle

        # fp32 (a GGUF's quantized blocks dequantized): a teacher reads long prompts, and prefill runs
        # dequantize + matmul anyway, so int4 only adds the dequantizing (2.5x slower prefill, measured)
        engine = Engine.load(cfg.local, dtype=torch.float32)
        return LocalClient(engine, model=cfg.local, cache_path=cfg.cache_path)
    if not cfg.url:
        raise DataError("teacher: neither url nor local is set")
    try:
        return Client(
            cfg.url, cfg.model, api_key_env=cfg.api_key_env, concurrency=cfg.concurrency,
            max_retries=cfg.max_retries, timeout=cfg.timeout, backoff=cfg.backoff, cache_path=cfg.cache_path,
        )  # fmt: skip
    except TeacherError as e:
        raise DataError(str(e)) from e


class TeacherUnavailable(DataError):
    """The teacher endpoint kept failing after all retries; what was answered is cached, so re-run to resume."""


_DIGITS = {str(d): d for d in range(6)}
_MIN_MASS = 0.5  # a position is read when at least half its probability is on the answer tokens


def _norm(token: str) -> str:
    """' Yes', 'yes.', '▁4', 'Ġ4' -> 'yes', '4': the forms one answer word takes in different vocabularies."""
    return token.replace("▁", " ").replace("Ġ", " ").strip().strip(".,:;!*\"'").lower()


def _answer_mass(pos: TokenLogprob, words: dict[str, object]) -> dict[object, float]:
    """Probability on each answer word at one position, summed over its token forms (' 4' and '4')."""
    mass: dict[object, float] = {}
    for tok, lp in dict(((pos.token, pos.logprob), *pos.top)).items():
        if (w := words.get(_norm(tok))) is not None:
            mass[w] = mass.get(w, 0.0) + math.exp(lp)
    return mass


def _first_answer(tokens: list[TokenLogprob], words: dict[str, object]) -> dict[object, float] | None:
    """The answer words' probabilities at the first position that puts most of its mass on them.
    Scanning (not only position 0) keeps a server that ignores the prefill usable: "Score: 4"."""
    for pos in tokens:
        mass = _answer_mass(pos, words)
        if sum(mass.values()) >= _MIN_MASS:
            return mass
    return None


def geval_score(tokens: list[TokenLogprob]) -> float | None:
    """G-Eval: the probability-weighted mean of the digits 0-5 where the score is written; None if nowhere."""
    mass = _first_answer(tokens, _DIGITS)
    return None if mass is None else sum(d * p for d, p in mass.items()) / sum(mass.values())


def askllm_score(tokens: list[TokenLogprob]) -> float | None:
    """Ask-LLM: P(yes) / (P(yes) + P(no)) where the model answers; None if it never does."""
    mass = _first_answer(tokens, {"yes": True, "no": False})
    return None if mass is None else mass.get(True, 0.0) / sum(mass.values())


def teacher_request(text: str, kind: str, method: str) -> Request:
    """The request for one document: the rubric plus what each method reads."""
    if method == "text":
        return Request(build_prompt(text, kind), max_tokens=96)
    prompt = build_prompt(text, kind, method=method)
    prefill = "Score:" if method == "geval" else "Answer:"
    # a few tokens, not one: if the server ignores the prefill the answer word still comes early
    return Request(prompt, max_tokens=8, logprobs=True, top_logprobs=20, prefill=prefill)


def read_answer(answer: Answer, method: str) -> Annotation | None:
    """The annotation in one answer, or None when it cannot be used."""
    if method == "text":
        return parse_answer(answer.text)
    tokens = (answer.logprobs or [[]])[0]
    if method == "geval":
        s = geval_score(tokens)
        return None if s is None else Annotation(round(s, 3), f"geval: digit-weighted score {s:.2f}")
    p = askllm_score(tokens)
    return None if p is None else Annotation(round(5 * p, 3), f"askllm: P(yes) = {p:.3f}")


class TeacherAnnotator:
    """Scores documents with an LLM through `phiforge.teacher` (endpoint or in-process `client`).

    `stats` is the client's funnel (cached, asked, answered, retried, failed) plus malformed (answers, fresh
    or cached, that could not be used). `answers` holds the last batch's raw answer texts.
    """

    def __init__(self, cfg: TeacherConfig, client: Client | LocalClient | None = None):
        if client is None and not cfg.url:
            raise DataError("teacher: url is not set (url=None means the heuristic annotator)")
        self.cfg = cfg
        self.client = client or make_client(cfg)
        self.name = self.client.name + ("" if cfg.method == "text" else f" ({cfg.method})")
        self.malformed = 0
        self.answers: list[str] = []

    @property
    def stats(self) -> dict:
        return {**self.client.stats, "malformed": self.malformed}

    @property
    def cache(self):
        return self.client.cache

    def annotate(self, texts: list[str], kinds: list[str]) -> list[Annotation | None]:
        _check_batch(texts, kinds)
        reqs = [teacher_request(t, k, self.cfg.method) for t, k in zip(texts, kinds, strict=True)]
        answers = self.client.ask(reqs)
        if failed := [a for a in answers if not a.ok]:
            self._raise(failed)
        self.answers = [a.text for a in answers]
        out = [read_answer(a, self.cfg.method) for a in answers]
        self.malformed += sum(a is None for a in out)
        return out

    def _raise(self, failed: list[Answer]) -> None:
        """A failed request fails the batch: the task is redone on a re-run, its answers so far from the cache."""
        if hard := [a for a in failed if not a.retryable]:  # a re-run would fail the same way
            raise DataError(hard[0].error)
        first = next((a for a in failed if not a.error.startswith("not sent")), failed[0])
        cache = self.client.cache
        raise TeacherUnavailable(
            f"{first.error}; re-run to resume: {len(cache)} answers are cached at {cache.path}"
        )

    def close(self) -> None:
        self.client.close()


# --------------------------------------------------------------------------------------------------------------
# datatrove step


def doc_kind(metadata: dict) -> str:
    """'prose' for documents whose metadata kind is prose/text, else 'code'."""
    return "prose" if str(metadata.get("kind", "")).strip().lower() in {"prose", "text"} else "code"


class AnnotateStep(PipelineStep):
    """Adds teacher_score (0..5), teacher_reason and teacher (annotator name) to each document's metadata.

    Documents whose answer cannot be used are dropped (stat "malformed"); with `rejects` (a datatrove
    writer) they are written there with the raw answer in metadata.teacher_answer, to see what went wrong.
    The annotator is built inside `run`, not here: datatrove pickles steps into worker processes, and
    clients, locks and sqlite handles do not pickle. Each worker process has its own client, so up to
    workers x teacher.concurrency requests are in flight. If the teacher goes down the task fails with
    TeacherUnavailable; re-running the executor redoes only the unfinished tasks, their answers so far
    from the cache.
    """

    name = "annotate"
    type = "📝 - ANNOTATE"

    def __init__(self, teacher: TeacherConfig, batch_size: int = 64, rejects=None):
        super().__init__()
        if batch_size < 1:
            raise DataError(f"annotate: batch_size must be >= 1, got {batch_size}")
        self.teacher = teacher
        self.batch_size = batch_size
        self.rejects = rejects

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        annotator = make_annotator(self.teacher)
        try:
            with self.rejects or contextlib.nullcontext() as rejects:
                for batch in batched(data or [], self.batch_size):
                    self.stat_update("batches")
                    with self.track_time("batch"):
                        results = annotator.annotate(
                            [d.text for d in batch], [doc_kind(d.metadata) for d in batch]
                        )
                    raw = getattr(annotator, "answers", None)
                    for i, (doc, ann) in enumerate(zip(batch, results, strict=True)):
                        self.stat_update(StatHints.total)
                        if ann is None:
                            self.stat_update("malformed", StatHints.dropped)
                            if rejects is not None:
                                doc.metadata["teacher_answer"] = raw[i] if raw else ""
                                rejects.write(doc, rank)
                            continue
                        doc.metadata.update(
                            teacher_score=ann.score, teacher_reason=ann.reason, teacher=annotator.name
                        )
                        self.stat_update(StatHints.forwarded, f"score_{int(ann.score + 0.5)}")
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
