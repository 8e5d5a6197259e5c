"""Where documents come from: the local Python installation (the embedded default) and user files.

The default corpus is "phi-1 at home": every `.py` file of the running interpreter's stdlib and
site-packages, split into one document per top-level function or class plus one for the rest of the module
(docstring, imports, constants, script code), so every source line lands in exactly one document and
documents are short enough for a small context window. User data comes in as jsonl, parquet or a folder of
text files; Hugging Face datasets work through datatrove's reader when the hub is reachable.
"""

from __future__ import annotations

import ast
import hashlib
import site
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from . import DataError

MIN_DEF_LINES = 3  # shorter top-level defs stay in the module remainder: alone they teach nothing


def python_roots() -> list[tuple[str, Path]]:
    """(origin, directory) for the running interpreter's stdlib and every site-packages directory."""
    paths = sysconfig.get_paths()
    roots = [("stdlib", Path(paths["stdlib"]))]
    for p in [paths["purelib"], paths["platlib"], *site.getsitepackages()]:
        roots.append(("site-packages", Path(p)))
    seen, out = set(), []
    for origin, r in roots:
        key = r.resolve()
        if r.is_dir() and key not in seen:
            seen.add(key)
            out.append((origin, r))
    return out


def list_python_files(max_bytes: int | None = None, origins: tuple[str, ...] = ("stdlib", "site-packages")):
    """Deterministic selection of (origin, root, path) up to max_bytes of file size.

    Files are ordered by a hash of their relative path, not alphabetically, so a byte cap takes a
    mixture of all packages instead of the first few letters of the alphabet, and adding a package
    elsewhere does not reshuffle the rest.
    """
    files = []
    for origin, root in python_roots():
        if origin not in origins:
            continue
        for p in root.rglob("*.py"):
            rel = p.relative_to(root)
            if origin == "stdlib" and rel.parts and rel.parts[0] == "site-packages":
                continue  # counted under its own root
            if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            files.append((hashlib.sha1(f"{origin}/{rel.as_posix()}".encode()).hexdigest(), origin, root, p))
    files.sort()
    out, total = [], 0
    for _, origin, root, p in files:
        try:
            size = p.stat().st_size
        except OSError:
            continue  # dangling symlink: read_source would count it, but it has no size to budget
        if max_bytes is not None and total + size > max_bytes and out:
            continue  # keep looking: a smaller file may still fit
        out.append((origin, root, p))
        total += size
    return out


