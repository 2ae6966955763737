"""``saex convert``: write a dictionary (saex's, or any format ``saex.dictionaries.formats`` reads) in SAELens's or
sparsify's layout, checked on the way out: the written folder, read back, encodes and decodes as the source.

SAELens's layout is saex's own, so ``--to saelens`` also turns a sparsify, dictionary_learning, Gemma Scope or
OpenAI file into a folder SAELens's ``SAE.load_from_disk`` opens. sparsify holds TopK coders only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from saex.config import Config, opt
from saex.dictionaries import load_dictionary
from saex.dictionaries.formats import sparsify
from saex.dictionaries.sae import CFG, SAE
from saex.errors import SaexError
from saex.files import check_output_folder, locked_output
from saex.lm.hooks import hook_order

NAME = "convert"
HELP = "write a dictionary in SAELens's or sparsify's format"


@dataclass
class ConvertConfig(Config):
    """What ``saex convert`` reads and where it writes it."""

    source: str = opt(positional=True)
    """The dictionary: a saex or SAELens folder, a sparsify hookpoint folder, a dictionary_learning ae.pt, a Gemma
    Scope params.npz / params.safetensors, an OpenAI .pt, or hf://owner/repo/folder."""
    to: Literal["saelens", "sparsify"] = opt()
    """Format to write."""
    out: str = opt()
    """Output folder (SAELens: the dictionary folder itself; sparsify: the run folder, which gets one folder
    named by the hookpoint)."""
    hook: str | None = None
    """The saex hook point it reads (blocks.L.kind), where the source records none saex can map."""


CONFIG = ConvertConfig


def same_function(a: SAE, b: SAE, seed: int = 0, rows: int = 256) -> float:
    """Largest |difference| of the codes and reconstructions of two dictionaries on random inputs at the scale
    of ``a``'s decoder bias and rows (0 means the conversion is exact)."""
    g = torch.Generator().manual_seed(seed)
    scale = float(a.W_dec_FD.norm(dim=-1).mean()) * 3 + float(a.b_dec_D.abs().mean())
    x = torch.randn(rows, a.d_in, generator=g) * scale
    with torch.no_grad():
        return max(float((a.encode(x) - b.encode(x)).abs().max()), float((a(x) - b(x)).abs().max()))


@locked_output("saex convert")
def run(cfg: ConvertConfig, progress: bool = True) -> Path:
    d = load_dictionary(cfg.source)
    if cfg.hook:
        hook_order(cfg.hook)  # one clear error for a name that is not a saex hook point
        d.metadata = {**d.metadata, "hook_name": cfg.hook}
        d.metadata.pop("hook_error", None)
    d.metadata = {**d.metadata, "converted_from": str(cfg.source)}
    out = Path(cfg.out)
    if cfg.to == "saelens":
        if d.architecture == "linear":
            raise SaexError(f"{cfg.source} is a linear (PCA / ICA) dictionary, which SAELens has no class for")
        if check_output_folder(out, CFG, "dictionary"):
            raise SaexError(f"--out {out} already holds a dictionary; choose another --out")
        folder = d.save(out)
        back = SAE.load(folder)
    else:
        sparsify.check_writable(d)
        if not d.metadata.get("hook_name"):
            raise SaexError(
                f"{cfg.source} records no hook point saex can map ({d.metadata.get('hook_error', 'none recorded')}); "
                "name it with --hook, which sparsify needs to name the folder"
            )
        target = out / sparsify.hookpoint(d)
        if target.exists():
            raise SaexError(f"{target} already exists; choose another --out")
        folder = sparsify.write(d, out)
        back = sparsify.read(folder)
    diff = same_function(d, back)
    if diff > 1e-5 * (1 + float(d.W_dec_FD.abs().max())):
        raise SaexError(f"the converted {folder} differs from the source by {diff:.3g}; please report this")
    print(f"wrote {folder} ({cfg.to}; {d.architecture}, d_in {d.d_in}, d_sae {d.d_dict}; max difference {diff:.2g})")
    return folder
