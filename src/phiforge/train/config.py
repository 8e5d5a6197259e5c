"""A training recipe: plain dataclasses loaded from YAML, with `key=value` overrides.

Unknown fields are errors (a typo in a recipe must not silently train with a default). Every budget is
in tokens; steps are derived from the global batch (micro_batch * grad_accum * world size * seq_len).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class RecipeError(ValueError):
    """A bad recipe: the message is one line naming the file, field and value."""


@dataclass
class Dataset:
    path: str  # a token shard folder (index.json + {train,val}_*.bin) written by `phiforge data run`
    weight: float = 1.0
    name: str | None = None  # for metrics; defaults to the folder name

    def label(self) -> str:
        if self.name:
            return self.name
        p = Path(self.path)  # runs/<x>/shards -> "<x>": data runs all name their folder "shards"
        return p.parent.name if p.name == "shards" and p.parent.name else p.name


@dataclass
class Phase:
    name: str = "phase"
    tokens: int = 1_000_000  # pretrain: training tokens in this phase
    datasets: list[Dataset] = field(default_factory=list)
    kind: str = "pretrain"  # "pretrain": a token mixture | "dpo": preference pairs (train/dpo.py)
    # dpo: jsonl of {"prompt", "chosen", "rejected"}; the run's starting model is the reference
    data: str | None = None
    beta: float = 0.1
    loss_type: str = "sigmoid"  # "sigmoid" | "ipo" (TRL's definitions)
    sft_weight: float = 0.0  # + weight * NLL of the chosen completions
    epochs: float = 1.0  # passes over the pairs


@dataclass
class TrainConfig:
    name: str = "run"
    out: str = "runs/train"  # run dir: metrics.jsonl, ckpt/step_*/, plots/
    # model: a preset name (+ overrides), or init_from an HF-layout checkpoint (continued training / SFT)
    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)
    init_from: str | None = None
    tokenizer: str | None = None  # folder with tokenizer.json; copied into every checkpoint
    phases: list[Phase] = field(default_factory=list)
    seq_len: int = 256
    micro_batch: int = 8  # sequences per forward pass per process
    grad_accum: int = 1
    # optimizer + schedule
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    warmup_steps: int = 20
    schedule: str = "cosine"  # "cosine" (warmup + cosine) | "wsd" (warmup-stable-decay) | "constant"
    decay_fraction: float = 0.2  # wsd: the last fraction of steps decays linearly
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 = off
    seed: int = 0
    dtype: str = "fp32"  # "fp32" | "bf16" (autocast; weights and optimizer stay fp32)
    compile: bool = False
    activation_checkpointing: bool = False
    fsdp: bool = False  # under torchrun: FSDP2 fully_shard instead of DDP
    # eval / checkpoints / logging
    eval_every: int = 50  # steps; 0 = only at the end of each phase
    eval_tokens: int = 65536  # per dataset, from its val split
    save_every: int = 100  # steps; also saved at the end, on SIGTERM/SIGINT
    keep_last: int = 2
    peak_flops: float | None = None  # per process, for MFU; None = measure fp32 matmul peak
    tensorboard: bool = False
    progress: bool = True
    # SFT only
    sft_epochs: float = 1.0
    sft_doc_mask: bool = True  # packed conversations cannot attend to each other

    def tokens_per_step(self, world: int = 1) -> int:
        return self.micro_batch * self.grad_accum * world * self.seq_len

    def phase_steps(self, world: int = 1) -> list[int]:
        per = self.tokens_per_step(world)
        return [max(1, -(-p.tokens // per)) for p in self.phases]


def _build(cls, data, where: str):
    """Dataclass from a dict, recursing into Phase/Dataset lists; unknown keys -> RecipeError."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in known:
            raise RecipeError(f"{where}: unknown field {k!r} (known: {', '.join(known)})")
    kw = dict(data)
    if cls is TrainConfig and "phases" in kw:
        kw["phases"] = [_build(Phase, p, f"{where}.phases[{i}]") for i, p in enumerate(kw["phases"] or [])]
    if cls is Phase and "datasets" in kw:
        ds = kw["datasets"] or []
        kw["datasets"] = [
            _build(Dataset, {"path": d} if isinstance(d, str) else d, f"{where}.datasets[{i}]")
            for i, d in enumerate(ds)
        ]
    try:
        obj = cls(**kw)
    except TypeError as e:
        raise RecipeError(f"{where}: {e}") from None
    _check_types(obj, where)
    return obj


