"""Reading other libraries' dictionary files (saex.dictionaries.formats): each format's documented layout, built
by hand here, against its documented formula computed in float64 numpy; hook names mapped; hostile and
malformed files refused with one error; the hub path through a local hub cache. The folders the reference
libraries write themselves are checked in the optional tests at the end (side environments)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from saex.dictionaries import SAE, load_dictionary
from saex.dictionaries.formats import format_of, weights_file
from saex.errors import SaexError
from saex.naming import foreign_hook
from tests.dictionaries._formats import (
    Payload,
    weights,
    write_dictionary_learning,
    write_gemma_scope_1,
    write_gemma_scope_2,
    write_openai,
    write_sparsify,
)

D, F, K = 12, 40, 4


def _x(n=50, seed=3):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 1.5 + 0.3


def _ref(x, w, act, k=None, subtract=True, norm=None, skip=False):
    """(codes, reconstruction) by the formula, in float64 numpy."""
    x = x.double().numpy()
    W_enc, W_dec, b_enc, b_dec, th = (
        w[key].double().numpy() for key in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
    )
    mu, sd = np.zeros((len(x), 1)), np.ones((len(x), 1))
    xin = x
    if norm == "layer_norm":
        mu = x.mean(-1, keepdims=True)
        sd = (x - mu).std(-1, ddof=1, keepdims=True)
        xin = (x - mu) / (sd + 1e-5)
    pre = (xin - b_dec if subtract else xin) @ W_enc + b_enc
    if act == "relu":
        c = np.maximum(pre, 0)
    elif act == "jumprelu":
        c = np.maximum(pre, 0) * (pre > th)
    else:  # topk
        c = np.zeros_like(pre)
        idx = np.argsort(-pre, axis=-1)[:, :k]
        np.put_along_axis(c, idx, np.maximum(np.take_along_axis(pre, idx, -1), 0), -1)
    out = (c @ W_dec + b_dec) * sd + mu
    if skip:
        out = out + x @ w["W_skip"].double().numpy().T
    return c, out


def _check(d, x, c_ref, out_ref, tol=1e-5):
    with torch.no_grad():
        c, out = d.encode(x), d(x)
    np.testing.assert_allclose(c.double().numpy(), c_ref, atol=tol)
    np.testing.assert_allclose(out.double().numpy(), out_ref, atol=tol)


def test_sparsify_sae_and_transcoder(tmp_path):
    w = weights(D, F, 0)
    sae = load_dictionary(write_sparsify(tmp_path / "run", "layers.1", w, K))
    assert format_of(tmp_path / "run" / "layers.1") == "sparsify" and sae.architecture == "topk" and sae.k == K
    assert sae.metadata["hook_name"] == "blocks.1.hook_resid_post" and not sae.transcoder
    _check(sae, _x(), *_ref(_x(), w, "topk", K))
    tc = load_dictionary(write_sparsify(tmp_path / "run", "layers.2.mlp", w, K, transcode=True, skip=True))
    assert tc.transcoder and tc.metadata["hook_name"] == "blocks.2.ln2.hook_normalized"
    assert tc.metadata["target_hook"] == "blocks.2.hook_mlp_out"
    _check(tc, _x(), *_ref(_x(), w, "topk", K, subtract=False, skip=True))


def test_openai_topk_layer_normalises_and_relu_does_not(tmp_path):
    w = weights(D, F, 1)
    path = write_openai(tmp_path / "gpt2-small" / "resid_post_mlp_v5_32k" / "autoencoders" / "5.pt", w, K)
    sae = load_dictionary(path)
    assert format_of(path) == "openai" and sae.normalize == "layer_norm" and sae.k == K
    assert sae.metadata["hook_name"] == "blocks.5.hook_resid_post" and sae.metadata["model_name"] == "gpt2"
    _check(sae, _x(), *_ref(_x(), w, "topk", K, norm="layer_norm"))
    relu = load_dictionary(write_openai(tmp_path / "v1" / "resid_delta_mlp" / "2.pt", w, None))
    assert relu.normalize == "none" and relu.metadata["hook_name"] == "blocks.2.hook_mlp_out"
    _check(relu, _x(), *_ref(_x(), w, "relu"))
    # decode alone cannot undo a per-input normalisation: it needs the input
    with pytest.raises(SaexError, match="decode needs the input"):
        sae.decode(sae.encode(_x()))


def test_gemma_scope_1_npz_and_2_safetensors(tmp_path):
    w = weights(D, F, 2)
    gs1 = load_dictionary(
        write_gemma_scope_1(tmp_path / "gemma-scope-2b-pt-res" / "layer_3" / "width_16k" / "average_l0_9", w)
    )
    assert gs1.architecture == "jumprelu" and not gs1.apply_b_dec_to_input
    assert gs1.metadata["hook_name"] == "blocks.3.hook_resid_post" and gs1.metadata["model_name"] == "gemma-2-2b"
    _check(gs1, _x(), *_ref(_x(), w, "jumprelu", subtract=False))
    cfg = {
        "model_name": "gemma-3-270m-pt",
        "hf_hook_point_in": "model.layers.4.pre_feedforward_layernorm.output",
        "hf_hook_point_out": "model.layers.4.post_feedforward_layernorm.output",
        "affine_connection": True,
    }
    gs2 = load_dictionary(write_gemma_scope_2(tmp_path / "transcoder" / "layer_4", w, cfg, skip=True))
    assert gs2.transcoder and gs2.metadata["hook_name"] == "blocks.4.ln2.hook_normalized"
    assert gs2.metadata["target_hook"] == "blocks.4.hook_mlp_out"
    _check(gs2, _x(), *_ref(_x(), w, "jumprelu", subtract=False, skip=True))
    resid = load_dictionary(
        write_gemma_scope_2(
            tmp_path / "resid_post" / "layer_2",
            w,
            {"model_name": "gemma-3-270m", "hf_hook_point_in": "model.layers.2.output"},
        )
    )
    assert not resid.transcoder and resid.metadata["hook_name"] == "blocks.2.hook_resid_post"


def test_dictionary_learning_classes(tmp_path):
    w = weights(D, F, 3)
    x = _x()
    enc, dec = w["W_enc"].T.contiguous(), w["W_dec"].T.contiguous()
    cases = {
        "AutoEncoder": (
            {"encoder.weight": enc, "encoder.bias": w["b_enc"], "decoder.weight": dec, "bias": w["b_dec"]},
            _ref(x, w, "relu"),
        ),
        "AutoEncoderNew": (
            {"encoder.weight": enc, "encoder.bias": w["b_enc"], "decoder.weight": dec, "decoder.bias": w["b_dec"]},
            _ref(x, w, "relu", subtract=False),
        ),
        "JumpReluAutoEncoder": (
            {key: w[key] for key in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")},
            _ref(x, w, "jumprelu", subtract=False),
        ),
        "AutoEncoderTopK": (
            {
                "encoder.weight": enc,
                "encoder.bias": w["b_enc"],
                "decoder.weight": dec,
                "b_dec": w["b_dec"],
                "k": torch.tensor(K, dtype=torch.int),
                "threshold": torch.tensor(-1.0),
            },
            _ref(x, w, "topk", K),
        ),
    }
    # BatchTopK keeps what clears one scalar threshold
    th = {**w, "threshold": torch.full((F,), 0.15)}
    cases["BatchTopKSAE"] = (
        {
            "encoder.weight": enc,
            "encoder.bias": w["b_enc"],
            "decoder.weight": dec,
            "b_dec": w["b_dec"],
            "k": torch.tensor(K, dtype=torch.int),
            "threshold": torch.tensor(0.15),
        },
        _ref(x, th, "jumprelu"),
    )
    for cls, (sd, (c_ref, out_ref)) in cases.items():
        d = load_dictionary(write_dictionary_learning(tmp_path / cls, cls, sd, layer=2))
        assert d.metadata["dict_class"] == cls and d.metadata["hook_name"] == "blocks.2.hook_resid_post", cls
        _check(d, x, c_ref, out_ref)
    # without its config.json the class is told by its keys
    (tmp_path / "AutoEncoder" / "config.json").unlink()
    assert load_dictionary(tmp_path / "AutoEncoder" / "ae.pt").metadata["dict_class"] == "AutoEncoder"
    # a BatchTopK saved before training set its threshold (still -1) would keep every positive code: refused
    sd = dict(cases["BatchTopKSAE"][0], threshold=torch.tensor(-1.0))
    with pytest.raises(SaexError, match="threshold"):
        load_dictionary(write_dictionary_learning(tmp_path / "untrained", "BatchTopKSAE", sd))


def test_saelens_older_configs_and_normalisations(tmp_path):
    w = weights(D, F, 4)
    x = _x()
    sl = {key: w[key] for key in ("W_enc", "W_dec", "b_enc", "b_dec")}
    folder = tmp_path / "old"
    folder.mkdir()
    save_file(sl, str(folder / "sae_weights.safetensors"))
    # SAELens before 6.0: hook_point, TopK as an activation_fn; apply_b_dec_to_input defaulted to true
    (folder / "cfg.json").write_text(
        json.dumps(
            {
                "d_in": D,
                "d_sae": F,
                "hook_point": "blocks.1.hook_resid_post",
                "activation_fn_str": "topk",
                "activation_fn_kwargs": {"k": K},
                "model_name": "gpt2-small",
                "dtype": "float32",
            }
        )
    )
    d = load_dictionary(folder)
    assert d.architecture == "topk" and d.k == K and d.metadata["source_format"] == "saelens"
    assert d.metadata["hook_name"] == "blocks.1.hook_resid_post"
    _check(d, x, *_ref(x, w, "topk", K))
    (folder / "cfg.json").write_text(
        json.dumps(
            {
                "d_in": D,
                "d_sae": F,
                "architecture": "standard",
                "normalize_activations": "layer_norm",
                "dtype": "float32",
                "metadata": {"hook_name": "blocks.1.hook_resid_mid", "sae_lens_version": "6.54.12"},
            }
        )
    )
    d = load_dictionary(folder)
    _check(d, x, *_ref(x, w, "relu", norm="layer_norm"))
    # a hook point saex does not have: the dictionary opens, and the stage that needs the hook says why not
    assert d.metadata["hook_name"] is None and "no saex equivalent" in d.metadata["hook_error"]
    # constant_norm_rescale: each input scaled to norm √d_in, the output scaled back
    (folder / "cfg.json").write_text(
        json.dumps({"d_in": D, "d_sae": F, "normalize_activations": "constant_norm_rescale", "dtype": "float32"})
    )
    d = load_dictionary(folder)
    s = x.norm(dim=-1, keepdim=True) / D**0.5
    c_ref, out_ref = _ref(x / s, w, "relu")
    _check(d, x, c_ref, out_ref * s.double().numpy())


def test_foreign_hook_names():
    table = {
        ("blocks.3.hook_resid_post", None): "blocks.3.hook_resid_post",
        ("layers.3", None): "blocks.3.hook_resid_post",
        ("model.layers.3", None): "blocks.3.hook_resid_post",
        ("model.layers.3.output", "gemma-3-270m"): "blocks.3.hook_resid_post",
        ("gpt_neox.layers.3", None): "blocks.3.hook_resid_post",
        ("transformer.h.3", "gpt2"): "blocks.3.hook_resid_post",
        ("layers.3.input", None): "blocks.3.hook_resid_pre",
        ("layers.3.mlp", "HuggingFaceTB/SmolLM2-135M"): "blocks.3.hook_mlp_out",
        ("layers.3.mlp.input", None): "blocks.3.ln2.hook_normalized",
        ("model.layers.3.post_attention_layernorm.output", "llama"): "blocks.3.ln2.hook_normalized",
        ("model.layers.3.post_attention_layernorm.output", "google/gemma-3-270m"): "blocks.3.hook_attn_out",
        ("model.layers.3.post_feedforward_layernorm.output", "gemma-3-1b"): "blocks.3.hook_mlp_out",
        ("model.layers.3.mlp.down_proj.input", None): "blocks.3.mlp.hook_post",
        ("layers.3.self_attn", None): "blocks.3.hook_attn_out",
    }
    for (name, model), want in table.items():
        assert foreign_hook(name, model) == want, name
    for bad in ("blocks.3.attn.hook_z", "hook_embed", "embed_tokens", "model.layers.3.self_attn.o_proj.input"):
        with pytest.raises(SaexError, match="saex"):
            foreign_hook(bad, "gemma-3-270m")
    # Gemma's MLP module output comes before its post-feedforward norm: not saex's hook_mlp_out
    with pytest.raises(SaexError):
        foreign_hook("layers.3.mlp", "gemma-3-270m")


def test_pickled_code_is_never_run(tmp_path):
    marker = tmp_path / "pwned"
    for path in (tmp_path / "dl" / "ae.pt", tmp_path / "resid_post_mlp" / "3.pt"):
        path.parent.mkdir(parents=True)
        with open(path, "wb") as fh:
            pickle.dump({"encoder.weight": Payload(marker), "pre_bias": 1, "latent_bias": 2}, fh)
        with pytest.raises(SaexError, match="weights_only"):
            load_dictionary(path if path.name != "ae.pt" else path.parent)
        assert not marker.exists()
    # the same through torch.save's zip format
    torch.save({"W_enc": Payload(marker)}, tmp_path / "dl" / "ae.pt")
    with pytest.raises(SaexError, match="weights_only"):
        load_dictionary(tmp_path / "dl")
    assert not marker.exists()


def test_malformed_inputs_get_one_error(tmp_path):
    w = weights(D, F, 5)
    good = SAE(w["W_enc"], w["W_dec"], w["b_enc"], w["b_dec"], metadata={"hook_name": "blocks.1.hook_resid_post"})
    cases = {}
    for name in ("missing_weights", "wrong_shape", "unknown_arch", "garbage", "not_json", "no_W_enc"):
        good.save(tmp_path / name)
        cases[name] = tmp_path / name
    (cases["missing_weights"] / "sae_weights.safetensors").unlink()
    save_file(
        {
            **{k: v for k, v in load_file(str(cases["wrong_shape"] / "sae_weights.safetensors")).items()},
            "W_dec": torch.zeros(F + 1, D),
        },
        str(cases["wrong_shape"] / "sae_weights.safetensors"),
    )
    cfg = json.loads((cases["unknown_arch"] / "cfg.json").read_text())
    (cases["unknown_arch"] / "cfg.json").write_text(json.dumps({**cfg, "architecture": "temporal"}))
    (cases["garbage"] / "sae_weights.safetensors").write_bytes(b"\x00\x01garbage" * 10)
    (cases["not_json"] / "cfg.json").write_text("{truncated")
    save_file(
        {"W_dec": w["W_dec"], "b_enc": w["b_enc"], "b_dec": w["b_dec"]},
        str(cases["no_W_enc"] / "sae_weights.safetensors"),
    )
    # A saex folder whose weights changed after it was written fails its checksum; with the checksum removed (a
    # folder from another library records none) the deeper checks see the same files.
    for name in ("wrong_shape", "garbage", "no_W_enc"):
        with pytest.raises(SaexError, match="sae_weights.safetensors is corrupted or was changed after it was written"):
            load_dictionary(cases[name])
        cfg = json.loads((cases[name] / "cfg.json").read_text())
        del cfg["metadata"]["weights_sha256"]
        (cases[name] / "cfg.json").write_text(json.dumps(cfg))
    expect = {
        "missing_weights": "no dictionary saex reads",
        "wrong_shape": "inconsistent SAE shapes",
        "unknown_arch": "'temporal' has no saex equivalent",
        "garbage": "not a readable safetensors",
        "not_json": "not readable JSON",
        "no_W_enc": "no tensor 'W_enc'",
    }
    for name, pattern in expect.items():
        with pytest.raises(SaexError, match=pattern):
            load_dictionary(cases[name])
    with pytest.raises(SaexError, match="does not exist"):
        load_dictionary(tmp_path / "nowhere")
    # an .npz holding a pickled object array is refused without unpickling it
    folder = tmp_path / "npz"
    folder.mkdir()
    np.savez(folder / "params.npz", W_enc=np.array([Payload(tmp_path / "pwned")], dtype=object))
    with pytest.raises(SaexError, match="npz"):
        load_dictionary(folder)
    assert not (tmp_path / "pwned").exists()
    # an unsupported sparsify activation and a .pt that is not a state dict
    sp = write_sparsify(tmp_path / "sp", "layers.1", w, K)
    (sp / "cfg.json").write_text(json.dumps({**json.loads((sp / "cfg.json").read_text()), "activation": "groupmax"}))
    with pytest.raises(SaexError, match="groupmax"):
        load_dictionary(sp)
    (tmp_path / "dl").mkdir()
    torch.save([1, 2], tmp_path / "dl" / "ae.pt")
    with pytest.raises(SaexError, match="not a state dict"):
        load_dictionary(tmp_path / "dl")


def test_hub_folder_through_the_local_hub_cache(tmp_path, monkeypatch):
    """``hf://owner/repo/folder`` goes through huggingface_hub's snapshot_download: here, offline, it resolves
    from a hub cache laid out as huggingface_hub lays it out; an uncached repository gets one clear error."""
    cache = tmp_path / "hub"
    snap = cache / "models--someone--saes" / "snapshots" / ("a" * 40)
    w = weights(D, F, 6)
    write_sparsify(snap, "layers.1", w, K)
    (cache / "models--someone--saes" / "refs").mkdir(parents=True)
    (cache / "models--someone--saes" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    d = load_dictionary("hf://someone/saes/layers.1")
    assert d.metadata["source_format"] == "sparsify" and d.metadata["hook_name"] == "blocks.1.hook_resid_post"
    _check(d, _x(), *_ref(_x(), w, "topk", K))
    with pytest.raises(SaexError, match="could not download hf://someone/other"):
        load_dictionary("hf://someone/other/layers.1")
    with pytest.raises(SaexError, match="hf://owner/repo"):
        load_dictionary("hf://justone")


def test_weights_file_names_the_file_each_format_keeps_its_weights_in(tmp_path):
    w = weights(D, F, 7)
    assert weights_file(write_sparsify(tmp_path, "layers.1", w, K)).name == "sae.safetensors"
    assert weights_file(write_gemma_scope_1(tmp_path / "gs", w)).name == "params.npz"
    p = write_openai(tmp_path / "o" / "1.pt", w, K)
    assert weights_file(p) == p


# -- the reference libraries themselves (optional side environments) -------------------------------------------
def _side(var: str):
    return pytest.mark.skipif(not os.environ.get(var), reason=f"set {var} to a Python with the reference library")


def _write_with_references(python: str, root: Path) -> dict:
    script = Path(__file__).with_name("_reference_write.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([python, str(script), str(root)], capture_output=True, text=True, env=env, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _read_all(root: Path, names: list[str]) -> None:
    exp = load_file(str(root / "expected.safetensors"))
    x = exp["x"]
    for name in names:
        path = root / name
        if name.startswith("sparsify__"):
            path = path / name.split("__", 1)[1]
        d = load_dictionary(path)
        with torch.no_grad():
            c, out = d.encode(x), d(x)
        assert (c - exp[f"{name}.c"]).abs().max() < 1e-5, name
        assert (out - exp[f"{name}.out"]).abs().max() < 1e-5, name


@_side("SAEX_SAELENS_PYTHON")
@pytest.mark.timeout(300)
def test_folders_saelens_and_sparsify_wrote(tmp_path):
    """E.g. ``/tmp/saelens-venv/bin/pip install torch==2.13.0 sae-lens==6.54.12 eai-sparsify==1.3.3``."""
    report = _write_with_references(os.environ["SAEX_SAELENS_PYTHON"], tmp_path)
    assert not report["missing"].get("saelens") and not report["missing"].get("sparsify"), report["missing"]
    assert len([n for n in report["folders"] if n.startswith("saelens__")]) == 11
    _read_all(tmp_path, report["folders"])


@_side("SAEX_DICTIONARY_LEARNING_PYTHON")
@pytest.mark.timeout(300)
def test_folders_dictionary_learning_wrote(tmp_path):
    """E.g. ``python3 -m venv /tmp/dl-venv && /tmp/dl-venv/bin/pip install torch==2.13.0 dictionary-learning==0.1.0
    'transformers<4.50' && /tmp/dl-venv/bin/pip uninstall -y torchvision``."""
    report = _write_with_references(os.environ["SAEX_DICTIONARY_LEARNING_PYTHON"], tmp_path)
    assert not report["missing"].get("dictionary_learning"), report["missing"]
    assert len(report["folders"]) >= 7
    _read_all(tmp_path, report["folders"])
