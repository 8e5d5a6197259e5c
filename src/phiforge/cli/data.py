"""`phiforge data ...`: the data pipeline as one command (`run`) or one stage at a time.

Every stage reads a folder of jsonl(.gz) documents and writes one; `run` chains them under a run directory,
skips finished stages on a re-run and writes a data card. Each command calls a function of
`phiforge.data.pipeline` (or dedup/decontam) that a user can import.
"""

from __future__ import annotations

from pathlib import Path

import typer

data_app = typer.Typer(
    help="Textbook-quality data: harvest, annotate, classify, filter, dedup, decontaminate, synthesize, tokenize.",
    no_args_is_help=True,
)

_verbose = {"on": False}


@data_app.callback()
def _group(verbose: bool = typer.Option(False, "--verbose", help="Show datatrove's own logs on stderr.")):
    """Textbook-quality data: harvest, annotate, classify, filter, dedup, decontaminate, tokenize."""
    _verbose["on"] = verbose
    if not verbose:  # per-task logs still land under each stage's logs/ folder
        import atexit

        from ..data.stage import quiet_logs

        # for the rest of this process (one command per process); the reference is kept because a dropped
        # context manager's generator is closed at once, which would run its exit and undo the quieting
        ctx = _verbose["quiet"] = quiet_logs()
        ctx.__enter__()
        atexit.register(ctx.__exit__, None, None, None)  # while the module it restores still exists


_TASKS = typer.Option(2, help="datatrove tasks (output files) per stage.")
_WORKERS = typer.Option(2, help="Worker processes running the tasks.")
_TEACHER_URL = typer.Option(
    None,
    help="OpenAI-compatible base URL of the teacher LLM (e.g. http://127.0.0.1:8000/v1). "
    "Unset: the offline heuristic annotator.",
)
_TEACHER = typer.Option(
    None,
    "--teacher",
    help="A model run in this process as the teacher: a short name (smollm2-135m-instruct), a model "
    "directory or a .gguf file. Instead of --teacher-url.",
)
_TEACHER_METHOD = typer.Option(
    "text",
    help="How the teacher's answer becomes a score: text (parse 'Score: n'), geval (probability-weighted "
    "digit after 'Score:') or askllm (P(yes) to 'good for teaching?'). Small models: geval or askllm.",
)
_TEACHER_MODEL = typer.Option("gpt-4o-mini", help="Teacher model name sent to the endpoint.")
_TEACHER_KEY = typer.Option("PHIFORGE_TEACHER_KEY", help="Environment variable holding the API key.")
_CONCURRENCY = typer.Option(8, help="Teacher requests in flight at once.")


_EXECUTOR = typer.Option("local", help="datatrove executor: local, slurm or ray (a cluster).")
_EXECUTOR_OPT = typer.Option(
    None,
    help="KEY=VALUE passed to the executor (repeatable), e.g. partition=cpu, time=12:00:00 for slurm.",
)


def _use_executor(kind: str, opts: list[str] | None) -> None:
    from ..data.stage import use_executor

    parsed = {}
    for o in opts or []:
        k, eq, v = o.partition("=")
        if not eq or not k:
            raise typer.BadParameter(f"--executor-opt {o!r}: expected KEY=VALUE")
        parsed[k] = int(v) if v.isdigit() else v
    use_executor(kind, parsed)


def _teacher(url, model, key_env, concurrency, cache=None, local=None, method="text"):
    from ..data.annotate import TeacherConfig
    from ..infer.load import resolve

    if url and local:
        raise ValueError("--teacher (in-process) and --teacher-url (endpoint): give one, not both")
    if local:
        resolve(local)  # a short name that is not installed, or a missing file: fail before any stage runs
    return TeacherConfig(
        url=url,
        model=model,
        api_key_env=key_env,
        concurrency=concurrency,
        cache_path=str(cache) if cache else None,
        method=method,
        local=local,
    )


