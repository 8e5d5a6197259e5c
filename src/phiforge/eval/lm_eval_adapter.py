"""phiforge models inside lm-evaluation-harness (`pip install phiforge[dev]` or `lm-eval>=0.4.8`).

Importing this module registers the model name "phiforge" with lm-eval:

    import phiforge.eval.lm_eval_adapter  # noqa: F401  (registers "phiforge")
    lm_eval.simple_evaluate(model="phiforge", model_args="path=runs/x/ckpt", tasks=[...])

From the shell, lm-eval 0.4.x's own `lm_eval` script has no plugin discovery (its model registry is a
fixed table), so run its CLI through phiforge, which registers the model first; every lm_eval flag works:

    phiforge lm-eval --model phiforge --model_args path=DIR --tasks hellaswag --limit 50
    python -m phiforge.eval.lm_eval_adapter --model phiforge --model_args path=DIR --tasks ...

Scoring goes through phiforge.infer.score (the same code as phiforge's own multiple-choice tasks), so
both harnesses give the same numbers for the same prompts.
"""

from __future__ import annotations

import sys

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from ..infer import score
from ..infer.engine import Engine
from ..infer.sampling import SamplingParams


@register_model("phiforge")
class PhiforgeLM(TemplateLM):
    def __init__(
        self,
        path: str,
        score_tokens: int | str = 4096,
        batch_size: int | str | None = None,
        device: str | None = None,
        **_,
    ):
        super().__init__()
        device = device or "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's CLI passes device="cuda" by default; its own HF model also falls back to the CPU
            print(f"phiforge: device {device!r} is not available, using cpu", file=sys.stderr)
            device = "cpu"
        self.engine = Engine.load(path, device=device)
        self.score_tokens = int(score_tokens)
        self.gen_batch = int(batch_size) if str(batch_size).isdigit() else 8

    @property
    def eot_token_id(self) -> int:
        return score.prefix_token(self.engine) if self.engine.tok.eos_id is None else self.engine.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        return score.prefix_token(self.engine)

    @property
    def max_length(self) -> int:
        return self.engine.cfg.max_position_embeddings

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kw) -> list[int]:
        return self.engine.tokenizer.encode(string)

    def tok_decode(self, tokens, **kw) -> str:
        return self.engine.tokenizer.decode(tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kw):
        reqs = [(ctx, cont) for _, ctx, cont in requests]
        return score.loglikelihood_tokens(self.engine, reqs, max_tokens=self.score_tokens)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return score.loglikelihood_rolling(self.engine, [r.args[0] for r in requests], self.score_tokens)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        ctx_len = self.max_length
        for req in requests:  # one at a time keeps per-request gen_kwargs simple; batching is the engine's
            context, kw = req.args
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            new = int(kw.get("max_gen_toks", 256))
            temp = float(kw.get("temperature", 0.0)) if kw.get("do_sample", False) else 0.0
            ids = self.tok_encode(context)[-(ctx_len - new) :] or [self.prefix_token_id]
            params = SamplingParams(max_new_tokens=new, temperature=temp, stop=until, seed=0)
            out.append(self.engine.generate([ids], params)[0].text)
        return out


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with "phiforge" registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = ["lm_eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
