"""The inference SAE: files in SAELens's layout, round trips, errors, and SAELens itself opening them."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saex.dictionaries import SAE, load_dictionary
from saex.errors import SaexError
from tests.dictionaries._build import batchtopk, gated, inputs, jumprelu, matryoshka, tied, topk, untied

META = {"model_name": "tiny-model", "hook_name": "blocks.1.hook_resid_post", "alpha": 0.01, "ratio": 2.0}


def _stepped(model, transcoder=False):
    """After one training step (BatchTopK and Matryoshka set their inference threshold in training)."""
    y = inputs(B=32, D=5, seed=12) if transcoder else None
    model(inputs(B=32, D=8, seed=11), torch.zeros(model.K), None, y)
    return model


TC = {**META, "target_hook": "blocks.1.hook_mlp_out"}


def exported() -> dict[str, SAE]:
    """One exported SAE of every architecture / option, with non-trivial biases (scale != 1); transcoders
    onto a 5-wide target, with and without the skip connection."""
    return {
        "tied_l1": tied().export(0, scale=2.0, metadata=META),
        "untied_l1": untied().export(1, scale=0.5, metadata=META),
        "untied_l1_bdec": untied(decoder_bias=True).export(0, scale=3.0, metadata=META),
        "topk": topk(k=3).export(1, scale=2.0, metadata=META),
        "batchtopk": batchtopk(k=3).export(1, scale=2.0, metadata=META),
        "matryoshka": _stepped(matryoshka(k=3)).export(1, scale=2.0, metadata=META),
        "jumprelu": jumprelu().export(1, scale=2.0, metadata=META),
        "gated": gated().export(0, scale=2.0, metadata=META),
        "transcoder": untied(decoder_bias=False, d_out=5).export(0, 2.0, TC, out_scale=3.0),
        "skip_transcoder": untied(d_out=5, skip=True).export(1, 2.0, TC, out_scale=0.5),
        "jumprelu_transcoder": jumprelu(d_out=5).export(0, 2.0, TC, out_scale=3.0),
        "topk_skip_transcoder": topk(k=3, d_out=5, skip=True).export(0, 2.0, TC, out_scale=3.0),
    }


#: Architectures saex writes that SAELens has no class for (the check leaves them out).
NOT_IN_SAELENS = {"topk_skip_transcoder"}
ALL = list(exported())


@pytest.mark.parametrize("name", ALL)
def test_save_load_round_trip_is_bitwise(tmp_path, name):
    sae = exported()[name]
    folder = sae.save(tmp_path / name)
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    back = load_dictionary(folder)
    for a in ("W_enc_DF", "W_dec_FD", "b_enc_F", "b_dec_D", "threshold_F", "b_gate_F", "r_mag_F", "W_skip_OD"):
        assert (getattr(back, a) is None) == (getattr(sae, a) is None), a
        assert getattr(sae, a) is None or torch.equal(getattr(back, a), getattr(sae, a)), a
    assert (sae.threshold_F is not None) == (name in ("batchtopk", "matryoshka", "jumprelu", "jumprelu_transcoder"))
    if sae.threshold_F is not None:  # JumpReLU: the threshold is saved with the weights
        assert float(sae.threshold_F.min()) >= 0
    assert (back.architecture, back.k, back.apply_b_dec_to_input, back.metadata, back.transcoder) == (
        sae.architecture,
        sae.k,
        sae.apply_b_dec_to_input,
        sae.metadata,
        sae.transcoder,
    )
    x = inputs(D=sae.d_in)
    assert torch.equal(back.encode(x), sae.encode(x)) and torch.equal(back(x), sae(x))
    # the weights file holds exactly SAELens's tensors for the architecture, float32, in SAELens's orientation
    w = load_file(str(folder / "sae_weights.safetensors"))
    F, D, D_out = sae.d_dict, sae.d_in, sae.d_out
    want = {"W_enc": (D, F), "W_dec": (F, D_out), "b_enc": (F,), "b_dec": (D_out,)}
    if sae.architecture == "jumprelu":
        want["threshold"] = (F,)
    if sae.architecture == "gated":  # SAELens's gated SAE: b_gate, r_mag and b_mag, no b_enc
        want |= {"b_gate": (F,), "r_mag": (F,), "b_mag": want.pop("b_enc")}
    if sae.W_skip_OD is not None:
        want["W_skip"] = (D_out, D)
    assert {k: tuple(v.shape) for k, v in w.items()} == want
    cfg = json.loads((folder / "cfg.json").read_text())
    arch = {"untied_l1_bdec": "standard", "tied_l1": "standard", "untied_l1": "standard"}.get(name, name)
    assert cfg["architecture"] == {"batchtopk": "jumprelu", "matryoshka": "jumprelu"}.get(arch, arch)
    assert ("d_out" in cfg) == sae.transcoder and (cfg.get("hook_name_out") == TC["target_hook"]) == sae.transcoder
    assert all(v.dtype == torch.float32 for v in w.values())
    # saving again writes the same bytes
    again = back.save(tmp_path / "again")
    assert (again / "sae_weights.safetensors").read_bytes() == (folder / "sae_weights.safetensors").read_bytes()
    assert (again / "cfg.json").read_text() == (folder / "cfg.json").read_text()


def test_cfg_json_fields(tmp_path):
    saes = exported()
    cfgs = {n: json.loads((s.save(tmp_path / n) / "cfg.json").read_text()) for n, s in saes.items()}
    for n, cfg in cfgs.items():
        assert cfg["d_in"] == 8 and cfg["d_sae"] == 16 and cfg["dtype"] == "float32", n
        extra = {"matryoshka_prefixes": [4, 8, 16]} if n == "matryoshka" else {}
        # the weights' SHA-256, which loading verifies (safetensors has no checksum of its own)
        digest = hashlib.sha256((tmp_path / n / "sae_weights.safetensors").read_bytes()).hexdigest()
        assert cfg["metadata"] == (TC if "transcoder" in n else META) | extra | {"weights_sha256": digest}, n
        assert cfg["model_name"] == META["model_name"] and cfg["hook_name"] == META["hook_name"]
        assert "sae_lens_version" not in cfg  # would make SAELens demand more fields
    assert cfgs["tied_l1"]["architecture"] == "standard" and cfgs["tied_l1"]["apply_b_dec_to_input"] is False
    assert cfgs["untied_l1"]["apply_b_dec_to_input"] is False
    assert cfgs["untied_l1_bdec"]["apply_b_dec_to_input"] is True
    assert cfgs["topk"]["architecture"] == "topk" and cfgs["topk"]["k"] == 3
    assert cfgs["topk"]["apply_b_dec_to_input"] is True
    assert all("k" not in cfgs[n] for n in ("tied_l1", "untied_l1", "untied_l1_bdec"))
    # SAELens's transcoders never subtract b_dec from the input and name their target
    for n in ("transcoder", "skip_transcoder", "jumprelu_transcoder", "topk_skip_transcoder"):
        assert cfgs[n]["architecture"] == n and cfgs[n]["d_out"] == 5 and cfgs[n]["apply_b_dec_to_input"] is False
        assert cfgs[n]["hook_name_out"] == TC["target_hook"]
    assert cfgs["gated"]["architecture"] == "gated" and cfgs["gated"]["apply_b_dec_to_input"] is True


def test_forward_is_the_documented_formula():
    for name, sae in exported().items():
        x = inputs(D=8)
        x_in = x - sae.b_dec_D * sae.apply_b_dec_to_input if not sae.transcoder else x
        pre = x_in @ sae.W_enc_DF + sae.b_enc_F
        if sae.architecture == "standard":
            c = pre.relu()
        elif sae.architecture == "jumprelu":
            c = torch.where(pre > sae.threshold_F, pre, 0).relu()
        elif sae.architecture == "gated":  # SAELens GatedSAE.encode, written out
            gate = (x_in @ sae.W_enc_DF + sae.b_gate_F) > 0
            c = gate * (x_in @ (sae.W_enc_DF * sae.r_mag_F.exp()) + sae.b_enc_F).relu()
        else:
            thr = pre.topk(sae.k, dim=1).values[:, -1:]
            c = torch.where(pre >= thr, pre, 0).relu()
        assert torch.allclose(sae.encode(x), c, atol=1e-6), name
        skip = x @ sae.W_skip_OD.T if sae.W_skip_OD is not None else 0.0
        assert torch.allclose(sae(x), c @ sae.W_dec_FD + sae.b_dec_D + skip, atol=1e-6), name


@pytest.mark.parametrize(
    "shapes",
    [
        dict(W_dec=(8, 16)),  # decoder not transposed
        dict(b_enc=(8,)),  # encoder bias of width d_in
        dict(b_dec=(16,)),  # decoder bias of width d_sae
        dict(W_dec=(16, 7)),
    ],
)
def test_inconsistent_shapes_are_refused(shapes):
    s = {"W_enc": (8, 16), "W_dec": (16, 8), "b_enc": (16,), "b_dec": (8,)} | shapes
    with pytest.raises(SaexError, match="inconsistent SAE shapes"):
        SAE(*(torch.zeros(s[k]) for k in ("W_enc", "W_dec", "b_enc", "b_dec")))


def test_bad_architecture_and_topk_without_k():
    args = (torch.zeros(8, 16), torch.zeros(16, 8), torch.zeros(16), torch.zeros(8))
    with pytest.raises(SaexError, match="unknown SAE architecture 'crosscoder'; allowed: .*gated.*jumprelu"):
        SAE(*args, architecture="crosscoder")
    with pytest.raises(SaexError, match=r"a gated SAE needs a b_gate per feature, shape \(16,\); got None"):
        SAE(*args, architecture="gated")
    with pytest.raises(SaexError, match="a jumprelu SAE needs a threshold per feature"):
        SAE(*args, architecture="jumprelu")
    with pytest.raises(SaexError, match="needs k"):
        SAE(*args, architecture="topk")


def test_encode_with_the_wrong_width_names_both_widths():
    sae = exported()["tied_l1"]
    with pytest.raises(SaexError, match=r"input width 9 .* d_in 8"):
        sae.encode(torch.zeros(4, 9))


def test_load_a_folder_that_is_not_a_dictionary(tmp_path):
    with pytest.raises(SaexError, match="not a dictionary folder"):
        SAE.load(tmp_path)
    (tmp_path / "cfg.json").write_text("{}")
    with pytest.raises(SaexError, match="not a dictionary folder"):
        SAE.load(tmp_path)


def test_load_hand_written_minimal_saelens_folder(tmp_path):
    """A folder as SAELens writes it (no apply_b_dec_to_input: SAELens's default subtracts b_dec)."""
    g = torch.Generator().manual_seed(0)
    w = {
        "W_enc": torch.randn(8, 16, generator=g),
        "W_dec": torch.randn(16, 8, generator=g),
        "b_enc": torch.randn(16, generator=g),
        "b_dec": torch.randn(8, generator=g),
    }
    save_file(w, str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 8, "d_sae": 16, "dtype": "float32"}))
    sae = SAE.load(tmp_path)
    x = inputs(D=8)
    assert torch.allclose(sae.encode(x), ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]).relu())


