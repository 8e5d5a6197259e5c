"""Deduplication: exact copies, then near copies (MinHash LSH), with datatrove's own dedup stages.

Stages (each a datatrove pipeline with its own logging dir, so a re-run skips finished tasks):

    exact_signatures   read -> ExactDedupSignature             (tasks)   hash of each document's text
    exact_find         ExactFindDedups                         (1)       merge-sort the hashes, list the copies
    minhash_signatures read -> exact filter -> MinhashDedupSignature (tasks)
    minhash_buckets    MinhashDedupBuckets                     (num_buckets)  same band signature = candidate pair
    minhash_cluster    MinhashDedupCluster                     (1)       union-find, keep one doc per cluster
    filter             read -> exact filter -> MinhashDedupFilter -> JsonlWriter (tasks)

The exact filter is applied on the fly wherever the corpus is read (it only needs the list of copies), so the
corpus is never written out in between: both filters see the same documents in the same order, which is what
datatrove's index-based filters need (they refer to documents by their position in a task's input).

Every stage is a plain list of datatrove steps, so the same stages run on a cluster (see `dedup_stages`).
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import regex
from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup import MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.text import TextNormConfig
from datatrove.utils.word_tokenizers import WordTokenizer

from ..stages import SettingsMismatch, Stages
from . import DataError
from .stage import run_pipeline

# sha1, not datatrove's default xxhash: xxhash is an optional datatrove extra (not installed here), sha1 only
# needs hashlib. Shingling measured ~2 us per shingle with sha1, most of it Python call/join overhead.
HASH = HashConfig(precision=64, hash_fc="sha1")

# CJK/kana have no spaces between words: one character per token keeps shingles meaningful there.
_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}"
# identifiers/words/numbers | one CJK character | a run of operators/punctuation ("==", "):", "**")
_WORD = regex.compile(rf"[^\W{_CJK}]+|[{_CJK}]|[^\w\s]+")
# a sentence ends at terminal punctuation followed by whitespace (so `a.b` is not a boundary) or at a newline:
# for code every line is a "sentence", for prose it is the usual rule
_SENT_END = regex.compile(r"[.!?。！？]+(?=\s|$)|\n")


class CodeWordTokenizer(WordTokenizer):
    """Language-agnostic word tokenizer for code and prose, no nltk/spacy needed.

    Tokens are identifiers/words/numbers, single CJK characters, and runs of punctuation/operators. Keeping
    operators as tokens matters for code: `a = b(c)` and `a == b[c]` must not give the same shingles, and the
    extra tokens dilute small edits (a renamed variable touches fewer shingles in proportion).
    """

    def __init__(self):
        super().__init__("code")

    def word_tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans, start = [], 0
        for m in _SENT_END.finditer(text):
            _add_span(spans, text, start, m.end())
            start = m.end()
        _add_span(spans, text, start, len(text))
        return spans

    def sent_tokenize(self, text: str) -> list[str]:
        return [text[a:b] for a, b in self.span_tokenize(text)]


def _add_span(spans: list, text: str, a: int, b: int) -> None:
    seg = text[a:b]
    a, b = a + len(seg) - len(seg.lstrip()), b - (len(seg) - len(seg.rstrip()))
    if b > a:
        spans.append((a, b))


@dataclass
class DedupConfig:
    exact: bool = True
    minhash: bool = True
    # 5 tokens of CodeWordTokenizer (operators count) is about one short statement: small enough that an edit
    # only disturbs a few shingles, large enough that shingles are not shared by unrelated code.
    n_grams: int = 5
    # 20 bands x 10 rows (200 hashes): documents with Jaccard >= ~0.74 ((1/20)^(1/10)) become candidates;
    # P(found) is 0.99 at J=0.85, 0.90 at 0.8, 0.43 at 0.7, 0.11 at 0.6, 0.02 at 0.5. LSH pairs are removed
    # without a verification pass, so the curve must be steep: on 5000 stdlib functions datatrove's 14x8 removed
    # 248 docs, 16 of them with no other doc above J=0.6 (template siblings like Decimal.add/subtract); 20x10
    # removes 213 with 4 such, and still catches every J>=0.85 copy.
    num_buckets: int = 20
    hashes_per_bucket: int = 10
    seed: int = 1
    save_removed: bool = True  # write removed documents to <work_dir>/removed/{exact,near}

    def minhash_config(self) -> MinhashConfig:
        # datatrove's default normalization strips punctuation before tokenizing; for code the operators are
        # part of the meaning, so keep them. Lowercase + numbers -> 0 + whitespace folding stay. Diacritic
        # folding is off: it walks the text one character at a time in Python (measured 6% of signature time)
        # for nothing on code.
        norm = TextNormConfig(remove_punctuation=False, norm_unicode_diacritics=False)
        return MinhashConfig(
            n_grams=self.n_grams,
            num_buckets=self.num_buckets,
            hashes_per_bucket=self.hashes_per_bucket,
            seed=self.seed,
            norm_config=norm,
            hash_config=HASH,
        )


def exact_key(doc: Document) -> str:
    """What counts as "the same document": the text up to line endings and trailing whitespace per line.

    Those differ between copies of the same file (CRLF checkouts, editors) and mean nothing; indentation and
    everything else is kept.
    """
    return "\n".join(line.rstrip() for line in doc.text.strip().splitlines())


def _join(base, *parts: str) -> str:
    # plain string joins so work_dir may also be a remote URL (s3://...) on a cluster
    return "/".join([str(base).rstrip("/"), *parts])


def dedup_stages(
    input_dir, output_dir, work_dir, cfg: DedupConfig = DedupConfig(), tasks: int = 2
) -> list[tuple[str, list[PipelineStep], int]]:
    """The dedup stages as (name, pipeline, number of tasks), to be run in order.

    `run_dedup` runs them with LocalPipelineExecutor. On a cluster, chain them with `depends=`:

        from datatrove.executor.slurm import SlurmPipelineExecutor
        prev = None
        for name, pipeline, n in dedup_stages("s3://b/filtered", "s3://b/deduped", "s3://b/dedup", tasks=500):
            prev = SlurmPipelineExecutor(pipeline=pipeline, tasks=n, depends=prev, job_name=name,
                                         logging_dir=f"s3://b/dedup/logs/{name}", time="12:00:00", partition="cpu")
        prev.run()  # launches the whole chain

    `tasks` must stay the same for all stages that read the corpus (the filters find documents by position in
    each task's shard); the other stages have their own fixed task counts.
    """
    ex = ExactDedupConfig(content_getter=exact_key, hash_config=HASH)
    mh = cfg.minhash_config()
    exact_sigs, exact_dups = _join(work_dir, "exact", "sigs"), _join(work_dir, "exact", "dups")
    mh_sigs, mh_buckets, mh_remove = (_join(work_dir, "minhash", d) for d in ("sigs", "buckets", "remove"))

    def removed(kind: str) -> JsonlWriter | None:
        return JsonlWriter(_join(work_dir, "removed", kind), "${rank}.jsonl.gz") if cfg.save_removed else None

    def read(final: bool) -> list[PipelineStep]:
        # the corpus as the MinHash stages see it: exact copies already gone
        steps: list[PipelineStep] = [
            JsonlReader(str(input_dir), glob_pattern="**/*.jsonl*", add_file_path=False)
        ]
        if cfg.exact:
            steps.append(
                ExactDedupFilter(exact_dups, ex, exclusion_writer=removed("exact") if final else None)
            )
        return steps

    stages = []
    if cfg.exact:
        stages.append(("exact_signatures", [read(False)[0], ExactDedupSignature(exact_sigs, ex)], tasks))
        stages.append(("exact_find", [ExactFindDedups(exact_sigs, exact_dups, ex)], 1))
    final = read(True)
    if cfg.minhash:
        sig = MinhashDedupSignature(mh_sigs, mh, language=CodeWordTokenizer())
        stages.append(("minhash_signatures", [*read(False), sig], tasks))
        stages.append(
            ("minhash_buckets", [MinhashDedupBuckets(mh_sigs, mh_buckets, config=mh)], mh.num_buckets)
        )
        stages.append(("minhash_cluster", [MinhashDedupCluster(mh_buckets, mh_remove, config=mh)], 1))
        final.append(MinhashDedupFilter(mh_remove, exclusion_writer=removed("near")))
    final.append(JsonlWriter(str(output_dir), "${rank}.jsonl.gz"))
    stages.append(("filter", final, tasks))
    return stages


def run_dedup(
    input_dir, output_dir, work_dir, cfg: DedupConfig = DedupConfig(), tasks: int = 2, workers: int = 2
) -> dict:
    """Remove exact and near duplicates from the jsonl(.gz) documents in input_dir; survivors go to output_dir.

    Resumable: every stage logs to <work_dir>/logs/<stage> and datatrove skips the tasks it has completed, so a
    re-run only does what is missing. Counts come from datatrove's per-task stats files, so they are exact and
    stay complete on a resumed run.
    """
    if not any(Path(input_dir).glob("**/*.jsonl*")):
        raise DataError(f"{input_dir}: no .jsonl/.jsonl.gz files to deduplicate")
    # datatrove skips completed tasks by their logging dir alone: a work_dir reused with other settings would
    # silently mix old signatures with new data, so it is refused
    settings = {"input": str(input_dir), "output": str(output_dir), "tasks": tasks, **asdict(cfg)}
    try:
        Stages(Path(work_dir)).check("dedup_settings", settings)
    except SettingsMismatch as e:
        raise DataError(f"{e}; remove {work_dir}") from None
    for name, pipeline, n in dedup_stages(input_dir, output_dir, work_dir, cfg, tasks):
        stats = run_pipeline(pipeline, Path(work_dir) / "logs" / name, n, workers)
    # the filter stage: reader, [exact filter], [minhash filter], writer
    steps = [stats[k] for k in sorted(stats, key=lambda k: int(k.split(".", 1)[0]))]
    exact = steps[1].get("dropped", 0) if cfg.exact else 0
    near = steps[1 + cfg.exact].get("dropped", 0) if cfg.minhash else 0
    docs_out = int(steps[-1].get("total", 0))
    docs_in = int(steps[1].get("total", 0)) if cfg.exact or cfg.minhash else docs_out
    if docs_in - exact - near != docs_out:
        raise RuntimeError(f"{work_dir}: inconsistent dedup stats ({docs_in=} {exact=} {near=} {docs_out=})")
    return {
        "docs_in": docs_in,
        "exact_duplicates": int(exact),
        "near_duplicates": int(near),
        "docs_out": docs_out,
        "duplicate_rate": round((exact + near) / docs_in, 6) if docs_in else 0.0,
    }