def _check_types(obj, where: str) -> None:
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if v is None or t.startswith("list") or "|" in t and v is None:
            continue
        base = t.split(" | ")[0]
        ok = {
            "int": lambda x: isinstance(x, int) and not isinstance(x, bool),
            "float": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
            "str": lambda x: isinstance(x, str),
            "bool": lambda x: isinstance(x, bool),
            "dict": lambda x: isinstance(x, dict),
        }.get(base)
        if ok is not None and not ok(v):
            raise RecipeError(f"{where}.{f.name}: expected {base}, got {v!r}")
        if base == "float" and isinstance(v, int):
            setattr(obj, f.name, float(v))


def validate(cfg: TrainConfig, where: str = "recipe") -> TrainConfig:
    if cfg.schedule not in ("cosine", "wsd", "constant"):
        raise RecipeError(f"{where}.schedule: {cfg.schedule!r} is not one of cosine, wsd, constant")
    if cfg.dtype not in ("fp32", "bf16"):
        raise RecipeError(f"{where}.dtype: {cfg.dtype!r} is not one of fp32, bf16")
    for k in ("seq_len", "micro_batch", "grad_accum", "keep_last"):
        if getattr(cfg, k) < 1:
            raise RecipeError(f"{where}.{k}: must be >= 1, got {getattr(cfg, k)}")
    for i, p in enumerate(cfg.phases):
        if p.kind not in ("pretrain", "dpo"):
            raise RecipeError(f"{where}.phases[{i}].kind: {p.kind!r} is not one of pretrain, dpo")
        if p.kind == "dpo":
            _check_dpo(p, i, cfg.phases[:i], where)
            continue
        if p.tokens < 1:
            raise RecipeError(f"{where}.phases[{i}].tokens: must be >= 1, got {p.tokens}")
        if not p.datasets:
            raise RecipeError(f"{where}.phases[{i}] ({p.name}): no datasets")
        for j, d in enumerate(p.datasets):
            if not d.weight > 0:
                raise RecipeError(f"{where}.phases[{i}].datasets[{j}].weight: must be > 0, got {d.weight}")
    return cfg


def _check_dpo(p: Phase, i: int, before: list[Phase], where: str) -> None:
    at = f"{where}.phases[{i}]"
    if any(q.kind != "dpo" for q in before):  # the reference is the run's starting model
        raise RecipeError(
            f"{at} ({p.name}): a dpo phase cannot follow a pretrain phase; run it as its own recipe"
        )
    if not p.data:
        raise RecipeError(f"{at}.data: a dpo phase needs a preference jsonl")
    if p.datasets:
        raise RecipeError(f"{at}.datasets: a dpo phase reads `data`, not token datasets")
    if p.loss_type not in ("sigmoid", "ipo"):
        raise RecipeError(f"{at}.loss_type: {p.loss_type!r} is not one of sigmoid, ipo")
    for k in ("beta", "epochs"):
        if not getattr(p, k) > 0:
            raise RecipeError(f"{at}.{k}: must be > 0, got {getattr(p, k)}")
    if p.sft_weight < 0:
        raise RecipeError(f"{at}.sft_weight: must be >= 0, got {p.sft_weight}")


def _set(data: dict, key: str, value: str, where: str) -> None:
    """Apply one dotted override (`phases.1.tokens=2e6`, `lr=1e-3`); values parse as YAML scalars."""
    parts = key.split(".")
    node = data
    for i, p in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise RecipeError(f"{where}: --set {key}: no list item {p!r}")
            node = node[int(p)]
        else:
            node = node.setdefault(p, [] if nxt.isdigit() else {})
    last = parts[-1]
    v = yaml.safe_load(value)
    if isinstance(v, str):  # YAML reads 1e-3 as a string; numbers people type should be numbers
        with contextlib.suppress(ValueError):
            v = float(v) if any(c in v for c in ".eE") else int(v)
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(f"{where}: --set {key}: no list item {last!r}")
        node[int(last)] = v
    else:
        node[last] = v


def from_dict(data: dict, overrides: list[str] = (), where: str = "recipe") -> TrainConfig:
    data = dict(data or {})
    for ov in overrides:
        if "=" not in ov:
            raise RecipeError(f"--set {ov!r}: expected key=value")
        k, v = ov.split("=", 1)
        _set(data, k.strip(), v, where)
    if "tokens" in str(data):  # allow 2e6-style token budgets
        for p in data.get("phases") or []:
            if isinstance(p, dict) and isinstance(p.get("tokens"), (float, str)):
                try:
                    p["tokens"] = int(float(p["tokens"]))
                except ValueError:
                    raise RecipeError(f"{where}: phase tokens {p['tokens']!r} is not a number") from None
    return validate(_build(TrainConfig, data, where), where)


def read_recipe(path: str | Path) -> dict:
    """The recipe's YAML as a dict, before overrides and validation (`phiforge dpo` adds its phase)."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe not found") from None
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0]
        raise RecipeError(f"{path}: not valid YAML ({first})") from None


def load_recipe(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    return from_dict(read_recipe(path), overrides, where=str(path))


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)
