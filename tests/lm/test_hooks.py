"""Hook points against independent references: HF hidden states, residual-stream algebra, module maths."""

import pytest
import torch

from saex.errors import SaexError
from saex.lm.hooks import HOOK_KINDS, HookedLM
from saex.lm.loading import load_model
from tests._support import FAMILIES


@pytest.fixture(scope="module", params=FAMILIES)
def hooked(request, tiny_models):
    lm = load_model(str(tiny_models[request.param]))
    return HookedLM(lm.model)


def _ids(hooked, seed=0, B=3, T=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, hooked.model.config.vocab_size, (B, T), generator=g)


def test_resid_hooks_equal_hidden_states(hooked):
    ids = _ids(hooked)
    with torch.no_grad():
        hs = hooked.model(ids, output_hidden_states=True).hidden_states
    names = [f"blocks.{L}.{k}" for L in range(hooked.n_layers) for k in ("hook_resid_pre", "hook_resid_post")]
    with hooked.capture(names, stop_early=False) as run:
        acts = run(ids)
    for L in range(hooked.n_layers):
        assert torch.equal(acts[f"blocks.{L}.hook_resid_pre"], hs[L])
        if hooked.n_layers - 1 > L:  # HF's last hidden state has the final norm applied
            assert torch.equal(acts[f"blocks.{L}.hook_resid_post"], hs[L + 1])
    last = acts[f"blocks.{hooked.n_layers - 1}.hook_resid_post"]
    assert not torch.allclose(last, hs[-1]), "the final entry of hidden_states is normed; the hook must not be"


def test_residual_stream_decomposes_into_attn_and_mlp(hooked):
    # resid_post = resid_pre + attn_out + mlp_out holds for sequential (llama, gpt2, gemma) and parallel
    # (gpt_neox) blocks alike; a hook on the wrong module breaks it.
    ids = _ids(hooked, seed=1)
    with hooked.capture(hooked.hook_names(), stop_early=False) as run:
        a = run(ids)
    for L in range(hooked.n_layers):
        total = a[f"blocks.{L}.hook_resid_pre"] + a[f"blocks.{L}.hook_attn_out"] + a[f"blocks.{L}.hook_mlp_out"]
        torch.testing.assert_close(total, a[f"blocks.{L}.hook_resid_post"], rtol=1e-5, atol=1e-6)
        assert a[f"blocks.{L}.hook_attn_out"].abs().max() > 0


def test_mlp_hook_post_is_the_hidden_layer(hooked):
    ids = _ids(hooked, seed=2)
    L = 1
    with hooked.capture([f"blocks.{L}.mlp.hook_post", f"blocks.{L}.hook_mlp_out"]) as run:
        a = run(ids)
    post = a[f"blocks.{L}.mlp.hook_post"]
    assert post.shape[-1] == hooked.d_mlp != hooked.d_model
    block = hooked.blocks[L]
    down = block.get_submodule(hooked.family.mlp_down)
    with torch.no_grad():
        out = down(post)
        if hooked.family.name == "gemma":
            out = block.post_feedforward_layernorm(out)
    torch.testing.assert_close(out, a[f"blocks.{L}.hook_mlp_out"], rtol=1e-5, atol=1e-6)


def test_ln2_normalized_is_the_mlp_input_and_maps_to_mlp_out(hooked):
    """What a transcoder of the MLP reads: the pre-MLP norm's output, which the MLP maps to hook_mlp_out."""
    ids = _ids(hooked, seed=3)
    L = 1
    names = [f"blocks.{L}.hook_resid_pre", f"blocks.{L}.ln2.hook_normalized", f"blocks.{L}.hook_mlp_out"]
    names.insert(1, f"blocks.{L}.hook_attn_out")
    with hooked.capture(names) as run:
        a = run(ids)
    block = hooked.blocks[L]
    x = a[f"blocks.{L}.ln2.hook_normalized"]
    assert x.shape[-1] == hooked.d_model
    norm = {
        "llama": "post_attention_layernorm",
        "gemma": "pre_feedforward_layernorm",
        "gpt2": "ln_2",
        "gpt_neox": "post_attention_layernorm",
    }[hooked.family.name]
    # GPT-NeoX's parallel block norms the block input; the others the stream after attention
    stream = a[f"blocks.{L}.hook_resid_pre"]
    if hooked.family.name != "gpt_neox" or not hooked.model.config.use_parallel_residual:
        stream = stream + a[f"blocks.{L}.hook_attn_out"]
    with torch.no_grad():
        torch.testing.assert_close(x, block.get_submodule(norm)(stream), rtol=1e-5, atol=1e-5)
        out = block.mlp(x)
        if hooked.family.name == "gemma":
            out = block.post_feedforward_layernorm(out)
    torch.testing.assert_close(out, a[f"blocks.{L}.hook_mlp_out"], rtol=1e-5, atol=1e-6)


def test_truncated_forward_equals_full_and_skips_later_layers(hooked):
    ids = _ids(hooked, seed=3)
    names = ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out", "blocks.1.mlp.hook_post"]
    with hooked.capture(names, stop_early=False) as run:
        full = run(ids)
    calls = []
    later = [
        hooked.blocks[L].register_forward_pre_hook(lambda *a, L=L: calls.append(L)) for L in range(2, hooked.n_layers)
    ]
    head = hooked.model.get_output_embeddings().register_forward_pre_hook(lambda *a: calls.append("head"))
    try:
        with hooked.capture(names) as run:
            short = run(ids)
    finally:
        for h in later + [head]:
            h.remove()
    assert calls == []
    for n in names:
        assert torch.equal(full[n], short[n])


def test_stop_at_an_input_hook_never_runs_that_module(hooked):
    ids = _ids(hooked)
    calls = []
    h = hooked.blocks[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        with hooked.capture(["blocks.2.hook_resid_pre"]) as run:
            out = run(ids)
    finally:
        h.remove()
    assert calls == [] and out["blocks.2.hook_resid_pre"].shape == (3, 12, hooked.d_model)


def test_hooks_are_removed_after_capture(hooked):
    before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in hooked.model.modules())
    with hooked.capture(hooked.hook_names()) as run:
        run(_ids(hooked))
    after = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in hooked.model.modules())
    assert before == after


@pytest.mark.parametrize(
    "bad",
    [
        "blocks.9.hook_resid_post",
        "blocks.1.resid",
        "layer.1.hook_resid_post",
        "blocks.-1.hook_resid_post",
        "blocks.1.hook_mlp_post",
    ],
)
def test_unknown_hook_names_list_the_valid_ones(hooked, bad):
    with pytest.raises(SaexError) as e:
        hooked.resolve(bad)
    assert repr(bad) in str(e.value) and "hook_resid_post" in str(e.value) and "0..3" in str(e.value)


def test_every_listed_name_resolves(hooked):
    names = hooked.hook_names()
    assert len(names) == hooked.n_layers * len(HOOK_KINDS)
    widths = {hooked.resolve(n).width for n in names}
    assert widths == {hooked.d_model, hooked.d_mlp}


def test_unsupported_family_is_a_clear_error(tiny_models):
    lm = load_model(str(tiny_models["llama"]))
    lm.model.config.model_type = "mamba"
    with pytest.raises(SaexError, match="'mamba'.*supported"):
        HookedLM(lm.model)
