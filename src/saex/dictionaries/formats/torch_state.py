"""Reading a ``torch.save``d state dict without unpickling code: ``torch.load(weights_only=True)`` only."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch

from saex.errors import SaexError


def load_state_dict(path: Path) -> dict:
    """The tensors (and plain numbers and strings) of a ``.pt`` state dict. torch's restricted unpickler builds
    only tensors and plain containers, so a file that would run code on load is refused without running it."""
    try:
        with warnings.catch_warnings():  # a protocol note on plain pickles, not about the file's safety
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise SaexError(
            f"{path} is not a plain state dict saex can read safely (torch.load with weights_only=True refused it: "
            f"{e.__class__.__name__}: {first[:200]})"
        ) from e
    if not isinstance(obj, dict):
        raise SaexError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj
