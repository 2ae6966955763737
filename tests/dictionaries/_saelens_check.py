"""Run with a Python that has sae_lens: ``python _saelens_check.py ROOT``.

ROOT holds dictionary folders written by saex plus ``expected.safetensors`` (``x`` and, per folder NAME,
``NAME.c``, ``NAME.xhat`` (decode) and ``NAME.out`` (forward, a skip transcoder's skip term included) as saex
computed them). Each folder is opened with
``sae_lens.SAE.load_from_disk``; the script prints one JSON object: per folder, the SAELens class, the
max abs differences of encode / decode against saex, or the error raised while loading.
"""

import json
import sys
import traceback
from pathlib import Path

import torch
from safetensors.torch import load_file


def main(root: str) -> None:
    from sae_lens import SAE

    root = Path(root)
    exp = load_file(str(root / "expected.safetensors"))
    x = exp["x"]
    report = {}
    for folder in sorted(p for p in root.iterdir() if (p / "cfg.json").is_file()):
        try:
            sae = SAE.load_from_disk(str(folder), device="cpu")
            with torch.no_grad():
                c = sae.encode(x)
                xhat = sae.decode(c)
                out = sae(x)
            report[folder.name] = {
                "class": type(sae).__name__,
                "encode_max_abs_diff": (c - exp[f"{folder.name}.c"]).abs().max().item(),
                "decode_max_abs_diff": (xhat - exp[f"{folder.name}.xhat"]).abs().max().item(),
                "forward_max_abs_diff": (out - exp[f"{folder.name}.out"]).abs().max().item(),
                "l0": (c > 0).sum(-1).float().mean().item(),
            }
        except Exception as e:  # report, don't stop: every folder is checked
            report[folder.name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=3)}
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
