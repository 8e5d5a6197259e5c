"""Grow a trained model into a bigger one of the same family: scaled knowledge transfer (Phi-2 from Phi-1.5).

Function-preserving by construction, so the grown model starts at the small model's loss:

  wider   (hidden, attention heads, kv heads, MLP units; each an integer multiple k of the small one) Net2Net
          (Chen et al. 2016): every unit is copied k times. A tensor that *produces* a widened dimension copies
          its rows; one that *consumes* it splits the columns of each unit into k parts that sum to the
          original (W/k + noise, the noise summing to zero over the copies). The copies hold equal values, so
          the sum is unchanged. The residual stream becomes [x, x, ...], whose mean and mean square are the
          small model's exactly: RMSNorm and LayerNorm (eps included) need no rescaling, which zero-padding
          would (the RMS of [x, 0] is sqrt(1/2) of x's). The final norm's output feeds the lm_head, which is
          tied to the embedding (a producer, copied): so the final norm's weight and bias are the split ones.
  deeper  new blocks are copies of a neighbour with their output projections (attention out, MLP down and
          their biases) zeroed: the residual branch adds 0 until training moves them (LLaMA Pro's blocks).

The noise breaks the symmetry between copies: without it they would get equal gradients forever, and the
wide model would train as the small one. Its std is `noise` times the std of the tensor it perturbs.
Vocabulary and tokenizer are the small model's; the target preset's shape fields are taken, everything that
changes the function (rotary, activation, norm eps, tying) must already match.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..io import atomic_path, atomic_write, write_json
from .config import ModelConfig, get_preset
from .hf import load_model, save_model
from .transformer import Transformer, build

WIDTHS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
# fields that change what the model computes: a grown model must have the small one's
SAME = ("arch", "head_dim", "rope_theta", "partial_rotary_factor", "rope_scaling", "hidden_act",
        "norm_eps", "tie_word_embeddings", "sliding_window")  # fmt: skip
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


class GrowError(ValueError):
    """A target the small model cannot grow into; the message is one line naming the field and values."""


def grown_config(small: ModelConfig, big: ModelConfig) -> ModelConfig:
    """`big`'s shape with `small`'s vocabulary and special tokens, or GrowError naming the first bad field."""
    for f in SAME:
        a, b = getattr(small, f), getattr(big, f)
        if a != b:
            raise GrowError(f"{f}: the model has {a!r}, the target has {b!r} (grow keeps the architecture)")
    for f in (*WIDTHS, "num_hidden_layers"):
        a, b = getattr(small, f), getattr(big, f)
        if b < a:
            raise GrowError(f"{f}: the target's {b} is smaller than the model's {a} (grow only grows)")
        if f in WIDTHS and b % a:
            raise GrowError(f"{f}: the target's {b} is not a multiple of the model's {a} (units are copied)")
    return big.replace(vocab_size=small.vocab_size, bos_token_id=small.bos_token_id,
                       eos_token_id=small.eos_token_id, pad_token_id=small.pad_token_id)  # fmt: skip


def _copies(n_big: int, n_small: int) -> torch.Tensor:
    """Source unit of every new unit: [0..n), [0..n), ... (block copies, each unit k times)."""
    return torch.arange(n_big) % n_small


def _heads(small: ModelConfig, big: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Source head of every new q head and kv head, such that a new q head's kv head is a copy of its source's
    kv head (GQA groups stay consistent) and every old q head is copied the same number of times."""
    g, g2 = (
        small.num_attention_heads // small.num_key_value_heads,
        big.num_attention_heads // big.num_key_value_heads,
    )
    kv = _copies(big.num_key_value_heads, small.num_key_value_heads)
    j = torch.arange(big.num_attention_heads)
    c, r = j // g2, j % g2  # new kv head and slot in its group; c // nkv numbers the copy of that kv head
    q = kv[c] * g + (c // small.num_key_value_heads * g2 + r) % g
    return q, kv


def _rows(idx: torch.Tensor, size: int) -> torch.Tensor:
    """Unit indices -> row indices of units `size` rows wide (attention heads)."""
    return (idx[:, None] * size + torch.arange(size)).flatten()


def _split(t: torch.Tensor, idx: torch.Tensor, k: int, dim: int, noise: float, g: torch.Generator):
    """Select `idx` along `dim` and divide by k, plus noise that sums to zero over the copies of each unit."""
    out = t.index_select(dim, idx) / k
    if noise == 0 or k == 1:
        return out
    z = torch.randn(out.shape, generator=g) * (noise * float(t.std()) if t.numel() > 1 else noise)
    mean = torch.zeros_like(t).index_add_(dim, idx, z) / k
    return out + z - mean.index_select(dim, idx)


@torch.no_grad()
def widen(sd: dict[str, torch.Tensor], small: ModelConfig, big: ModelConfig, noise: float, seed: int) -> dict:
    """The small model's state dict (our names, fp32) widened to `big`'s widths, depth unchanged."""
    g = torch.Generator().manual_seed(seed)
    H, Hb = small.hidden_size, big.hidden_size
    kh, ki = Hb // H, big.intermediate_size // small.intermediate_size
    kq = big.num_attention_heads // small.num_attention_heads
    h = _copies(Hb, H)
    i = _copies(big.intermediate_size, small.intermediate_size)
    qh, kvh = _heads(small, big)
    hd = small.head_dim
    qkv_rows = torch.cat(
        [_rows(qh, hd), small.q_dim + _rows(kvh, hd), small.q_dim + small.kv_dim + _rows(kvh, hd)]
    )
    up_rows = torch.cat([i, small.intermediate_size + i]) if small.gated_mlp else i
    out = {}
    for name, t in sd.items():
        leaf = name.split(".", 2)[-1] if name.startswith("blocks.") else name
        if leaf in ("embed.weight", "lm_head.weight"):
            out[name] = t[:, h]  # producer (embedding) and, tied, the head: copies; the final norm splits
        elif leaf == "lm_head.bias":
            out[name] = t
        elif leaf.startswith("norm.") and not name.startswith("blocks."):
            out[name] = _split(t, h, kh, 0, noise, g)  # the final norm feeds the head: split here
        elif leaf.startswith(("norm1.", "norm2.")):
            out[name] = t[h]
        elif leaf == "attn.qkv.weight":
            out[name] = _split(t[qkv_rows], h, kh, 1, noise, g)
        elif leaf == "attn.qkv.bias":
            out[name] = t[qkv_rows]
        elif leaf == "attn.out.weight":
            out[name] = _split(t[h], _rows(qh, hd), kq, 1, noise, g)
        elif leaf == "mlp.up.weight":
            out[name] = _split(t[up_rows], h, kh, 1, noise, g)
        elif leaf == "mlp.up.bias":
            out[name] = t[up_rows]
        elif leaf == "mlp.down.weight":
            out[name] = _split(t[h], i, ki, 1, noise, g)
        elif leaf in ("attn.out.bias", "mlp.down.bias"):
            out[name] = t[h]
        else:
            raise GrowError(f"{name}: no growth rule for this tensor")
    return out


def deepen(sd: dict[str, torch.Tensor], layers: int, target: int) -> dict:
    """`target` blocks from `layers`: each old block followed by its share of the new ones, copies of it whose
    output projections are zero (the block adds nothing to the residual stream until trained)."""
    extra = target - layers
    src, new = [], []
    for b in range(layers):
        n = extra * (b + 1) // layers - extra * b // layers  # spread the new blocks evenly over the depth
        src += [b] * (n + 1)
        new += [False] + [True] * n
    out = {k: v for k, v in sd.items() if not k.startswith("blocks.")}
    for j, (b, fresh) in enumerate(zip(src, new, strict=True)):
        for name, t in sd.items():
            if not name.startswith(f"blocks.{b}."):
                continue
            leaf = name.split(".", 2)[2]
            zero = fresh and leaf.startswith(("attn.out.", "mlp.down."))
            out[f"blocks.{j}.{leaf}"] = torch.zeros_like(t) if zero else t.clone()
    return out


def grow(model: Transformer, big: ModelConfig, noise: float = 0.1, seed: int = 0) -> Transformer:
    """A model of `big`'s shape (vocabulary and special tokens kept) computing what `model` computes."""
    small = model.cfg
    cfg = grown_config(small, big)
    dtype = model.embed.weight.dtype
    sd = {k: v.float() for k, v in model.state_dict().items()}
    if small.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    sd = deepen(widen(sd, small, cfg, noise, seed), small.num_hidden_layers, cfg.num_hidden_layers)
    grown = build(cfg, device="meta")
    grown.load_state_dict(
        {k: v.to(dtype) for k, v in sd.items()}, strict=not cfg.tie_word_embeddings, assign=True
    )
    if cfg.tie_word_embeddings:
        grown.lm_head.weight = grown.embed.weight
    return grown.eval()


def _tokenizer_vocab(d: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(d / "tokenizer.json")).get_vocab_size()


def grow_checkpoint(
    small_dir: str | Path, preset: str, out: str | Path, noise: float = 0.1, seed: int = 0
) -> dict:
    """Grow the HF-layout checkpoint `small_dir` into `preset`'s shape; write it (+ the small model's tokenizer)
    to `out` as an ordinary checkpoint. Returns sizes and the largest logit difference on a probe batch."""
    small_dir, out = Path(small_dir), Path(out)
    if not (small_dir / "tokenizer.json").is_file():
        raise GrowError(
            f"{small_dir / 'tokenizer.json'}: not found (the grown model keeps the small one's tokenizer)"
        )
    model = load_model(small_dir).eval()
    try:
        big = get_preset(preset)
    except ValueError as e:
        raise GrowError(str(e)) from None
    vocab = _tokenizer_vocab(small_dir)
    if vocab > model.cfg.vocab_size:
        raise GrowError(
            f"vocab_size: the tokenizer has {vocab} tokens, the model embeds {model.cfg.vocab_size} (tokenizer/model mismatch)"
        )
    grown = grow(model, big, noise, seed)
    probe = torch.randint(0, model.cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        diff = (grown(probe).float() - model(probe).float()).abs().max().item()
    info = {"small_params": model.num_params(), "params": grown.num_params(), "max_logit_diff": diff,
            "noise": noise, "seed": seed, "from": str(small_dir), "preset": preset}  # fmt: skip
    with atomic_path(out) as tmp:  # the whole directory appears at once (or replaces an older one)
        save_model(grown, tmp)
        for f in TOKENIZER_FILES:
            if (small_dir / f).is_file():
                atomic_write(tmp / f, (small_dir / f).read_bytes())
        write_json(tmp / "grow.json", info)
    return info