# -- SAELens compatibility ---------------------------------------------------------------------------------


def _write_check_folders(root: Path, trained: bool = False) -> set[str]:
    """Exported folders (and, with ``trained``, folders written by ``train()`` on a synthetic store, whose
    cfg.json carries the full training metadata), plus what saex computes on one input batch."""
    x = inputs(B=64, D=8, seed=5, scale=2.0)
    expected = {"x": x}
    saes = {n: sae for n, sae in exported().items() if n not in NOT_IN_SAELENS}
    if trained:
        from saex.train.trainer import train
        from tests.train._synth import train_cfg, write_store

        g = torch.Generator().manual_seed(0)
        x_train, x_held = torch.randn(2048, 8, generator=g).relu(), torch.randn(256, 8, generator=g).relu()
        mix = torch.randn(8, 5, generator=g)
        store = write_store(
            root / "acts",
            x_train,
            x_held,
            shard_rows=1024,
            more={"blocks.0.hook_mlp_out": (x_train @ mix, x_held @ mix)},
        )
        for arch, extra in (
            ("tied_l1", {}),
            ("untied_l1", {}),
            ("untied_l1", {"decoder_bias": True}),
            ("topk", {"k": "3"}),
            ("batchtopk", {"k": "3"}),
            ("matryoshka", {"k": "3"}),
            ("jumprelu", {"alpha": "0.001"}),
            ("gated", {}),
            ("untied_l1", {"target": "blocks.0.hook_mlp_out", "skip": True}),
            ("jumprelu", {"alpha": "0.001", "target": "blocks.0.hook_mlp_out"}),
        ):
            out = train(
                train_cfg(
                    store,
                    root / f"run-{len(saes)}",
                    **{"arch": arch, "ratio": "2", "alpha": "0.01", "steps": 40, "eval_every": 0, "lr": 1e-2}
                    | {"normalize": "mean_norm"}
                    | extra,
                ),
                progress=False,
            )
            (folder,) = [p for p in out.iterdir() if (p / "cfg.json").is_file()]
            tag = (
                "_bdec"
                if extra.get("decoder_bias")
                else "_skip_tc"
                if extra.get("skip")
                else "_tc"
                if extra.get("target")
                else ""
            )
            saes[f"trained_{arch}{tag}"] = SAE.load(folder)
    for name, sae in saes.items():
        sae.save(root / name)
        c = sae.encode(x)
        expected[f"{name}.c"], expected[f"{name}.xhat"], expected[f"{name}.out"] = c, sae.decode(c), sae(x)
    save_file(expected, str(root / "expected.safetensors"))
    return set(saes)