def _show(stats: dict) -> None:
    import json

    print(json.dumps({k: v for k, v in stats.items() if k != "steps"}, indent=1, default=str))


@data_app.command()
def run(
    out: Path = typer.Option(Path("runs/data"), help="Run directory (data/, tokenizer/, shards/, report/)."),
    source: str = typer.Option(
        "local-python",
        help="'local-python', a jsonl/parquet file or folder, a text folder, or 'hf:<dataset>[:<split>]'.",
    ),
    max_mb: float = typer.Option(40.0, help="Cap on the local-python corpus, MB of source files."),
    teacher: str = _TEACHER,
    teacher_method: str = _TEACHER_METHOD,
    teacher_url: str = _TEACHER_URL,
    teacher_model: str = _TEACHER_MODEL,
    teacher_key_env: str = _TEACHER_KEY,
    concurrency: int = _CONCURRENCY,
    annotate: int = typer.Option(3000, help="Documents in the sample the teacher labels."),
    classifier: str = typer.Option("hashed", help="'hashed' (n-gram linear, fast) or 'embedding' (MiniLM)."),
    min_score: float = typer.Option(3.0, help="Keep documents whose classifier score is at least this."),
    keep_fraction: float = typer.Option(
        None,
        help="Keep this top fraction by classifier score instead of --min-score (the bar is set on the "
        "labelled sample): for teachers whose scores are ranks, not 0-5 grades (--teacher-method askllm).",
    ),
    ngram: int = typer.Option(13, help="n-gram size for decontamination."),
    benchmark: list[Path] = typer.Option(
        None, help="Eval file/folder to decontaminate against (repeatable); HumanEval is always included."
    ),
    vocab: int = typer.Option(8192, help="Tokenizer vocabulary size."),
    val_fraction: float = typer.Option(0.02, help="Share of documents in the validation split."),
    tasks: int = _TASKS,
    workers: int = _WORKERS,
    executor: str = _EXECUTOR,
    executor_opt: list[str] = _EXECUTOR_OPT,
):
    """Every stage from raw corpus to token shards and a data card. Re-runs skip finished stages."""
    from ..data.pipeline import DataConfig
    from ..data.pipeline import run as run_pipeline

    _use_executor(executor, executor_opt)

    cfg = DataConfig(
        source=source, max_bytes=int(max_mb * 1e6), teacher=_teacher(teacher_url, teacher_model,
        teacher_key_env, concurrency, local=teacher, method=teacher_method), annotate_docs=annotate, classifier=classifier, min_score=min_score,
        keep_fraction=keep_fraction,
        decontam_n=ngram, benchmarks=[str(b) for b in benchmark or []], vocab_size=vocab,
        val_fraction=val_fraction, tasks=tasks, workers=workers,
    )  # fmt: skip
    run_pipeline(cfg, out, quiet=not _verbose["on"])


@data_app.command()
def harvest(
    out: Path = typer.Argument(..., help="Output folder of jsonl.gz documents."),
    source: str = typer.Option("local-python", help="See `data run --help`."),
    max_mb: float = typer.Option(40.0, help="Cap on the local-python corpus, MB."),
    tasks: int = _TASKS,
    workers: int = _WORKERS,
):
    """Read a source into documents (local Python code is split per function/class)."""
    from ..data.pipeline import harvest as f

    _show(f(source, out, int(max_mb * 1e6), tasks=tasks, workers=workers))


