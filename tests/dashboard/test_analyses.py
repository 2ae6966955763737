"""``saex dashboard``'s analysis panels on real feature indexes of a tiny llama: the histogram against
``histogram_from_index``, the logit lens against ``f @ W_U`` top-k in numpy (with a planted high-norm
unembedding row that must be left out), no logit lens for an MLP-neuron dictionary, a real ``saex
case-study`` folder merged into its features' payloads, and one-line refusals (another dictionary's case
study, a model with other weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saex.dashboard.site import feature_path
from saex.dictionaries.sae import SAE
from saex.features.histogram import histogram_from_index
from saex.features.index import FeatureIndex
from tests._cli import run_cli as _main
from tests.causal._helpers import random_sae

UP, RESID, MLP = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.1.mlp.hook_post"
PROMPT = "the king of the north gave the city water"
OUTLIER = 10
"""Token whose unembedding row is scaled ×20: above 5 × the median norm, so the lens must leave it out."""
F = 24


def _payload(site, f: int) -> dict:
    text = (site / feature_path(f)).read_text(encoding="utf-8")
    return json.loads("[" + text[len("saexFeature(") : -3] + "]")[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_models):
    """(root, [the case study's features; the first is its circuit's target])."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from saex.stages.features import FeaturesConfig
    from saex.stages.features import run as build_features
    from saex.stages.harvest import run as harvest
    from tests._support import write_corpus
    from tests.store._helpers import cfg

    root = tmp_path_factory.mktemp("dashboard-analyses")
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    with torch.no_grad():
        model.lm_head.weight[OUTLIER] *= 20
    model.save_pretrained(root / "model")
    AutoTokenizer.from_pretrained(tiny_models["llama"]).save_pretrained(root / "model")
    acts = harvest(
        cfg(
            root / "acts",
            root / "model",
            write_corpus(root / "corpus.jsonl", n_docs=80),
            hooks=f"{UP},{RESID},{MLP}",
            tokens=768,
            heldout_tokens=256,
            dtype="float32",
        ),
        progress=False,
    )
    for name, hook, width, seed in (("up", UP, 32, 1), ("res", RESID, 32, 2), ("mlp", MLP, 48, 3)):
        r = random_sae(width, F, seed=seed)
        SAE(
            r.W_enc_DF,
            r.W_dec_FD,
            r.b_enc_F,
            r.b_dec_D,
            "standard",
            apply_b_dec_to_input=True,
            metadata={"model_name": str(root / "model"), "hook_name": hook},
        ).save(root / name)
    build_features(
        FeaturesConfig(
            acts=str(acts),
            dicts=f"{root / 'res'},{root / 'mlp'}",
            out=str(root / "features"),
            fragment_length=8,
            top=5,
            random=10,
            zero=2,
        ),
        progress=False,
    )
    # the two features active most often (random dictionaries leave some dead); the first is the target
    study = [int(f) for f in np.argsort(-FeatureIndex(root / "features" / "res").density(), kind="stable")[:2]]
    rc, _, err = _main(
        "case-study",
        "--acts",
        str(acts),
        "--dict",
        str(root / "res"),
        "--out",
        str(root / "cs"),
        "--quiet",
        "--prompt",
        PROMPT,
        "--features",
        f"{study[1]},{study[0]}",
        "--target",
        str(study[0]),
        "--upstream",
        str(root / "up"),
        "--candidates",
        "4",
        "--contexts",
        "4",
        "--effect-contexts",
        "3",
        "--max-samples",
        "200",
    )
    assert rc == 0, err
    return root, study


@pytest.fixture(scope="module")
def setup(built):
    return built[0]


def _dashboard(root, name, out, *extra):
    return _main(
        "dashboard",
        "--features",
        str(root / "features"),
        "--dict",
        name,
        "--out",
        str(out),
        "--examples",
        "2",
        "--decile-examples",
        "1",
        "--quiet",
        *extra,
    )