def _assert_report(report: dict, names: set[str]) -> None:
    assert set(report) == names
    for name, r in report.items():
        assert "error" not in r, f"SAELens could not load {name}: {r.get('error')}\n{r.get('traceback')}"
        assert r["encode_max_abs_diff"] < 1e-5 and r["decode_max_abs_diff"] < 1e-5, (name, r)
        assert r["forward_max_abs_diff"] < 1e-5, (name, r)  # a skip transcoder's skip term included
    assert report["topk"]["l0"] <= 3


@pytest.mark.skipif(importlib.util.find_spec("sae_lens") is None, reason="sae_lens is not installed")
def test_saelens_opens_every_architecture(tmp_path):
    from tests.dictionaries import _saelens_check

    names = _write_check_folders(tmp_path)
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        _saelens_check.main(str(tmp_path))
    _assert_report(json.loads(buf.getvalue().strip().splitlines()[-1]), names)


@pytest.mark.skipif(
    not os.environ.get("SAEX_SAELENS_PYTHON"),
    reason="set SAEX_SAELENS_PYTHON to a Python with sae-lens installed to check against it",
)
@pytest.mark.timeout(300)
def test_saelens_in_another_python_opens_every_architecture(tmp_path):
    """E.g. ``python3 -m venv /tmp/saelens-venv && /tmp/saelens-venv/bin/pip install torch==2.13.0
    sae-lens==6.54.12``, then ``SAEX_SAELENS_PYTHON=/tmp/saelens-venv/bin/python pytest ...``."""
    names = _write_check_folders(tmp_path, trained=True)
    script = Path(__file__).with_name("_saelens_check.py")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)} | {"HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [os.environ["SAEX_SAELENS_PYTHON"], str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_report(json.loads(proc.stdout.strip().splitlines()[-1]), names)
