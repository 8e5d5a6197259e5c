"""A quantized model still computes its loss from `targets` (eval and the speedrun's int4 val loss need it)."""

import torch
import torch.nn.functional as F

from phiforge.infer.quant import quantize_model
from phiforge.model import build, get_preset


def test_quantized_model_loss_equals_cross_entropy_of_its_logits():
    model = build(get_preset("tiny").replace(vocab_size=512), seed=0).eval()
    quantize_model(model, 4, 32)
    x = torch.randint(0, 512, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = model(x[:, :-1], targets=x[:, 1:])
        ref = F.cross_entropy(model(x[:, :-1]).flatten(0, 1).float(), x[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, ref)