@pytest.fixture(scope="module")
def resid_site(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "res"
    rc, _, err = _dashboard(setup, "res", out, "--device", "cpu")
    assert rc == 0, err
    return out


def test_histograms_are_the_index_histograms(setup, resid_site):
    index = FeatureIndex(setup / "features" / "res")
    for f in range(F):
        p = _payload(resid_site, f)
        assert p["histogram"] == histogram_from_index(index, f), f
        assert "histogram" not in p["not_computed"]
    assert sum(_payload(resid_site, f)["histogram"]["n"] > 0 for f in range(F)) > F // 2  # not all empty


def test_logit_lens_is_f_times_W_U(setup, resid_site):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(setup / "model")
    tok = AutoTokenizer.from_pretrained(setup / "model")
    W_U = model.lm_head.weight.detach().numpy().astype(np.float64)
    norms = np.linalg.norm(W_U, axis=1)
    keep = norms <= 5 * np.median(norms)
    assert not keep[OUTLIER] and keep.sum() == len(keep) - 1
    W_dec = SAE.load(setup / "res").W_dec_FD.detach().numpy().astype(np.float64)
    for f in (0, 7, 23):
        p = _payload(resid_site, f)
        lens = p["logit_lens"]
        logits = np.where(keep, W_U @ W_dec[f], np.nan)
        ids = np.flatnonzero(keep)
        top = ids[np.argsort(-logits[ids], kind="stable")[:20]]
        bottom = ids[np.argsort(logits[ids], kind="stable")[:20]]
        assert [e["id"] for e in lens["top"]] == top.tolist()
        assert [e["id"] for e in lens["bottom"]] == bottom.tolist()
        np.testing.assert_allclose([e["value"] for e in lens["top"]], logits[top], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose([e["value"] for e in lens["bottom"]], logits[bottom], rtol=1e-4, atol=1e-5)
        assert [e["token"] for e in lens["top"]] == [tok.decode([i]) for i in top]
        assert lens["excluded"] == 1 and lens["final_norm"] is False
        assert "logit_lens" not in p["not_computed"]
        assert p["output_effect"] is None and "saex case-study" in p["not_computed"]["output_effect"]
    meta = json.loads((resid_site / "dashboard.json").read_text())["meta"]
    assert meta["analyses"] == ["histogram", "logit_lens"] and "left out (1)" in meta["logit_lens"]


def test_mlp_dictionary_has_no_logit_lens(setup, tmp_path):
    # --model names no model at all: an MLP-neuron dictionary never loads one
    rc, _, err = _dashboard(setup, "mlp", tmp_path / "mlp", "--model", str(tmp_path / "no-model"))
    assert rc == 0, err
    index = FeatureIndex(setup / "features" / "mlp")
    for f in (0, 3):
        p = _payload(tmp_path / "mlp", f)
        assert p["logit_lens"] is None and p["hook"] == MLP
        assert p["not_computed"]["logit_lens"].startswith(f"the dictionary is at MLP neurons ({MLP})")
        assert p["histogram"] == histogram_from_index(index, f)


def test_case_study_entries_are_merged(built, resid_site, tmp_path):
    setup, (target, other) = built
    out = tmp_path / "cs-site"
    rc, _, err = _dashboard(setup, "res", out, "--case-study", str(setup / "cs"))
    assert rc == 0, err
    study = json.loads((setup / "cs" / "case_study.json").read_text())
    entries = {e["feature"]: e for e in study["features"]}
    assert sorted(entries) == sorted([target, other])
    index = FeatureIndex(setup / "features" / "res")
    for f in range(F):
        p = _payload(out, f)
        if f in entries:
            for k in ("histogram", "output_effect", "logit_lens"):
                assert p[k] == entries[f][k], (f, k)
            assert p["histogram"]["source"] == "held-out store" and "output_effect" not in p["not_computed"]
        else:
            assert p["histogram"] == histogram_from_index(index, f) and p["output_effect"] is None
        if f == target:
            assert p["upstream"] == study["circuit"] and p["upstream"]["children"]
            assert "upstream" not in p["not_computed"]
        else:
            assert p["upstream"] is None and "saex case-study --upstream" in p["not_computed"]["upstream"]
    # the case study's logit lens (its own features only) is the one the dashboard computes for every feature
    for f in entries:
        ours, theirs = _payload(resid_site, f)["logit_lens"], entries[f]["logit_lens"]
        for end in ("top", "bottom"):
            assert [e["id"] for e in ours[end]] == [e["id"] for e in theirs[end]]
            assert [e["value"] for e in ours[end]] == pytest.approx([e["value"] for e in theirs[end]], rel=1e-5)


@pytest.mark.parametrize(
    "name, extra, message",
    [
        ("mlp", ["--case-study", "CS"], "--case-study CS was run on the dictionary"),
        ("res", ["--case-study", "FEATURES"], "is not a saex case-study output folder"),
        ("res", ["--model", "OTHER"], "the logit lens needs the store's model: model OTHER has weights"),
    ],
)
def test_refusals_are_one_line(setup, tiny_models, tmp_path, name, extra, message):
    subst = {"CS": str(setup / "cs"), "FEATURES": str(setup / "features"), "OTHER": str(tiny_models["llama"])}
    extra = [subst.get(a, a) for a in extra]
    message = message.replace("CS", subst["CS"]).replace("OTHER", subst["OTHER"])
    rc, _, err = _dashboard(setup, name, tmp_path / "o", *extra)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("saex dashboard: error: "), err
    assert message in lines[0], lines[0]
    assert not (tmp_path / "o").exists()  # refused before anything was written
