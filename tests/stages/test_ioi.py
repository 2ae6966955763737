"""``saex ioi`` end to end on a tiny llama whose tokenizer knows the IOI templates: task.json, per-layer
results for dictionaries and the PCA baselines, both modes, resume, plots, and one-line errors."""

from __future__ import annotations

import json

import pytest

from saex.dictionaries.sae import SAE
from tests._cli import run_cli as _main
from tests.causal._helpers import identity_dictionary, random_sae, save_ioi_model

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from saex.stages.harvest import run as harvest
    from tests.store._helpers import cfg

    root = tmp_path_factory.mktemp("ioi-cli")
    save_ioi_model(root)
    acts = harvest(
        cfg(root / "acts", root / "model", root / "corpus.jsonl", hooks=HOOK, tokens=1024, heldout_tokens=64),
        progress=False,
    )
    dicts = root / "dicts"
    meta = {"hook_name": HOOK, "model_name": str(root / "model")}
    ident = identity_dictionary(32)
    SAE(ident.W_enc_DF, ident.W_dec_FD, ident.b_enc_F, ident.b_dec_D, "linear", metadata=meta).save(dicts / "identity")
    r = random_sae(32, 16, seed=1)
    SAE(r.W_enc_DF, r.W_dec_FD, r.b_enc_F, r.b_dec_D, r.architecture, metadata=meta | {"alpha": 0.001}).save(
        dicts / "sae"
    )
    return root, acts, dicts


def _ioi(setup, out, *extra):
    root, acts, dicts = setup
    return _main(
        "ioi",
        "--model",
        str(root / "model"),
        "--dicts",
        str(dicts),
        "--prompts",
        "6",
        "--out",
        str(out),
        "--quiet",
        *extra,
    )


def test_both_modes_with_pca(setup, tmp_path):
    root, acts, _ = setup
    out = tmp_path / "out"
    rc, stdout, err = _ioi(
        setup, out, "--baselines", "pca", "--acts", str(acts), "--mode", "both", "--thresholds", "4", "--device", "cpu"
    )
    assert rc == 0, err
    task = json.loads((out / "task.json").read_text())
    assert task["n_prompts"] == 6 and len(task["logit_diffs"]) == 6
    names = sorted(p.stem for p in (out / "layer1").glob("*.json"))
    assert names == ["identity", "pca_rot", "pca_split", "sae"]
    ident = json.loads((out / "layer1" / "identity.json").read_text())
    # every feature of an identity dictionary patched is the counterfactual run: KL 0
    assert ident["quick"]["records"][-1]["n_patched"] == ident["n_active"]
    assert ident["quick"]["records"][-1]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert ident["quick"]["records"][0]["kl"] == pytest.approx(ident["kl_base"], rel=1e-5)
    greedy = ident["greedy"]
    assert len([r for r in greedy["records"] if r["tau"] is not None]) == 4
    n = [r["n_patched"] for r in greedy["records"] if r["tau"] is not None]
    assert n == sorted(n, reverse=True)
    assert json.loads((out / "layer1" / "sae.json").read_text())["alpha"] == 0.001
    for fig in ("fig3_quick", "fig3_greedy"):
        assert (out / f"{fig}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert set(json.loads((out / f"{fig}.json").read_text())["layers"]["1"]) == set(names)
    # a rerun reuses every result
    before = {p.name: p.stat().st_mtime_ns for p in (out / "layer1").glob("*.json")}
    rc, _, err = _ioi(setup, out, "--baselines", "pca", "--acts", str(acts), "--mode", "both", "--thresholds", "4")
    assert rc == 0, err
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "layer1").glob("*.json")}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mode", "fast"], "unknown --mode 'fast'"),
        (["--baselines", "ica"], "unknown --baselines 'ica'"),
        (["--baselines", "pca"], "needs --acts"),
        (["--prompts", "0"], "--prompts must be positive"),
        (["--layers", "x"], "layers must be comma-separated integers"),
        (["--layers", "3"], "no dictionary is at the requested layers [3]"),
    ],
)
def test_errors_are_one_line(setup, tmp_path, extra, message):
    rc, _, err = _ioi(setup, tmp_path / "out", *extra)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("saex ioi: error: ") and message in lines[0], err


def test_a_transcoder_is_refused(setup, tmp_path):
    root, _, dicts = setup
    d = SAE.load(dicts / "identity")
    tc = SAE(d.W_enc_DF, d.W_dec_FD, d.b_enc_F, d.b_dec_D, "linear", metadata=d.metadata, transcoder=True)
    tc.save(tmp_path / "tc")
    rc, _, err = _main("ioi", "--model", str(root / "model"), "--dicts", str(tmp_path / "tc"), "--out",
                       str(tmp_path / "out"), "--quiet")  # fmt: skip
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "is a transcoder" in lines[0] and "takes autoencoders only" in lines[0]


def test_a_dictionary_for_another_model_is_refused(setup, tmp_path):
    root, _, dicts = setup
    d = SAE.load(dicts / "identity")
    d.metadata["model_name"] = "some-other-model"
    d.save(tmp_path / "other")
    rc, _, err = _main(
        "ioi",
        "--model",
        str(root / "model"),
        "--dicts",
        str(tmp_path / "other"),
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    )
    assert rc == 2 and "trained on model 'some-other-model'" in err


def test_a_sparsify_coder_patches_like_its_saex_twin(setup, tmp_path):
    """The same TopK coder as a sparsify folder (model name "some-hub-name", as another library records it)
    and as a saex folder: the patching curves are the same numbers."""
    import json

    from tests.dictionaries._formats import weights, write_sparsify

    root, _, _ = setup
    w = weights(32, 64, 7)
    w["W_enc"] *= 50
    write_sparsify(tmp_path / "sp", "layers.1", w, 6)
    (tmp_path / "sp" / "config.json").write_text(json.dumps({"model": "some-hub-name"}))
    SAE(w["W_enc"], w["W_dec"], w["b_enc"], w["b_dec"], "topk", k=6, apply_b_dec_to_input=True,
        metadata={"hook_name": HOOK}).save(tmp_path / "twin" / "layers.1")  # fmt: skip
    outs = {}
    for name in ("sp", "twin"):
        out = tmp_path / f"out-{name}"
        rc, _, err = _main("ioi", "--model", str(root / "model"), "--dicts", str(tmp_path / name / "layers.1"),
                           "--prompts", "6", "--out", str(out), "--quiet")  # fmt: skip
        assert rc == 0, err
        (res,) = sorted((out / "layer1").glob("layers.1.json"))
        outs[name] = json.loads(res.read_text())
    a, b = outs["sp"], outs["twin"]
    assert a["n_active"] == b["n_active"] > 0 and a["kl_base"] == pytest.approx(b["kl_base"], rel=1e-6)
    assert a["quick"]["order"] == b["quick"]["order"] and len(b["quick"]["records"]) > 2
    for ra, rb in zip(a["quick"]["records"], b["quick"]["records"], strict=True):
        assert ra["n_patched"] == rb["n_patched"]
        assert ra["kl"] == pytest.approx(rb["kl"], rel=1e-5, abs=1e-9) and ra["edit"] == pytest.approx(
            rb["edit"], rel=1e-5
        )
