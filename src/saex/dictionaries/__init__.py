"""Dictionaries: the protocol every method implements, the trainable SAEs, and their files.

The Dictionary protocol (docs/architecture.md): ``encode(x_BD) -> c_BF``, ``decode(c_BF) -> xhat_BD``,
``W_dec_FD`` (unit-norm feature directions where the method has them), ``d_in``, ``d_dict``. SAEs and
baselines both implement it, so evaluation, interpretation and patching take any of them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from saex.dictionaries.ensemble import Ensemble, architecture_names, architectures, register
from saex.dictionaries.sae import SAE
from saex.dictionaries.tied_l1 import TiedL1
from saex.dictionaries.topk import TopK
from saex.dictionaries.untied_l1 import UntiedL1

#: The baselines of the paper (Fig. 2, 10, 18), built by ``saex baselines`` through the same interface.
BASELINE_KINDS = ("neurons", "random", "pca", "pca_split", "pca_topk", "ica", "ica_topk")


@runtime_checkable
class Dictionary(Protocol):
    d_in: int
    d_dict: int
    W_dec_FD: torch.Tensor

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor: ...

    def decode(self, c_BF: torch.Tensor, x_BD: torch.Tensor | None = None) -> torch.Tensor: ...


def load_dictionary(path) -> SAE:
    """Open a dictionary whatever wrote it: saex or SAELens (its layout), sparsify, dictionary_learning, Gemma
    Scope, OpenAI's ``sparse_autoencoder``, or ``hf://owner/repo/folder`` (``saex.dictionaries.formats``)."""
    from saex.dictionaries import formats  # lazy: formats imports this package's SAE

    return formats.load(path)


__all__ = [
    "BASELINE_KINDS",
    "SAE",
    "Dictionary",
    "Ensemble",
    "TiedL1",
    "TopK",
    "UntiedL1",
    "architecture_names",
    "architectures",
    "load_dictionary",
    "register",
]