def read_source(path: Path) -> tuple[str | None, str]:
    """(text, "ok") or (None, reason) with reason in {"unreadable", "binary", "non_utf8"}."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None, "unreadable"
    if b"\x00" in raw[:8192]:
        return None, "binary"
    try:
        return raw.decode("utf-8"), "ok"
    except UnicodeDecodeError:
        return None, "non_utf8"


def split_module(text: str) -> list[tuple[str, str, int, int]]:
    """Split a module into (kind, name, first_line, text) pieces: one per top-level def/class + the rest.

    Decorators and the comment block directly above a definition belong to it. A module that does not
    parse stays whole (kind "module").
    """
    lines = text.splitlines(keepends=True)
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return [("module", "", 1, text)]
    taken = [False] * len(lines)
    pieces = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
        end = node.end_lineno
        if end - start < MIN_DEF_LINES:
            continue
        while start > 0 and lines[start - 1].lstrip().startswith("#") and not taken[start - 1]:
            start -= 1  # the comment that introduces the definition
        for i in range(start, end):
            taken[i] = True
        kind = "class" if isinstance(node, ast.ClassDef) else "function"
        pieces.append((kind, node.name, start + 1, "".join(lines[start:end])))
    rest = "".join(line for line, t in zip(lines, taken, strict=True) if not t)
    if rest.strip():
        pieces.insert(0, ("module", "", 1, _squeeze_blank_lines(rest)))
    return pieces


def _squeeze_blank_lines(text: str) -> str:
    out, blank = [], 0
    for line in text.splitlines(keepends=True):
        blank = blank + 1 if not line.strip() else 0
        if blank <= 2:
            out.append(line)
    return "".join(out)


def module_name(origin: str, rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or rel.stem


def documents_from_file(origin: str, root: Path, path: Path, text: str) -> list[Document]:
    rel = path.relative_to(root)
    mod = module_name(origin, rel)
    package = "stdlib" if origin == "stdlib" else mod.split(".")[0]
    docs = []
    for kind, name, first_line, piece in split_module(text):
        qual = f"{mod}:{name}" if name else mod
        docs.append(
            Document(
                text=piece,
                id=f"{origin}/{rel.as_posix()}" + (f":{name}" if name else ""),
                metadata={
                    "source": "local-python",
                    "origin": origin,
                    "path": rel.as_posix(),
                    "package": package,
                    "kind": kind,
                    "name": qual,
                    "first_line": first_line,
                    "lines": piece.count("\n") + (not piece.endswith("\n")),
                    "file_lines": text.count("\n"),
                },
            )
        )
    return docs


class LocalPythonReader(PipelineStep):
    """datatrove reader: the local Python installation as code documents.

    Each task takes every world_size-th file of one deterministic selection, so any number of tasks
    produces the same corpus. Unreadable, binary and non-UTF-8 files are skipped and counted.
    """

    name = "🐍 local python"
    type = "📖 - READER"

    def __init__(
        self, max_bytes: int | None = 40_000_000, origins: tuple[str, ...] = ("stdlib", "site-packages")
    ):
        super().__init__()
        self.max_bytes = max_bytes
        self.origins = tuple(origins)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        files = list_python_files(self.max_bytes, self.origins)
        for origin, root, path in files[rank::world_size]:
            with self.track_time():
                text, status = read_source(path)
                if text is None:
                    self.stat_update(f"skipped_{status}")
                    continue
                self.stat_update("files")
                docs = documents_from_file(origin, root, path, text)
            for doc in docs:
                self.stat_update("documents", f"kind_{doc.metadata['kind']}")
                self.update_doc_stats(doc)
                yield doc


class TextFolderReader(PipelineStep):
    """datatrove reader: one document per text file under a folder (recursively).

    Binary and non-UTF-8 files are skipped and counted, never a crash: user folders hold stray files.
    """

    name = "📁 text folder"
    type = "📖 - READER"

    def __init__(self, folder: str, glob: str = "**/*", kind: str = "prose"):
        super().__init__()
        self.folder, self.glob, self.kind = str(folder), glob, kind

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        root = Path(self.folder)
        files = sorted(p for p in root.glob(self.glob) if p.is_file())
        for path in files[rank::world_size]:
            with self.track_time():
                text, status = read_source(path)
            if text is None:
                self.stat_update(f"skipped_{status}")
                continue
            if not text.strip():
                self.stat_update("skipped_empty")
                continue
            rel = path.relative_to(root).as_posix()
            doc = Document(
                text=text,
                id=rel,
                metadata={
                    "source": str(root),
                    "path": rel,
                    "kind": self.kind if path.suffix != ".py" else "module",
                },
            )
            self.stat_update("documents")
            self.update_doc_stats(doc)
            yield doc


def make_reader(source: str, max_bytes: int | None = 40_000_000, text_key: str = "text"):
    """A datatrove reader for a source spec.

    "local-python" (default corpus) | a .jsonl/.jsonl.gz/.parquet file or a folder of them | a folder of
    text files | "hf:<dataset>[:<split>]" (needs the `datasets` package and the hub).
    """
    if source in ("local-python", "python"):
        return LocalPythonReader(max_bytes=max_bytes)
    if source.startswith("hf:"):
        from datatrove.pipeline.readers import HuggingFaceDatasetReader

        name, _, split = source[3:].partition(":")
        return HuggingFaceDatasetReader(name, {"split": split or "train"}, text_key=text_key, limit=-1)
    path = Path(source)
    if not path.exists():
        raise DataError(f"source {source!r}: no such file or folder (or use 'local-python' / 'hf:<name>')")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    suffixes = {"".join(p.suffixes[-2:]) if p.suffix == ".gz" else p.suffix for p in files}
    folder, glob = (str(path.parent), path.name) if path.is_file() else (str(path), None)
    if suffixes and suffixes <= {".jsonl", ".jsonl.gz", ".json"}:
        from datatrove.pipeline.readers import JsonlReader

        return JsonlReader(folder, glob_pattern=glob or "**/*.jsonl*", text_key=text_key, recursive=True)
    if suffixes and suffixes <= {".parquet"}:
        from datatrove.pipeline.readers import ParquetReader

        return ParquetReader(folder, glob_pattern=glob or "**/*.parquet", text_key=text_key, recursive=True)
    if path.is_dir():
        return TextFolderReader(str(path))
    raise DataError(
        f"source {source!r}: unsupported file type {path.suffix!r} (jsonl, parquet or a text folder)"
    )


def iter_documents(folder: str | Path) -> Iterator[Document]:
    """Read back a stage's output folder (jsonl.gz written by datatrove's JsonlWriter), in file order."""
    from datatrove.pipeline.readers import JsonlReader

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    yield from JsonlReader(str(folder), glob_pattern="*.jsonl*", recursive=False, add_file_path=False).run()
