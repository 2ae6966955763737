"""Small ensembles with non-trivial parameters, shared by the dictionary tests."""

from __future__ import annotations

import torch

from saex.dictionaries import TiedL1, TopK, UntiedL1
from saex.dictionaries.batchtopk import BatchTopK


def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Random (seeded) offsets on every trainable parameter, so that biases are non-zero and rows not unit-norm."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:  # a disabled decoder bias stays zero, as in training
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def tied(D=8, F=16, K=2, seed=0):
    return perturb(TiedL1(D, F, [11 + i for i in range(K)]), seed)


def untied(D=8, F=16, K=2, decoder_bias=False, seed=0, **kw):
    return perturb(UntiedL1(D, F, [21 + i for i in range(K)], decoder_bias=decoder_bias, **kw), seed)


def topk(D=8, F=16, K=2, k=3, aux_k=4, seed=0, **kw):
    return perturb(TopK(D, F, [31 + i for i in range(K)], k=k, aux_k=aux_k, **kw), seed)


def batchtopk(D=8, F=16, K=2, k=3, seed=0):
    """A BatchTopK ensemble after one training step (which sets its inference threshold)."""
    m = perturb(BatchTopK(D, F, [41 + i for i in range(K)], k=k, aux_k=4), seed)
    m.step(inputs(D=D, seed=seed + 7), torch.zeros(K))
    return m


def inputs(B=32, D=8, seed=1, scale=1.0):
    return torch.randn(B, D, generator=torch.Generator().manual_seed(seed)) * scale


def jumprelu(D=8, F=16, K=2, seed=0, **kw):
    """A JumpReLU ensemble with thresholds spread around the pre-activations' scale."""
    from saex.dictionaries.jumprelu import JumpReLU

    m = perturb(JumpReLU(D, F, [51 + i for i in range(K)], **kw), seed)
    with torch.no_grad():
        m.threshold_KF.copy_(torch.rand(m.threshold_KF.shape, generator=torch.Generator().manual_seed(seed)) * 0.5)
    return m


def gated(D=8, F=16, K=2, seed=0, **kw):
    from saex.dictionaries.gated import Gated

    return perturb(Gated(D, F, [61 + i for i in range(K)], **kw), seed)


def matryoshka(D=8, F=16, K=2, k=3, seed=0, **kw):
    from saex.dictionaries.matryoshka import Matryoshka

    return perturb(Matryoshka(D, F, [71 + i for i in range(K)], k=k, aux_k=4, prefixes=[0.25, 0.5], **kw), seed)