@data_app.command()
def annotate(
    src: Path = typer.Argument(..., help="Folder of documents."),
    out: Path = typer.Argument(..., help="Output folder: the sample, with metadata.teacher_score."),
    sample: int = typer.Option(3000, help="About this many documents are labelled (0 = all)."),
    teacher: str = _TEACHER,
    teacher_method: str = _TEACHER_METHOD,
    teacher_url: str = _TEACHER_URL,
    teacher_model: str = _TEACHER_MODEL,
    teacher_key_env: str = _TEACHER_KEY,
    concurrency: int = _CONCURRENCY,
    cache: Path = typer.Option(None, help="Response cache (sqlite); default <out>/../teacher_cache.sqlite."),
    tasks: int = _TASKS,
    workers: int = _WORKERS,
):
    """Educational-value scores 0-5 from a teacher LLM (or the heuristic) for a sample of documents."""
    from ..data.pipeline import annotate as f

    cache = cache or (out.parent / "teacher_cache.sqlite" if teacher_url or teacher else None)
    cfg = _teacher(teacher_url, teacher_model, teacher_key_env, concurrency, cache, teacher, teacher_method)
    _show(f(src, out, cfg, sample or None, tasks=tasks, workers=workers))


@data_app.command("train-classifier")
def train_classifier(
    src: Path = typer.Argument(..., help="Annotated documents (from `data annotate`)."),
    out: Path = typer.Argument(..., help="Classifier directory."),
    kind: str = typer.Option("hashed", help="'hashed' or 'embedding'."),
):
    """Fit the quality classifier on teacher labels; print held-out Spearman and F1 at 3."""
    from ..data.pipeline import fit_classifier

    _show(fit_classifier(src, out, kind))


@data_app.command()
def score(
    src: Path = typer.Argument(..., help="Folder of documents."),
    out: Path = typer.Argument(..., help="Output folder: documents with metadata.quality."),
    classifier: Path = typer.Option(..., help="Classifier directory (from `data train-classifier`)."),
    tasks: int = _TASKS,
    workers: int = _WORKERS,
):
    """Add metadata.quality (classifier score, 0-5) to every document."""
    from ..data.pipeline import score_filter

    _show(score_filter(src, out, classifier=classifier, tasks=tasks, workers=workers))


@data_app.command("filter")
def filter_(
    src: Path = typer.Argument(..., help="Scored documents (from `data score`)."),
    out: Path = typer.Argument(..., help="Output folder."),
    min_score: float = typer.Option(3.0, help="Keep documents with metadata.quality >= this."),
    tasks: int = _TASKS,
    workers: int = _WORKERS,
):
    """Keep documents scoring at or above --min-score."""
    from ..data.pipeline import score_filter

    _show(score_filter(src, out, min_score=min_score, tasks=tasks, workers=workers))


@data_app.command()
def dedup(
    src: Path = typer.Argument(..., help="Folder of documents."),
    out: Path = typer.Argument(..., help="Output folder."),
    work: Path = typer.Option(None, help="Work folder for signatures/buckets/logs (default <out>.work)."),
    no_minhash: bool = typer.Option(False, help="Exact dedup only."),
    tasks: int = _TASKS,
    workers: int = _WORKERS,
):
    """Exact and MinHash near-duplicate removal (datatrove stages); prints the duplicate rate."""
    from ..data.dedup import DedupConfig, run_dedup

    work = work or out.with_name(out.name + ".work")
    _show(run_dedup(src, out, work, DedupConfig(minhash=not no_minhash), tasks, workers))


@data_app.command()
def decontam(
    src: Path = typer.Argument(..., help="Folder of documents."),
    out: Path = typer.Argument(..., help="Output folder."),
    benchmark: list[Path] = typer.Option(None, help="Eval jsonl/json/csv file or folder (repeatable)."),
    ngram: int = typer.Option(13, help="n-gram size."),
    no_humaneval: bool = typer.Option(False, help="Do not include HumanEval."),
    report: Path = typer.Option(None, help="Where removed documents are reported (default <out>.report)."),
    tasks: int = _TASKS,
    workers: int = _WORKERS,
):
    """Remove documents sharing an n-gram with an eval item; report each one with the item it matched."""
    from ..data.decontam import run_decontam

    report = report or out.with_name(out.name + ".report")
    _show(run_decontam(src, out, report, n=ngram, humaneval=not no_humaneval,
                       paths=tuple(str(b) for b in benchmark or []), tasks=tasks, workers=workers))  # fmt: skip


