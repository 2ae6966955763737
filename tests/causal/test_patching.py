"""Feature-subset activation patching (Cunningham et al. 2023 §4) against independent references: plain HF
forwards of each prompt alone, a full forward with the activation replaced by a hook written in the test,
KL from our own log-softmax, and the paper's ``x − predict(x) + decode(codes)`` from encode/decode."""

from __future__ import annotations

import copy

import pytest
import torch

from saex.causal.patching import PatchingSetup
from saex.dictionaries.pca import fit_pca, pca_dictionary
from saex.dictionaries.sae import SAE
from saex.errors import SaexError
from saex.lm.hooks import HookedLM
from saex.lm.loading import load_model
from tests._support import FAMILIES
from tests.causal._helpers import (
    hand_prompts,
    identity_dictionary,
    independent_patch,
    kl_pq,
    module_activation,
    plain_last_logits,
    random_sae,
    spliced_last_logits,
    valid_mask,
)

D = 32
MAIN_HOOKS = ("blocks.1.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.1.hook_mlp_out")
EDGE_HOOKS = ("blocks.0.hook_resid_pre", "blocks.3.hook_resid_post", "blocks.2.hook_attn_out", "blocks.2.mlp.hook_post")
SUFFIX_KINDS = ("hook_resid_post", "hook_resid_pre")


def _is_resid(hook: str) -> bool:
    return hook.rsplit(".", 1)[1] in SUFFIX_KINDS


def _cases(hooks, families=FAMILIES):
    """(family, hook) params."""
    return [pytest.param(fam, hook, id=f"{fam}-{hook}") for fam in families for hook in hooks]


@pytest.fixture(scope="module")
def lms(tiny_models):
    return {f: HookedLM(load_model(str(tiny_models[f])).model) for f in FAMILIES}


@pytest.fixture(scope="module")
def prompts():
    return hand_prompts(lengths=(7, 5, 6, 4), seed=0, extra_diff=True)


def _width(hooked, hook):
    return hooked.resolve(hook).width


# -- the unpatched run -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fam,hook", _cases(MAIN_HOOKS + EDGE_HOOKS))
def test_unpatched_final_logits_equal_plain_forward(lms, prompts, fam, hook):
    hooked = lms[fam]
    setup = PatchingSetup(hooked, hook, prompts, identity_dictionary(_width(hooked, hook)))
    expected = plain_last_logits(hooked.model, prompts.base_NT, prompts.lengths_N)
    got = setup.final_logits(setup.x_base_NTD[None].repeat(3, 1, 1, 1))
    assert got.shape == (3, prompts.n, hooked.model.config.vocab_size)
    for b in range(3):
        torch.testing.assert_close(got[b], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fam,hook", _cases(MAIN_HOOKS))
def test_cached_activations_are_the_hook_points(lms, prompts, fam, hook):
    hooked = lms[fam]
    setup = PatchingSetup(hooked, hook, prompts, identity_dictionary(D))
    torch.testing.assert_close(setup.x_base_NTD, module_activation(hooked, hook, prompts.base_NT))
    torch.testing.assert_close(setup.x_target_NTD, module_activation(hooked, hook, prompts.counterfactual_NT))
    logp = torch.log_softmax(plain_last_logits(hooked.model, prompts.counterfactual_NT, prompts.lengths_N), -1)
    torch.testing.assert_close(setup.logp_target_NV, logp, atol=1e-4, rtol=1e-4)


# -- patching everything / nothing ---------------------------------------------------------------------------


def _pca_dictionary(width: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(400, width, generator=g) @ torch.randn(width, width, generator=g) + 3.0
    return pca_dictionary(fit_pca([X[:200], X[200:]]))


@pytest.mark.parametrize("kind", ["identity", "pca"])
@pytest.mark.parametrize("fam,hook", _cases(MAIN_HOOKS + EDGE_HOOKS))
def test_patching_all_features_substitutes_the_counterfactual_activation(lms, prompts, fam, hook, kind):
    """With an exact dictionary, patching every feature puts the counterfactual's activation at every valid
    position: on the residual stream that is the whole counterfactual run (KL ≈ 0); at an attention/MLP
    output only that component is replaced (the residual stream still carries the base tokens)."""
    hooked = lms[fam]
    width = _width(hooked, hook)
    d = identity_dictionary(width) if kind == "identity" else _pca_dictionary(width)
    assert kind == "identity" or d.b_dec_D.abs().max() > 1  # an exact linear dictionary with b_dec ≠ 0
    setup = PatchingSetup(hooked, hook, prompts, d)
    F_ = setup.n_features
    kl, edit = setup.evaluate(torch.ones(2, F_))
    v = valid_mask(prompts)
    x_target = module_activation(hooked, hook, prompts.counterfactual_NT)
    x_base = module_activation(hooked, hook, prompts.base_NT)
    x_new = torch.where(v[..., None], x_target, x_base)
    torch.testing.assert_close(setup.patched(torch.ones(1, F_))[0], x_new, atol=5e-5, rtol=1e-5)
    got = setup.final_logits(setup.patched(torch.ones(1, F_)))[0]
    if _is_resid(hook):
        assert (kl.abs() < 1e-5).all(), kl
        target = plain_last_logits(hooked.model, prompts.counterfactual_NT, prompts.lengths_N)
        torch.testing.assert_close(got, target, atol=2e-4, rtol=1e-4)
    else:
        with torch.no_grad():
            ref = spliced_last_logits(hooked, hook, prompts.base_NT, x_new, prompts.lengths_N)
        torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-4)
        target = plain_last_logits(hooked.model, prompts.counterfactual_NT, prompts.lengths_N)
        torch.testing.assert_close(kl, kl_pq(ref, target).mean().float().expand(2), atol=1e-6, rtol=2e-3)
    # the edit is the whole activation difference at the valid positions
    dist = (x_target - x_base).norm(dim=-1)[v].mean()
    torch.testing.assert_close(edit, torch.full((2,), float(dist)), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("fam,hook", _cases(MAIN_HOOKS))
def test_patching_nothing_gives_kl_of_base_to_target(lms, prompts, fam, hook):
    hooked = lms[fam]
    setup = PatchingSetup(hooked, hook, prompts, random_sae(D, 40, seed=1))
    base = plain_last_logits(hooked.model, prompts.base_NT, prompts.lengths_N)
    target = plain_last_logits(hooked.model, prompts.counterfactual_NT, prompts.lengths_N)
    expected = float(kl_pq(base, target).mean())
    assert expected > 1e-6, "the counterfactual changes the prediction"
    assert setup.kl_base() == pytest.approx(expected, rel=1e-3, abs=1e-7)
    kl, edit = setup.evaluate(torch.zeros(3, setup.n_features))
    torch.testing.assert_close(kl, torch.full((3,), expected, dtype=torch.float32), rtol=1e-3, atol=1e-7)
    assert (edit == 0).all()


# -- KL direction and the patch formula against a full forward ------------------------------------------------


@pytest.mark.parametrize("fam,hook", _cases(MAIN_HOOKS))
def test_kl_is_patched_to_target_by_hand(lms, prompts, fam, hook):
    hooked = lms[fam]
    sae = random_sae(D, 48, seed=2, enc_scale=0.6)
    setup = PatchingSetup(hooked, hook, prompts, sae)
    g = torch.Generator().manual_seed(3)
    masks = (torch.rand(3, 48, generator=g) < 0.5).float()
    got_kl, got_edit = setup.evaluate(masks)
    x_base = module_activation(hooked, hook, prompts.base_NT)
    x_target = module_activation(hooked, hook, prompts.counterfactual_NT)
    v = valid_mask(prompts)
    target = plain_last_logits(hooked.model, prompts.counterfactual_NT, prompts.lengths_N)
    for r in range(3):
        feats = torch.nonzero(masks[r]).squeeze(1).tolist()
        x_new = independent_patch(sae, x_base, x_target, v, feats)
        with torch.no_grad():
            p = spliced_last_logits(hooked, hook, prompts.base_NT, x_new, prompts.lengths_N)
        forward = float(kl_pq(p, target).mean())
        assert abs(float(got_kl[r]) - forward) < 1e-7 + 2e-3 * forward
        edit = (x_new - x_base).norm(dim=-1)[v].mean()
        assert float(got_edit[r]) == pytest.approx(float(edit), rel=1e-4, abs=1e-6)


def test_kl_direction_on_hand_logits(lms, prompts):
    """setup.kl(z) is KL(z ‖ target), not KL(target ‖ z): checked on logits far from the target."""
    setup = PatchingSetup(lms["llama"], "blocks.1.hook_resid_post", prompts, identity_dictionary(D))
    g = torch.Generator().manual_seed(21)
    z = torch.randn(2, prompts.n, setup.logp_target_NV.shape[1], generator=g) * 3
    target = plain_last_logits(lms["llama"].model, prompts.counterfactual_NT, prompts.lengths_N)
    got = setup.kl(z)
    for b in range(2):
        forward = float(kl_pq(z[b], target).mean())
        reverse = float(kl_pq(target, z[b]).mean())
        assert abs(reverse - forward) > 0.1 * forward
        assert float(got[b]) == pytest.approx(forward, rel=1e-4)
        # by hand for one prompt, from our own log-softmax
        lp = z[b, 0].double() - torch.logsumexp(z[b, 0].double(), 0)
        lq = target[0].double() - torch.logsumexp(target[0].double(), 0)
        assert float(kl_pq(z[b, :1], target[:1])[0]) == pytest.approx(float((lp.exp() * (lp - lq)).sum()))


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.1.hook_mlp_out"])
def test_kl_direction_through_a_sharpened_model(lms, prompts, hook):
    """With the LM head scaled up the KLs are large and asymmetric; evaluate matches KL(patched ‖ target)
    from a full forward and not the reverse."""
    model = copy.deepcopy(lms["llama"].model)
    assert not model.config.tie_word_embeddings
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    hooked = HookedLM(model)
    sae = random_sae(D, 48, seed=22, enc_scale=0.6)
    setup = PatchingSetup(hooked, hook, prompts, sae)
    g = torch.Generator().manual_seed(23)
    masks = (torch.rand(3, 48, generator=g) < 0.5).float()
    got = setup.evaluate(masks)[0]
    target = plain_last_logits(model, prompts.counterfactual_NT, prompts.lengths_N)
    v = valid_mask(prompts)
    for r in range(3):
        x_new = independent_patch(
            sae, setup.x_base_NTD, setup.x_target_NTD, v, torch.nonzero(masks[r]).squeeze(1).tolist()
        )
        with torch.no_grad():
            p = spliced_last_logits(hooked, hook, prompts.base_NT, x_new, prompts.lengths_N)
        forward, reverse = float(kl_pq(p, target).mean()), float(kl_pq(target, p).mean())
        assert forward > 0.05 and abs(reverse - forward) > 1e-3 * forward  # 10x the tolerance below
        assert float(got[r]) == pytest.approx(forward, rel=1e-4)


@pytest.mark.parametrize("architecture", ["standard", "topk", "linear", "layer_norm"])
def test_patched_activation_is_x_minus_reconstruction_plus_decoded_codes(lms, prompts, architecture):
    hooked = lms["llama"]
    arch = "topk" if architecture == "layer_norm" else architecture
    sae = random_sae(D, 40, arch, seed=4, k=8 if arch == "topk" else None, enc_scale=0.6)
    if architecture == "layer_norm":  # OpenAI's TopK SAEs: each input layer-normalised, the output mapped back
        sae = SAE(
            sae.W_enc_DF,
            sae.W_dec_FD,
            sae.b_enc_F,
            sae.b_dec_D,
            "topk",
            k=8,
            apply_b_dec_to_input=True,
            normalize="layer_norm",
        )
    assert sae.b_dec_D.abs().max() > 0.1
    hook = "blocks.1.hook_resid_post"
    setup = PatchingSetup(hooked, hook, prompts, sae)
    v = valid_mask(prompts)
    g = torch.Generator().manual_seed(5)
    masks = (torch.rand(4, 40, generator=g) < 0.4).float()
    masks[0] = 1.0
    masks[1] = 0.0
    got = setup.patched(masks)
    assert got.shape == (4, *prompts.base_NT.shape, D)
    for r in range(4):
        feats = torch.nonzero(masks[r]).squeeze(1).tolist()
        expected = independent_patch(sae, setup.x_base_NTD, setup.x_target_NTD, v, feats)
        torch.testing.assert_close(got[r], expected, atol=2e-5, rtol=1e-5)
    # the edit magnitude is the mean of ‖x′ − x‖ over the valid positions, by brute force
    edits = setup.edit_magnitude(masks)
    for r in range(4):
        total, count = 0.0, 0
        for n in range(prompts.n):
            for t in range(int(prompts.lengths_N[n])):
                total += float((got[r, n, t] - setup.x_base_NTD[n, t]).norm())
                count += 1
        assert float(edits[r]) == pytest.approx(total / count, rel=1e-4, abs=1e-6)


def test_padding_positions_are_not_patched(lms, prompts):
    hooked = lms["llama"]
    sae = random_sae(D, 40, "linear", seed=6)
    setup = PatchingSetup(hooked, "blocks.1.hook_resid_post", prompts, sae)
    v = valid_mask(prompts)
    assert (~v).any()
    raw = sae.encode(setup.x_target_NTD) - sae.encode(setup.x_base_NTD)
    assert raw[~v].abs().max() > 1e-3, "the codes do differ at the padding positions"
    assert (setup.delta_NTF[~v] == 0).all()
    x = setup.patched(torch.ones(2, 40))
    assert torch.equal(x[:, ~v], setup.x_base_NTD[None, ~v].expand(2, -1, -1))
    assert (x[:, v] - setup.x_base_NTD[None, v]).abs().max() > 1e-3


def test_features_with_equal_codes_are_inactive(lms, prompts):
    hooked = lms["llama"]
    dead, constant = (0, 5, 17), (3, 30)
    sae = random_sae(D, 40, "standard", seed=7, dead=dead, constant=constant)
    setup = PatchingSetup(hooked, "blocks.1.hook_resid_post", prompts, sae)
    v = valid_mask(prompts)
    c_b, c_t = sae.encode(setup.x_base_NTD), sae.encode(setup.x_target_NTD)
    assert torch.equal(c_b[..., 3], torch.ones_like(c_b[..., 3]))  # constant, nonzero
    expected = [j for j in range(40) if (c_t[..., j] - c_b[..., j])[v].abs().max() > 0]
    assert setup.active.tolist() == expected
    assert not set(dead + constant) & set(expected)
    assert len(expected) > 10
    # toggling inactive features changes nothing
    g = torch.Generator().manual_seed(8)
    m = (torch.rand(1, 40, generator=g) < 0.5).float()
    m2 = m.clone()
    m2[0, list(dead + constant)] = 1 - m2[0, list(dead + constant)]
    assert torch.equal(setup.patched(m), setup.patched(m2))


@pytest.mark.parametrize("fam,hook", _cases(("blocks.1.hook_resid_post", "blocks.1.hook_mlp_out")))
def test_evaluate_batch_size_does_not_matter(lms, prompts, fam, hook):
    hooked = lms[fam]
    setup = PatchingSetup(hooked, hook, prompts, random_sae(D, 24, seed=9, enc_scale=0.6))
    g = torch.Generator().manual_seed(10)
    masks = (torch.rand(11, 24, generator=g) < 0.5).float()
    k1, e1 = setup.evaluate(masks, batch=1)
    k8, e8 = setup.evaluate(masks, batch=8)
    assert k1.shape == e1.shape == (11,)
    torch.testing.assert_close(k1, k8, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(e1, e8, atol=1e-6, rtol=1e-5)
    assert k1.std() > 0


def test_wrong_dictionary_width_is_an_error(lms, prompts):
    hooked = lms["llama"]
    with pytest.raises(SaexError, match="d_in"):
        PatchingSetup(hooked, "blocks.1.hook_resid_post", prompts, identity_dictionary(16))
    with pytest.raises(SaexError, match="width"):
        PatchingSetup(hooked, "blocks.1.mlp.hook_post", prompts, identity_dictionary(D))
    with pytest.raises(SaexError):
        PatchingSetup(hooked, "blocks.9.hook_resid_post", prompts, identity_dictionary(D))


# -- prompt-set shapes and model quirks -----------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [(6,), (4, 3, 4, 2)], ids=["one-prompt", "N-equals-T"])
@pytest.mark.parametrize("fam", ["llama", "gpt2", "gemma3"])
def test_batch_expansion_of_block_kwargs(lms, fam, lengths):
    hooked = lms[fam]
    pr = hand_prompts(lengths=lengths, seed=11, io_pos=1)
    sae = random_sae(D, 24, seed=12, enc_scale=0.6)
    setup = PatchingSetup(hooked, "blocks.1.hook_resid_pre", pr, sae)
    g = torch.Generator().manual_seed(13)
    masks = (torch.rand(3, 24, generator=g) < 0.5).float()
    got = setup.final_logits(setup.patched(masks))
    x_base, x_target = setup.x_base_NTD, setup.x_target_NTD
    for r in range(3):
        x_new = independent_patch(sae, x_base, x_target, valid_mask(pr), torch.nonzero(masks[r]).squeeze(1).tolist())
        with torch.no_grad():
            ref = spliced_last_logits(hooked, "blocks.1.hook_resid_pre", pr.base_NT, x_new, pr.lengths_N)
        torch.testing.assert_close(got[r], ref, atol=1e-4, rtol=1e-4)


def test_gemma_beyond_the_sliding_window(lms):
    hooked = lms["gemma3"]
    assert hooked.model.config.sliding_window == 16
    pr = hand_prompts(lengths=(21, 18, 20), seed=14, io_pos=3)
    setup = PatchingSetup(hooked, "blocks.1.hook_resid_post", pr, identity_dictionary(D))
    torch.testing.assert_close(
        setup.final_logits(setup.x_base_NTD[None])[0],
        plain_last_logits(hooked.model, pr.base_NT, pr.lengths_N),
        atol=1e-4,
        rtol=1e-4,
    )
    assert float(setup.evaluate(torch.ones(1, D))[0][0]) < 1e-5
    assert setup.kl_base() > 1e-5


def test_final_logit_softcapping_is_applied(lms, prompts):
    model = copy.deepcopy(lms["gemma3"].model)
    model.config.final_logit_softcapping = 0.5
    hooked = HookedLM(model)
    setup = PatchingSetup(hooked, "blocks.2.hook_resid_post", prompts, identity_dictionary(D))
    expected = plain_last_logits(model, prompts.base_NT, prompts.lengths_N)
    assert expected.abs().max() < 0.5
    torch.testing.assert_close(setup.final_logits(setup.x_base_NTD[None])[0], expected, atol=1e-5, rtol=1e-4)
