"""Run with a Python that has sae_lens, sparsify and/or dictionary_learning: ``python _reference_write.py ROOT``.

Builds dictionaries with each reference library that imports (random weights, seeded), saves them with the
library's own code into ``ROOT/<library>__<name>``, and writes ``ROOT/expected.safetensors``: the input ``x``
and, per folder NAME, ``NAME.c`` (the library's encode) and ``NAME.out`` (its reconstruction of x). Prints one
JSON object: the folders written, and per library the import error where it did not import.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

D, F, D_OUT, K = 16, 48, 12, 5


def randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if "threshold" not in name else 0.05))
            if "threshold" in name:
                p.abs_()


def saelens(root: Path, x: torch.Tensor, exp: dict) -> list[str]:
    import sae_lens as sl

    saes = {
        "standard": sl.StandardSAE(sl.StandardSAEConfig(d_in=D, d_sae=F)),
        "standard_nob": sl.StandardSAE(sl.StandardSAEConfig(d_in=D, d_sae=F, apply_b_dec_to_input=False)),
        "standard_ln": sl.StandardSAE(sl.StandardSAEConfig(d_in=D, d_sae=F, normalize_activations="layer_norm")),
        "topk": sl.TopKSAE(sl.TopKSAEConfig(d_in=D, d_sae=F, k=K)),
        "topk_rescaled": sl.TopKSAE(sl.TopKSAEConfig(d_in=D, d_sae=F, k=K, rescale_acts_by_decoder_norm=True)),
        "jumprelu": sl.JumpReLUSAE(sl.JumpReLUSAEConfig(d_in=D, d_sae=F)),
        "gated": sl.GatedSAE(sl.GatedSAEConfig(d_in=D, d_sae=F)),
        "transcoder": sl.Transcoder(sl.TranscoderConfig(d_in=D, d_sae=F, d_out=D_OUT, apply_b_dec_to_input=False)),
        "skip_transcoder": sl.SkipTranscoder(
            sl.SkipTranscoderConfig(d_in=D, d_sae=F, d_out=D_OUT, apply_b_dec_to_input=False)
        ),
        "jumprelu_transcoder": sl.JumpReLUTranscoder(
            sl.JumpReLUTranscoderConfig(d_in=D, d_sae=F, d_out=D_OUT, apply_b_dec_to_input=False)
        ),
        "jumprelu_skip_transcoder": sl.JumpReLUSkipTranscoder(
            sl.JumpReLUSkipTranscoderConfig(d_in=D, d_sae=F, d_out=D_OUT, apply_b_dec_to_input=False)
        ),
    }
    names = []
    for i, (name, sae) in enumerate(saes.items()):
        randomise(sae, i)
        sae.cfg.metadata.hook_name = (
            "blocks.3.ln2.hook_normalized" if "transcoder" in name else "blocks.3.hook_resid_post"
        )
        if "transcoder" in name:
            sae.cfg.metadata.hook_name_out = "blocks.3.hook_mlp_out"
        folder = f"saelens__{name}"
        sae.save_model(root / folder)
        with torch.no_grad():
            exp[f"{folder}.c"], exp[f"{folder}.out"] = sae.encode(x), sae(x)
        names.append(folder)
    return names


def sparsify(root: Path, x: torch.Tensor, exp: dict) -> list[str]:
    from sparsify import SparseCoder, SparseCoderConfig

    coders = {
        "layers.3": SparseCoderConfig(num_latents=F, k=K),
        "layers.4.mlp": SparseCoderConfig(num_latents=F, k=K, transcode=True, skip_connection=True),
    }
    names = []
    for i, (hookpoint, cfg) in enumerate(coders.items()):
        coder = SparseCoder(D, cfg)
        randomise(coder, 10 + i)
        folder = f"sparsify__{hookpoint}"
        (root / folder).mkdir()
        coder.save_to_disk(root / folder / hookpoint)
        (root / folder / "config.json").write_text(json.dumps({"model": "HuggingFaceTB/SmolLM2-135M"}))
        with torch.no_grad():
            enc = coder.encode(x)
            c = torch.zeros(len(x), F).scatter_(-1, enc.top_indices, enc.top_acts)
            exp[f"{folder}.c"], exp[f"{folder}.out"] = c, coder(x).sae_out
        names.append(folder)
    return names


def dictionary_learning(root: Path, x: torch.Tensor, exp: dict) -> list[str]:
    from dictionary_learning.dictionary import AutoEncoder, AutoEncoderNew, GatedAutoEncoder, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    dicts = {
        "AutoEncoder": AutoEncoder(D, F),
        "AutoEncoderNew": AutoEncoderNew(D, F),
        "GatedAutoEncoder": GatedAutoEncoder(D, F),
        "JumpReluAutoEncoder": JumpReluAutoEncoder(D, F),
        "AutoEncoderTopK": AutoEncoderTopK(D, F, K),
        "BatchTopKSAE": BatchTopKSAE(D, F, K),
        "MatryoshkaBatchTopKSAE": MatryoshkaBatchTopKSAE(D, F, K, [8, 16, 24]),
    }
    names = []
    for i, (cls, ae) in enumerate(dicts.items()):
        randomise(ae, 20 + i)
        if hasattr(ae, "threshold") and not isinstance(ae.threshold, torch.nn.Parameter):
            ae.threshold.fill_(0.2)  # what training's running minimum would have set
        folder = root / f"dictionary_learning__{cls}"
        folder.mkdir()
        torch.save({k: v.cpu() for k, v in ae.state_dict().items()}, folder / "ae.pt")
        trainer = {
            "dict_class": cls,
            "activation_dim": D,
            "dict_size": F,
            "layer": 3,
            "lm_name": "EleutherAI/pythia-70m-deduped",
            "submodule_name": "resid_post_layer_3",
        }
        (folder / "config.json").write_text(json.dumps({"trainer": trainer}))
        with torch.no_grad():
            c = ae.encode(x)
            exp[f"{folder.name}.c"], exp[f"{folder.name}.out"] = c, ae.decode(c)
        names.append(folder.name)
    return names


def main(root: str) -> None:
    root_p = Path(root)
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(7)) * 2 + 0.5
    exp: dict = {"x": x}
    report: dict = {"folders": [], "missing": {}}
    for writer in (saelens, sparsify, dictionary_learning):
        try:
            report["folders"] += writer(root_p, x, exp)
        except ImportError as e:
            report["missing"][writer.__name__] = str(e)
    save_file({k: v.contiguous() for k, v in exp.items()}, str(root_p / "expected.safetensors"))
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