@data_app.command("train-tokenizer")
def train_tokenizer(
    src: Path = typer.Argument(..., help="Folder of documents."),
    out: Path = typer.Argument(..., help="Tokenizer directory (tokenizer.json + tokenizer_config.json)."),
    vocab: int = typer.Option(8192, help="Vocabulary size (Phi-3 special tokens included)."),
    max_mb: float = typer.Option(20.0, help="Train on at most this many MB of text."),
):
    """Byte-level BPE that transformers' PreTrainedTokenizerFast and phiforge load."""
    from ..data.pipeline import train_tokenizer as f

    _show(f(src, out, vocab, int(max_mb * 1e6)))


@data_app.command()
def tokenize(
    src: Path = typer.Argument(..., help="Folder of documents."),
    out: Path = typer.Argument(..., help="Shard folder ({train,val}_*.bin + index.json)."),
    tokenizer: Path = typer.Option(..., help="Tokenizer directory."),
    val_fraction: float = typer.Option(0.02, help="Share of documents in the validation split."),
    tasks: int = _TASKS,
    workers: int = _WORKERS,
):
    """Token shards: flat uint16/uint32 arrays, EOS between documents, train/val split by document id."""
    from ..data.pipeline import tokenize as f

    _show(f(src, out, tokenizer, val_fraction, tasks=tasks, workers=workers))


@data_app.command()
def synth(
    src: Path = typer.Argument(
        ..., help="Quality-filtered documents: topics and dedup seeds come from them."
    ),
    out: Path = typer.Argument(..., help="Output folder: kept documents, funnel.json, card.md + card.png."),
    requests: int = typer.Option(60, help="Teacher requests (kinds in turn)."),
    kinds: str = typer.Option("textbook,exercise,qa", help="Comma-separated: textbook, exercise, qa."),
    topics: Path = typer.Option(None, help="Topic list, one a line (default: mined from SRC's best docs)."),
    teacher: str = _TEACHER,
    teacher_url: str = _TEACHER_URL,
    teacher_model: str = _TEACHER_MODEL,
    teacher_key_env: str = _TEACHER_KEY,
    concurrency: int = _CONCURRENCY,
    cache: Path = typer.Option(None, help="Answer cache (sqlite); default <out>/../teacher_cache.sqlite."),
    max_tokens: int = typer.Option(256, help="Tokens per teacher answer."),
    temperature: float = typer.Option(0.7, help="Teacher sampling temperature."),
    benchmark: list[Path] = typer.Option(
        None, help="Eval file/folder to decontaminate against (repeatable)."
    ),
    seed: int = typer.Option(0, help="Draws of topic, audience and style; the teacher's sampling seed."),
    tasks: int = typer.Option(1, help="datatrove tasks (an in-process teacher loads one model per worker)."),
    workers: int = typer.Option(1, help="Worker processes running the tasks."),
    executor: str = _EXECUTOR,
    executor_opt: list[str] = _EXECUTOR_OPT,
):
    """Synthetic textbook sections, exercises and Q/A from a teacher, verified by running them."""
    from ..data.synth import SynthConfig, SynthSettings, synthesize

    _use_executor(executor, executor_opt)
    if not teacher_url and not teacher:
        teacher = "smollm2-135m-instruct"  # the embedded real model: no server needed
    cfg = SynthConfig(
        requests=requests, kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()),
        topics_file=str(topics) if topics else None, benchmarks=[str(b) for b in benchmark or []], seed=seed,
        settings=SynthSettings(max_tokens=max_tokens, temperature=temperature, teacher=_teacher(
            teacher_url, teacher_model, teacher_key_env, concurrency, cache, teacher)),
    )  # fmt: skip
    _show(synthesize(src, out, cfg, tasks=tasks, workers=workers))


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
