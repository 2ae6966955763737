"""Reading a ``torch.save``d state dict without unpickling code: ``torch.load(weights_only=True)`` only."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from saex.errors import SaexError


def load_state_dict(path: Path, keys_only: bool = False) -> dict:
    """The tensors (and plain numbers and strings) of a ``.pt`` state dict. torch's restricted unpickler builds
    only tensors and plain containers, so a file that would run code on load is refused without running it.
    With ``keys_only`` (format detection) a file in torch's zip format is memory-mapped, so little of a large
    file is read; the dictionary itself is built from a full read."""
    try:
        with warnings.catch_warnings():  # a protocol note on plain pickles, not about the file's safety
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=keys_only and zipfile.is_zipfile(path))
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise SaexError(
            f"{path} is not a plain state dict saex can read safely (torch.load with weights_only=True refused it: "
            f"{e.__class__.__name__}: {first[:200]})"
        ) from e
    if not isinstance(obj, dict):
        raise SaexError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj
