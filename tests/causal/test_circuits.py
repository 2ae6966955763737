"""Upstream circuits by ablation (paper §5.3, Fig. 5).

Known answers: with the upstream hook blocks.{L-1}.hook_resid_post and the target blocks.{L}.hook_resid_pre
(the same tensor) the drop from ablating upstream j is c_j(last)·⟨f_j, W_enc[:, k]⟩ (the target stays above
its ReLU); through real blocks, every effect equals a naive full-forward ablation written here (each context
alone, unpadded), at two levels; the attribution-prefiltered tree agrees with the exhaustive one. Both signs:
the tree follows the drops, and each expanded node lists its strongest rises (``increases``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saex.causal.circuits import Level, contexts_from_index, feature_code, upstream_circuit
from saex.dictionaries.sae import SAE
from saex.errors import SaexError
from saex.lm.hooks import HookedLM
from saex.lm.loading import load_model
from tests.causal._helpers import module_activation, random_sae

CONTEXTS = [[7, 12, 30, 9, 44, 21], [5, 6, 7, 8, 9, 10, 11, 12, 13], [40, 41, 8, 50, 22], [33, 17, 25, 9, 9, 30, 12]]


@pytest.fixture(scope="module")
def hooked(tiny_models):
    return HookedLM(load_model(str(tiny_models["llama"])).model)


def _always_on(D: int, F_: int, seed: int) -> SAE:
    """A standard SAE whose pre-activations stay far above zero (bias 50): its codes are linear in x."""
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(F_, D, generator=g)
    return SAE(
        torch.randn(D, F_, generator=g) * 0.3,
        W_dec / W_dec.norm(dim=1, keepdim=True),
        torch.full((F_,), 50.0),
        torch.randn(D, generator=g) * 0.1,
        "standard",
        apply_b_dec_to_input=True,
    )


def _walk(node):
    yield node
    for c in node["children"]:
        yield from _walk(c)


def test_same_tensor_is_hand_computable(hooked):
    up = random_sae(32, 24, seed=1)
    tgt = _always_on(32, 6, seed=2)
    k = 4
    last = [module_activation(hooked, "blocks.1.hook_resid_post", torch.tensor([c]))[0, -1] for c in CONTEXTS]
    with torch.no_grad():
        c_up = up.encode(torch.stack(last))  # [N, F] at each context's last token
        want = (c_up * (up.W_dec_FD @ tgt.W_enc_DF[:, k])).mean(0)
    for candidates in (0, 5):
        tree = upstream_circuit(
            hooked,
            Level("blocks.2.hook_resid_pre", tgt),
            k,
            CONTEXTS,
            [Level("blocks.1.hook_resid_post", up)],
            children=3,
            candidates=candidates,
        )
        assert tree["contexts"] == 4 and tree["effect"] is None and tree["cos"] is None
        assert tree["hook"] == "blocks.2.hook_resid_pre" and tree["feature"] == k
        top = want.argsort(descending=True)[:3]
        assert [c["feature"] for c in tree["children"]] == top.tolist()
        for c in tree["children"]:
            assert c["effect"] == pytest.approx(float(want[c["feature"]]), rel=1e-4, abs=1e-5)
            cos = torch.nn.functional.cosine_similarity(tgt.W_dec_FD[k], up.W_dec_FD[c["feature"]], dim=0)
            assert c["cos"] == pytest.approx(float(cos), abs=1e-6)
            assert c["hook"] == "blocks.1.hook_resid_post" and c["children"] == []
        # the other sign: the strongest rises of the target (ablation raises it), recorded but not expanded
        bottom = [j for j in want.argsort()[:3].tolist() if want[j] < 0]
        assert bottom and [c["feature"] for c in tree["increases"]] == bottom
        for c in tree["increases"]:
            assert c["effect"] == pytest.approx(float(want[c["feature"]]), rel=1e-4, abs=1e-5) and c["effect"] < 0
            assert "children" not in c and c["hook"] == "blocks.1.hook_resid_post"
        with torch.no_grad():  # features active at any position of any context: the ones that can be ablated
            n_active = int(
                torch.stack(
                    [
                        (
                            up.encode(module_activation(hooked, "blocks.1.hook_resid_post", torch.tensor([c]))[0]) != 0
                        ).any(0)
                        for c in CONTEXTS
                    ]
                )
                .any(0)
                .sum()
            )
        assert tree["ablated"] == (n_active if candidates == 0 else min(n_active, 2 * candidates))
        if candidates == 0:
            assert tree["effect_sum_positive"] == pytest.approx(float(want.clamp(min=0).sum()), rel=1e-4)
            assert tree["effect_sum_negative"] == pytest.approx(float(want.clamp(max=0).sum()), rel=1e-4)
        assert ("exact ablation of every" in tree["method"]) == (candidates == 0)
        # M defaults to the largest clean activation at the contexts' last tokens
        with torch.no_grad():
            acts = feature_code(
                tgt,
                torch.stack(
                    [module_activation(hooked, "blocks.2.hook_resid_pre", torch.tensor([c]))[0, -1] for c in CONTEXTS]
                ),
                k,
            )
        assert tree["max_activation"] == pytest.approx(float(acts.max()), rel=1e-5)


def _naive_drops(hooked, up_hook, up, tgt_hook, tgt, k, last_only):
    """Mean drop of the target metric for ablating each upstream feature: each context alone, a full forward
    with the upstream activation replaced by a hook written here."""
    point = hooked.resolve(up_hook)
    module = hooked.model.get_submodule(point.module)
    drops = torch.zeros(up.d_dict, dtype=torch.float64)
    for ctx in CONTEXTS:
        ids = torch.tensor([ctx])
        x = module_activation(hooked, up_hook, ids)
        with torch.no_grad():
            c = up.encode(x)[0]

        def metric(new=None):
            h = None
            if new is not None and point.capture == "input":
                h = module.register_forward_pre_hook(lambda m, a, kw: ((new, *a[1:]), kw), with_kwargs=True)
            elif new is not None:
                h = module.register_forward_hook(lambda m, a, o: (new, *o[1:]) if isinstance(o, tuple) else new)
            try:
                with torch.no_grad():
                    y = feature_code(tgt, module_activation(hooked, tgt_hook, ids)[0], k)  # noqa: B023 (called at once)
            finally:
                if h is not None:
                    h.remove()
            return float(y[-1]) if last_only else float(y.sum())

        clean = metric()
        for j in torch.nonzero((c != 0).any(0)).squeeze(1).tolist():
            drops[j] += clean - metric(x - c[None, :, j, None] * up.W_dec_FD[j])
    return drops / len(CONTEXTS)


def test_real_blocks_equal_naive_ablation_two_levels(hooked):
    tgt = random_sae(32, 16, seed=5, enc_scale=0.5)
    u1, u2 = random_sae(32, 20, seed=6), random_sae(32, 20, seed=7)
    H_t, H_1, H_2 = "blocks.3.hook_resid_post", "blocks.2.hook_resid_pre", "blocks.0.hook_resid_post"
    with torch.no_grad():
        last = torch.stack([module_activation(hooked, H_t, torch.tensor([c]))[0, -1] for c in CONTEXTS])
        k = int(tgt.encode(last).min(0).values.argmax())  # active at every context's last token
        assert tgt.encode(last)[:, k].min() > 0
    tree = upstream_circuit(
        hooked, Level(H_t, tgt), k, CONTEXTS, [Level(H_1, u1), Level(H_2, u2)], children=2, candidates=0
    )
    want1 = _naive_drops(hooked, H_1, u1, H_t, tgt, k, last_only=True)
    assert [c["feature"] for c in tree["children"]] == want1.argsort(descending=True)[:2].tolist()
    for child in tree["children"]:
        assert child["effect"] == pytest.approx(float(want1[child["feature"]]), rel=1e-3, abs=1e-5)
        want2 = _naive_drops(hooked, H_2, u2, H_1, u1, child["feature"], last_only=False)
        got = [(g["feature"], g["effect"]) for g in child["children"]]
        positive = [j for j in want2.argsort(descending=True)[:2].tolist() if want2[j] > 0]
        assert [f for f, _ in got] == positive
        for f, e in got:
            assert e == pytest.approx(float(want2[f]), rel=1e-3, abs=1e-5)
            assert e > 0
    assert len(list(_walk(tree))) > 3
    # attribution-prefiltered: the same top children, and every reported effect is the exact one
    quick = upstream_circuit(
        hooked, Level(H_t, tgt), k, CONTEXTS, [Level(H_1, u1), Level(H_2, u2)], children=2, candidates=6
    )
    assert [c["feature"] for c in quick["children"]] == [c["feature"] for c in tree["children"]]
    for node in _walk(quick):
        if node["effect"] is not None and node["hook"] == H_1:
            assert node["effect"] == pytest.approx(float(want1[node["feature"]]), rel=1e-3, abs=1e-5)
    assert "attribution" in quick["method"] and "top 6 and the bottom 6" in quick["method"]
    # the rises, at every expanded node: exact effects < 0, the strongest first, not expanded
    want1_rises = [j for j in want1.argsort()[:2].tolist() if want1[j] < 0]
    assert tree["increases"] and [c["feature"] for c in tree["increases"]] == want1_rises
    for node in _walk(tree):
        if node["hook"] == H_2:  # the last level is not expanded
            assert set(node) == {"hook", "feature", "effect", "cos", "children"}
            continue
        assert [c["effect"] for c in node["increases"]] == sorted(c["effect"] for c in node["increases"])
        assert all(c["effect"] < 0 and "children" not in c for c in node["increases"])
        assert node["effect_sum_negative"] <= sum(c["effect"] for c in node["increases"]) + 1e-6
        assert node["effect_sum_positive"] >= sum(c["effect"] for c in node["children"]) - 1e-6


def test_refusals(hooked):
    d = random_sae(32, 8)
    with pytest.raises(SaexError, match="is not earlier than blocks.1.hook_resid_post"):
        upstream_circuit(
            hooked, Level("blocks.1.hook_resid_post", d), 0, CONTEXTS, [Level("blocks.2.hook_resid_post", d)]
        )
    with pytest.raises(SaexError, match="is not earlier than"):
        upstream_circuit(
            hooked, Level("blocks.1.hook_resid_post", d), 0, CONTEXTS, [Level("blocks.1.hook_resid_post", d)]
        )
    with pytest.raises(SaexError, match="--depth 2 needs"):
        upstream_circuit(
            hooked, Level("blocks.1.hook_resid_post", d), 0, CONTEXTS, [Level("blocks.0.hook_resid_post", d)], depth=2
        )
    with pytest.raises(SaexError, match="feature 8 is out of range"):
        upstream_circuit(hooked, Level("blocks.1.hook_resid_post", d), 8, CONTEXTS, [])


def test_contexts_from_index(tmp_path):
    from saex.features.index import FeatureIndex
    from saex.stages.features import FeaturesConfig
    from saex.stages.features import run as build_features
    from tests.features._helpers import T, heldout_data, heldout_docs, heldout_tokens, standard_sae, write_store

    X = heldout_data()
    store = write_store(
        tmp_path / "acts",
        torch.from_numpy(X[: 2 * T]),
        torch.from_numpy(X),
        T=T,
        shard_rows=4 * T,
        tokens_CT=heldout_tokens(),
        docs_CT=heldout_docs(),
    )
    standard_sae().save(tmp_path / "dicts" / "std")
    build_features(
        FeaturesConfig(
            acts=str(store),
            dicts=str(tmp_path / "dicts"),
            out=str(tmp_path / "ix"),
            fragment_length=4,
            one_per_document=False,
            decode=False,
        ),
        progress=False,
    )
    ix = FeatureIndex(tmp_path / "ix" / "std")
    contexts, M = contexts_from_index(ix, 0, n=3, seed=1)
    assert pytest.approx(float(X[:, 0].max()), rel=1e-6) == M  # feature 0's code is x[:, 0] where positive
    # every context is a fragment prefix that ends at a token with activation in [M/2, M]
    flat_tok = heldout_tokens().reshape(-1).numpy()
    ends = {int(flat_tok[r]): X[r, 0] for r in range(len(X))}
    assert 1 <= len(contexts) <= 3
    for ctx in contexts:
        assert M / 2 <= ends[ctx[-1]] <= M
    n_strong = int((X[:, 0] >= M / 2).sum())
    assert len(contexts_from_index(ix, 0, n=20)[0]) <= n_strong
    with pytest.raises(SaexError, match="never fires"):
        contexts_from_index(ix, 1)
    assert np.isfinite(M)
