"""Run with a Python that has sparsify: ``python _sparsify_check.py ROOT``.

ROOT holds sparsify hookpoint folders (``ROOT/NAME/<hookpoint>/cfg.json``) written by ``saex convert`` plus
``expected.safetensors`` (``x`` and, per NAME, ``NAME.c`` and ``NAME.out``: saex's codes and reconstruction).
Each is opened with ``sparsify.SparseCoder.load_from_disk``; prints one JSON object: per NAME, the max abs
differences of the codes and of the reconstruction against saex's, or the error raised while loading.
"""

import json
import sys
import traceback
from pathlib import Path

import torch
from safetensors.torch import load_file


def main(root: str) -> None:
    from sparsify import SparseCoder

    root_p = Path(root)
    exp = load_file(str(root_p / "expected.safetensors"))
    x = exp["x"]
    report = {}
    for folder in sorted(p for p in root_p.iterdir() if p.is_dir()):
        try:
            (hookpoint,) = [p for p in folder.iterdir() if (p / "cfg.json").is_file()]
            coder = SparseCoder.load_from_disk(hookpoint)
            with torch.no_grad():
                enc = coder.encode(x)
                c = torch.zeros(len(x), coder.num_latents).scatter_(-1, enc.top_indices, enc.top_acts)
                out = coder(x).sae_out
            report[folder.name] = {
                "hookpoint": hookpoint.name,
                "encode_max_abs_diff": (c - exp[f"{folder.name}.c"]).abs().max().item(),
                "forward_max_abs_diff": (out - exp[f"{folder.name}.out"]).abs().max().item(),
            }
        except Exception as e:  # report, don't stop: every folder is checked
            report[folder.name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=3)}
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
