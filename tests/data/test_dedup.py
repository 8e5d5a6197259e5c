import argparse
import calendar
import configparser
import copy
import csv
import difflib
import gzip
import heapq
import inspect
import json
import json.encoder
import pickle
import random
import re
import shutil
import string
import textwrap
import time

import pytest
from datatrove.pipeline.dedup import MinhashDedupSignature

from phiforge.data import DataError
from phiforge.data.dedup import CodeWordTokenizer, DedupConfig, dedup_stages, run_dedup

# Real stdlib code, long enough that one small edit keeps Jaccard high. All pure Python on 3.10-3.13.
DISTINCT = [
    textwrap.TextWrapper._wrap_chunks,
    difflib.SequenceMatcher.get_opcodes,
    heapq.nsmallest,
    heapq.merge,
    csv.Sniffer._guess_quote_and_delimiter,
    copy.deepcopy,
    calendar.TextCalendar.formatmonth,
    string.Template.substitute,
    configparser.RawConfigParser._read,
    difflib.unified_diff,
    argparse.HelpFormatter._format_usage,
    textwrap.dedent,
]
RENAMED = difflib.SequenceMatcher.find_longest_match
RECOMMENTED = random.Random.sample
APPENDED = json.encoder._make_iterencode
COPIED = shutil.which
PROSE = (
    "The quick brown fox jumps over the lazy dog. A deduplication stage should keep prose it has not seen "
    "before, even when it shares common words with other documents in the corpus."
)


def _src(f) -> str:
    return textwrap.dedent(inspect.getsource(f))


def _near_copies() -> dict[str, tuple[str, str]]:
    """name -> (original, edited) for the three kinds of near copy."""
    renamed = _src(RENAMED)
    recommented = _src(RECOMMENTED)
    appended = _src(APPENDED)
    edited_renamed = re.sub(r"\bbesti\b", "best_start", renamed)
    # reword the first two comments
    edited_comment = re.sub(
        r"#[^\n]*", "# reworded: what this part of the sampler does", recommented, count=2
    )
    edited_appended = appended + "\n\ndef _unused_helper(x):\n    y = x * 2\n    return y + 1\n"
    assert edited_renamed != renamed and edited_comment != recommented
    return {
        "renamed": (renamed, edited_renamed),
        "recommented": (recommented, edited_comment),
        "appended": (appended, edited_appended),
    }


def _docs() -> list[dict]:
    docs = [
        {"id": f"distinct/{f.__qualname__}", "text": _src(f), "metadata": {"kind": "distinct"}}
        for f in DISTINCT
    ]
    docs.append({"id": "distinct/prose", "text": PROSE, "metadata": {"kind": "distinct"}})
    for name, (orig, edited) in _near_copies().items():
        docs.append({"id": f"near/{name}/orig", "text": orig, "metadata": {"kind": "near", "group": name}})
        docs.append({"id": f"near/{name}/copy", "text": edited, "metadata": {"kind": "near", "group": name}})
    which = _src(COPIED)
    crlf = "\r\n".join(line + "  " for line in which.splitlines())  # same file after a Windows checkout
    for i, text in enumerate([which, which, crlf]):
        docs.append({"id": f"exact/{i}", "text": text, "metadata": {"kind": "exact", "group": "which"}})
    return docs


def _write(docs: list[dict], folder, files: int = 3) -> None:
    folder.mkdir(parents=True)
    for i in range(files):  # copies spread over files, so duplicates are found across tasks
        with gzip.open(folder / f"part{i}.jsonl.gz", "wt") as f:
            for d in docs[i::files]:
                f.write(json.dumps(d) + "\n")


def _read(folder) -> list[dict]:
    rows = []
    for p in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(p, "rt") as f:
            rows += [json.loads(line) for line in f]
    return rows


def _jaccard(a: str, b: str, cfg: DedupConfig) -> float:
    sig = MinhashDedupSignature("/nonexistent", cfg.minhash_config(), language=CodeWordTokenizer())
    sa, sb = (set(sig.get_shingles(t).ravel().tolist()) for t in (a, b))
    return len(sa & sb) / len(sa | sb)


@pytest.fixture(scope="module")
def deduped(tmp_path_factory):
    root = tmp_path_factory.mktemp("dedup")
    docs = _docs()
    _write(docs, root / "in")
    t0 = time.perf_counter()
    stats = run_dedup(root / "in", root / "out", root / "work", DedupConfig(), tasks=2, workers=2)
    return root, docs, stats, time.perf_counter() - t0


