"""``saex case-study`` end to end on a tiny llama and a harvested store: the layout of case_study.json, its
numbers against independent recomputations (search, held-out histograms, logit lens, contexts), the circuit,
figures, the no-op rerun, and one-line errors (exit 2) for bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saex.dictionaries.sae import SAE
from saex.features.histogram import token_histogram
from tests._cli import run_cli as _main
from tests.causal._helpers import random_sae

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
PROMPT = "the king of the north gave the city water"
NODE = {"hook", "feature", "effect", "cos", "children"}
# A node whose upstream level was ablated also lists the rises and counts what was ablated (circuits.py).
TRACED = NODE | {"increases", "ablated", "effect_sum_positive", "effect_sum_negative"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_models):
    from saex.stages.features import FeaturesConfig
    from saex.stages.features import run as build_features
    from saex.stages.harvest import run as harvest
    from tests._support import write_corpus
    from tests.store._helpers import cfg

    root = tmp_path_factory.mktemp("case-study-cli")
    model = tiny_models["llama"]
    acts = harvest(
        cfg(
            root / "acts",
            model,
            write_corpus(root / "corpus.jsonl", n_docs=80),
            hooks=",".join(HOOKS),
            tokens=1024,
            heldout_tokens=256,
            dtype="float32",
        ),
        progress=False,
    )
    meta = {"model_name": str(model)}
    for i, hook in enumerate(HOOKS):
        r = random_sae(32, 24, seed=10 + i)
        SAE(
            r.W_enc_DF,
            r.W_dec_FD,
            r.b_enc_F,
            r.b_dec_D,
            "standard",
            apply_b_dec_to_input=True,
            metadata=meta | {"hook_name": hook},
        ).save(root / f"d{i}")
    build_features(
        FeaturesConfig(
            acts=str(acts),
            dicts=str(root / "d2"),
            out=str(root / "features"),
            fragment_length=8,
            top=5,
            random=10,
            zero=2,
        ),
        progress=False,
    )
    return root, acts, model


def _run(setup, out, *extra):
    root, acts, _ = setup
    return _main(
        "case-study",
        "--acts",
        str(acts),
        "--dict",
        str(root / "d2"),
        "--out",
        str(out),
        "--quiet",
        "--prompt",
        PROMPT,
        *extra,
    )


def _heldout(acts, hook):
    """Held-out activations, token ids, and which rows the default filter keeps (not position 0, not the
    separator / BOS token), from the tokens and the manifest directly."""
    from saex.store.reader import ActivationStore

    s = ActivationStore(acts)
    x = torch.cat([s.load_shard("heldout", i, hook) for i in range(len(s.shards("heldout")))])
    tok_CT = s.tokens("heldout")
    special = [i for i in (s.manifest["packing"]["separator_id"], s.manifest["packing"]["bos_id"]) if i is not None]
    keep = (torch.arange(tok_CT.shape[1]) > 0).expand_as(tok_CT) & ~torch.isin(tok_CT, torch.tensor(special))
    return x, tok_CT.reshape(-1).numpy(), keep.reshape(-1)


def test_end_to_end_with_index_and_circuit(setup, tmp_path):
    from saex.features.index import FeatureIndex
    from saex.lm.loading import load_model

    root, acts, model = setup
    lm = load_model(str(model))
    ids = lm.tokenizer(PROMPT)["input_ids"]
    d = SAE.load(root / "d2")
    with torch.no_grad():
        x = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[3][0, -1]
        c = d.encode(x[None])[0]
    # --max-density just below the strongest active feature's density: it is skipped, sparser ones are kept
    density = FeatureIndex(root / "features" / "d2").density()
    ranked = [f for f in c.argsort(descending=True).tolist() if c[f] > 0]
    thr = float(max(density[f] for f in ranked if density[f] < density[ranked[0]]))
    out = tmp_path / "out"
    rc, stdout, err = _run(
        setup,
        out,
        "--features-index",
        str(root / "features"),
        "--upstream",
        f"{root / 'd1'},{root / 'd0'}",
        "--candidates",
        "4",
        "--children",
        "2",
        "--max-samples",
        "100000",
        "--contexts",
        "5",
        "--max-density",
        repr(thr),
        "--device",
        "cpu",
        "--lm-dtype",
        "float32",
    )
    assert rc == 0, err
    assert stdout.strip() == f"case study in {out / 'case_study.json'} (figures beside it)"
    r = json.loads((out / "case_study.json").read_text())
    assert set(r) == {"search", "features", "circuit", "figures"}
    s = r["search"]
    assert set(s) == {
        "prompt",
        "tokens",
        "position",
        "hook",
        "dictionary",
        "features",
        "resid_max",
        "resid_min",
        "skipped_dense",
    }
    assert s["position"] == len(ids) - 1 and s["hook"] == HOOKS[2] and s["dictionary"] == "d2"
    assert [f["feature"] for f in s["features"]] == c.argsort(descending=True)[:10].tolist()
    assert [f["dim"] for f in s["resid_min"]] == x.argsort()[:10].tolist()
    # analysed: the top 3 active features of the full ranking that fire on at most thr of the tokens
    top = [f for f in ranked if density[f] <= thr][:3]
    assert top and [e["feature"] for e in r["features"]] == top
    assert [e["rank"] for e in r["features"]] == [ranked.index(f) for f in top]
    skipped = [f for f in ranked[: ranked.index(top[-1])] if density[f] > thr]
    assert skipped and [e["feature"] for e in s["skipped_dense"]] == skipped
    X, toks, keep = _heldout(acts, HOOKS[2])
    assert not keep.all()
    with torch.no_grad():
        codes = (d.encode(X) * keep[:, None]).numpy()  # excluded rows count as inactive
    W_U = lm.model.get_output_embeddings().weight.detach()
    for e in r["features"]:
        f = e["feature"]
        assert set(e) == {
            "hook",
            "dictionary",
            "feature",
            "rank",
            "histogram",
            "logit_lens",
            "output_effect",
            "residual_histogram",
        }
        want = token_histogram(
            codes[:, f], toks, lambda i: lm.tokenizer.decode([i]), max_n=None, source="held-out store"
        )
        assert e["histogram"] == want
        logits = W_U @ d.W_dec_FD[f].detach()
        assert e["logit_lens"]["top"][0]["id"] == int(logits.argmax()) and e["logit_lens"]["final_norm"] is False
        assert len(e["logit_lens"]["top"]) == 20
        eff = e["output_effect"]
        assert 0 < eff["contexts"] <= 5 and eff["positions"] > 0 and len(eff["decreased"]) == 20
        assert f"feature{f}_histogram" in r["figures"] and (out / r["figures"][f"feature{f}_output_effect"]).is_file()
    # Fig. 11: the search's most extreme dimension, on the first feature only
    res = r["features"][0]["residual_histogram"]
    dim = int(x.abs().argmax())
    sign = 1 if x[dim] > 0 else -1
    assert res["total"] == int((sign * X[keep, dim] > 0).sum()) and f"dimension {dim}" in res["source"]
    assert all(e["residual_histogram"] is None for e in r["features"][1:])
    assert (out / r["figures"][f"residual{dim}_histogram"]).is_file()
    # the circuit: root = the first analysed feature, two levels, nodes per schema.md
    tree = r["circuit"]
    assert set(tree) == TRACED | {"contexts", "max_activation", "method"}
    assert tree["feature"] == top[0] and tree["hook"] == HOOKS[2] and 1 <= tree["contexts"] <= 5
    ix = FeatureIndex(root / "features" / "d2")
    assert tree["max_activation"] == pytest.approx(float(ix.t["max"][tree["feature"]]))
    assert tree["children"] and all(c["children"] for c in tree["children"])
    for child in tree["children"]:
        assert set(child) == TRACED and child["hook"] == HOOKS[1] and child["effect"] > 0
        for g in child["children"]:
            assert set(g) == NODE and g["hook"] == HOOKS[0] and g["children"] == []
        assert all(set(g) == NODE - {"children"} and g["effect"] < 0 for g in child["increases"])
    assert all(g["hook"] == HOOKS[1] and g["effect"] < 0 for g in tree["increases"])
    assert (out / "circuit.png").read_bytes()[:4] == b"\x89PNG"
    # a rerun with the same inputs is a no-op
    stamp = (out / "case_study.json").stat().st_mtime_ns
    rc, _, err = _run(
        setup,
        out,
        "--features-index",
        str(root / "features"),
        "--upstream",
        f"{root / 'd1'},{root / 'd0'}",
        "--candidates",
        "4",
        "--children",
        "2",
        "--max-samples",
        "100000",
        "--contexts",
        "5",
        "--max-density",
        repr(thr),
    )
    assert rc == 0 and (out / "case_study.json").stat().st_mtime_ns == stamp


def test_store_only_explicit_features(setup, tmp_path):
    root, acts, _ = setup
    out = tmp_path / "out"
    rc, _, err = _run(
        setup,
        out,
        "--features",
        "3,7",
        "--upstream",
        str(root / "d1"),
        "--target",
        "7",
        "--residual-dim",
        "5",
        "--candidates",
        "0",
        "--effect-contexts",
        "3",
        "--max-samples",
        "50",
    )
    assert rc == 0, err
    r = json.loads((out / "case_study.json").read_text())
    assert [e["feature"] for e in r["features"]] == [3, 7]
    for e in r["features"]:
        assert e["histogram"]["n"] <= 50 and e["output_effect"]["contexts"] <= 3
    assert "dimension 5" in r["features"][0]["residual_histogram"]["source"]
    X, _, keep = _heldout(acts, HOOKS[2])
    with torch.no_grad():
        M = float(SAE.load(root / "d2").encode(X[keep])[:, 7].max())
    assert r["circuit"]["feature"] == 7 and r["circuit"]["max_activation"] == pytest.approx(M, rel=1e-5)
    assert r["circuit"]["method"].startswith("exact ablation")
    assert r["circuit"]["children"] and np.isfinite([c["effect"] for c in r["circuit"]["children"]]).all()


def test_bad_inputs_are_one_line_errors(setup, tmp_path):
    root, acts, model = setup
    other = random_sae(32, 4)
    SAE(
        other.W_enc_DF,
        other.W_dec_FD,
        other.b_enc_F,
        other.b_dec_D,
        "standard",
        metadata={"hook_name": HOOKS[0], "model_name": "another-model"},
    ).save(tmp_path / "other")
    tc_meta = {"hook_name": HOOKS[0], "target_hook": HOOKS[1]}
    SAE(other.W_enc_DF, other.W_dec_FD, other.b_enc_F, other.b_dec_D, metadata=tc_meta, transcoder=True).save(
        tmp_path / "tc"
    )
    cases = [
        (["--upstream", str(tmp_path / "tc")], "is a transcoder (it reads blocks."),
        (["--features", "3,24"], "feature 24 is out of range"),
        (["--features", "x"], "--features must be comma-separated integers"),
        (["--position", "9"], "--position 9 is out of range"),
        (["--upstream", str(root / "d2")], "is not earlier than blocks.2.hook_resid_post"),
        (["--upstream", f"{root / 'd0'},{root / 'd1'}"], "is not earlier than blocks.0.hook_resid_post"),
        (["--upstream", str(tmp_path / "other")], "trained on model 'another-model'"),
        (["--histogram", "index"], "--histogram index needs --features-index"),
        (["--features-index", str(tmp_path)], "holds no feature index"),
        (["--top", "0"], "--top must be positive"),
        (["--depth", "3", "--upstream", str(root / "d1")], "--depth 3 needs"),
        (["--residual-dim", "32"], "--residual-dim 32 is out of range"),
    ]
    for extra, message in cases:
        rc, _, err = _run(setup, tmp_path / "out", *extra)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("saex case-study: error: "), (extra, err)
        assert message in lines[0], (extra, lines[0])