def test_tokenizer_splits_code_and_prose():
    tok = CodeWordTokenizer()
    assert tok.word_tokenize("if x != foo_bar(a, 3.5):  # 日本") == [
        "if", "x", "!=", "foo_bar", "(", "a", ",", "3", ".", "5", "):", "#", "日", "本",
    ]  # fmt: skip
    text = "First sentence. Second one!\n\nx = a.b(c)\n  y = 2  \nlast"
    spans = tok.span_tokenize(text)
    assert [text[a:b] for a, b in spans] == tok.sent_tokenize(text)
    assert tok.sent_tokenize(text) == ["First sentence.", "Second one!", "x = a.b(c)", "y = 2", "last"]
    # LocalPipelineExecutor pickles the pipeline (and this tokenizer inside MinhashDedupSignature)
    assert pickle.loads(pickle.dumps(tok)).word_tokenize("a+=1") == ["a", "+=", "1"]


def test_near_copies_are_near(deduped):
    # guards the test itself: each edit keeps Jaccard high enough that LSH finds it with P > 0.999
    cfg = DedupConfig()
    for name, (orig, edited) in _near_copies().items():
        assert _jaccard(orig, edited, cfg) > 0.88, name
    # and distinct documents really are distinct
    texts = [_src(f) for f in DISTINCT]
    assert max(_jaccard(a, b, cfg) for i, a in enumerate(texts) for b in texts[i + 1 :]) < 0.3


def test_exact_and_near_duplicates_removed(deduped):
    root, docs, stats, _ = deduped
    out = _read(root / "out")
    ids = [d["id"] for d in out]
    assert len(ids) == len(set(ids))
    # every distinct document survives
    assert {d["id"] for d in docs if d["metadata"]["kind"] == "distinct"} <= set(ids)
    # exactly one of the three exact copies (one with CRLF + trailing spaces) and one of each near pair
    assert sum(i.startswith("exact/") for i in ids) == 1
    for name in ("renamed", "recommented", "appended"):
        assert sum(i.startswith(f"near/{name}/") for i in ids) == 1, name
    n = len(docs)
    assert stats == {
        "docs_in": n,
        "exact_duplicates": 2,
        "near_duplicates": 3,
        "docs_out": n - 5,
        "duplicate_rate": round(5 / n, 6),
    }
    # removed documents are kept for inspection
    assert len(_read(root / "work" / "removed" / "exact")) == 2
    assert {d["id"].split("/")[1] for d in _read(root / "work" / "removed" / "near")} == {
        "renamed",
        "recommented",
        "appended",
    }


def test_output_keeps_text_and_metadata(deduped):
    root, docs, _, _ = deduped
    by_id = {d["id"]: d for d in docs}
    for d in _read(root / "out"):
        src = by_id[d["id"]]
        assert d["text"] == src["text"]
        # datatrove's exact filter adds how many copies it dropped; everything else is as it came in
        assert d["metadata"].pop("duplicate_count") == (2 if d["id"].startswith("exact/") else 0)
        assert d["metadata"] == src["metadata"]


def test_rerun_skips_completed_stages(deduped):
    root, _, stats, first_seconds = deduped
    names = [name for name, _, _ in dedup_stages(root / "in", root / "out", root / "work")]
    assert names == [
        "exact_signatures",
        "exact_find",
        "minhash_signatures",
        "minhash_buckets",
        "minhash_cluster",
        "filter",
    ]
    for name, _, tasks in dedup_stages(root / "in", root / "out", root / "work"):
        assert len(list((root / "work" / "logs" / name / "completions").iterdir())) == tasks, name
    outputs = sorted((root / "out").glob("*.jsonl.gz"))
    mtimes = [p.stat().st_mtime_ns for p in outputs]
    t0 = time.perf_counter()
    assert run_dedup(root / "in", root / "out", root / "work", DedupConfig(), tasks=2, workers=2) == stats
    assert time.perf_counter() - t0 < first_seconds
    assert [p.stat().st_mtime_ns for p in outputs] == mtimes  # nothing rewritten


def test_work_dir_settings_guard(deduped):
    root, _, _, _ = deduped
    with pytest.raises(DataError, match="n_grams=5"):
        run_dedup(root / "in", root / "out", root / "work", DedupConfig(n_grams=7), tasks=2, workers=2)


def test_exact_only_and_bad_input(tmp_path):
    docs = _docs()
    _write(docs, tmp_path / "in")
    stats = run_dedup(tmp_path / "in", tmp_path / "out", tmp_path / "work", DedupConfig(minhash=False), 2, 2)
    assert (stats["exact_duplicates"], stats["near_duplicates"], stats["docs_out"]) == (2, 0, len(docs) - 2)
    with pytest.raises(DataError, match="no .jsonl"):
        run_dedup(tmp_path / "missing", tmp_path / "out2", tmp_path / "work2")
