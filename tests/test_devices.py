"""``saex.devices``: ``auto`` on this machine, explicit devices, and one clear error for a device or dtype the
machine does not have (GPUs simulated by patching torch's queries, so the checks run on the CPU)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from saex import devices
from saex.devices import resolve_device, resolve_lm_dtype
from saex.dictionaries.sae import SAE
from saex.errors import SaexError
from saex.evaluate.spliced import batch_sums, spliced_losses, splices_of
from saex.lm.hooks import HookedLM
from saex.lm.loading import load_model


def test_auto_and_cpu_here():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: auto is not the CPU")
    assert resolve_device("auto") == resolve_device(None) == resolve_device("CPU") == torch.device("cpu")
    assert devices.available()[0] == "cpu"
    assert resolve_lm_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_lm_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert resolve_lm_dtype("float16", torch.device("cpu")) == torch.float16


def _gpus(monkeypatch, n: int, mps: bool = False):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(devices, "_mps", lambda: mps)


def test_cuda_and_mps_against_what_the_machine_has(monkeypatch):
    _gpus(monkeypatch, 0)
    with pytest.raises(SaexError, match="--device cuda: this machine has no CUDA GPU; available: cpu"):
        resolve_device("cuda")
    with pytest.raises(SaexError, match="--device mps: this machine has no MPS device"):
        resolve_device("mps")
    _gpus(monkeypatch, 1)
    assert resolve_device("auto") == torch.device("cuda", 0) == resolve_device("cuda")
    assert devices.available() == ["cpu", "cuda:0"]
    with pytest.raises(SaexError, match=r"--device cuda:7: this machine has 1 CUDA GPU\(s\), cuda:0..cuda:0"):
        resolve_device("cuda:7")
    _gpus(monkeypatch, 0, mps=True)
    assert resolve_device("auto") == torch.device("mps")


def test_bad_names():
    for bad in ("gpu", "cuda:x", "tpu", "cuda:-1"):
        with pytest.raises(SaexError, match="unknown --device"):
            resolve_device(bad)
    with pytest.raises(SaexError, match="unknown --lm-dtype 'int3'; allowed: auto, float32, bfloat16, float16"):
        resolve_lm_dtype("int3", torch.device("cpu"))


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu", "gated", "linear"])
@pytest.mark.parametrize("normalize", ["none", "layer_norm"])
def test_inference_dictionaries_and_steering_run_on_the_meta_device(architecture, normalize):
    """Every tensor an inference dictionary or a steering edit makes follows its inputs' device: on ``meta`` a
    tensor made on the CPU by mistake meets a meta one and raises (for elementwise operations), as it would on a
    GPU, instead of reaching a user with one."""
    from saex.causal.steering import Edit, Steering
    from saex.dictionaries import SAE

    D, F = 8, 16
    kw: dict = {"k": 3} if architecture == "topk" else {}
    if architecture == "jumprelu":
        kw["threshold_F"] = torch.zeros(F)
    if architecture == "gated":
        kw |= {"b_gate_F": torch.zeros(F), "r_mag_F": torch.zeros(F)}
    d = SAE(
        torch.randn(D, F), torch.randn(F, D), torch.zeros(F), torch.zeros(D), architecture, normalize=normalize, **kw
    )
    d = d.to("meta")
    x = torch.randn(4, 5, D, device="meta")
    outs = [d.encode(x), d(x), d.code_of(x, 2), Steering(d, [Edit(1, "add", 2.0), Edit(2, "ablate")], start=1)(x)]
    assert all(t.device.type == "meta" for t in outs)
    assert outs[0].shape == (4, 5, F) and outs[3].shape == x.shape


def test_placement_of_a_config(monkeypatch):
    """--lm-device defaults to --device; --lm-dtype auto follows the model's device, not the dictionaries'."""
    from saex.devices import LMOptions, placement

    p = placement(LMOptions())
    if not torch.cuda.is_available():
        assert p.device == p.lm_device == torch.device("cpu") and p.lm_dtype == torch.float32
    _gpus(monkeypatch, 2)
    p = placement(LMOptions(device="cpu", lm_device="cuda:1"))
    assert (p.device, p.lm_device, p.lm_dtype) == (torch.device("cpu"), torch.device("cuda", 1), torch.bfloat16)
    assert p.describe() == {"device": "cpu", "lm_device": "cuda:1", "lm_dtype": "bfloat16"}
    p = placement(LMOptions(device="cuda", lm_dtype="float32"))
    assert p.lm_device == torch.device("cuda", 0) and p.lm_dtype == torch.float32
    with pytest.raises(SaexError, match=r"--lm-device cuda:2: this machine has 2 CUDA GPU\(s\)"):
        placement(LMOptions(device="cpu", lm_device="cuda:2"))


# -- every stage: --device / --lm-device checked against the machine before any work --------------------------

LM_STAGES = ("eval", "interpret", "ioi", "case-study", "reproduce", "train")
"""The stages that run a language model: they take --lm-device and --lm-dtype too (train: with --model)."""
STAGE_ARGS = {
    "baselines": ["--acts", "{missing}", "--hook", "blocks.0.hook_resid_post", "--out", "{out}"],
    "eval": ["--acts", "{missing}", "--dicts", "{missing}", "--out", "{out}"],
    "features": ["--acts", "{missing}", "--dicts", "{missing}", "--out", "{out}"],
    "interpret": ["--features", "{missing}", "--out", "{out}"],
    "ioi": ["--model", "{missing}", "--dicts", "{missing}", "--out", "{out}"],
    "case-study": ["--acts", "{missing}", "--dict", "{missing}", "--out", "{out}"],
    "dashboard": ["--features", "{missing}", "--out", "{out}"],
    "mmcs": ["{missing}", "{missing}"],
    "reproduce": ["--model", "{missing}", "--out", "{out}"],
    "train": ["--model", "{missing}", "--hooks", "blocks.0.hook_resid_post", "--out", "{out}"],
    "calibrate": ["--acts", "{missing}", "--hook", "blocks.0.hook_resid_post", "--out", "{out}"],
}


@pytest.mark.parametrize(
    ("command", "option"), [(c, "--device") for c in STAGE_ARGS] + [(c, "--lm-device") for c in LM_STAGES]
)
def test_every_stage_refuses_a_device_the_machine_lacks_before_any_work(monkeypatch, tmp_path, command, option):
    """``--device cuda`` (and ``--lm-device cuda``) on a machine without a GPU: one line naming what it has,
    before the stage reads its inputs (they do not exist here: their error would come first otherwise) and
    before it writes anything."""
    from tests._cli import run_cli

    _gpus(monkeypatch, 0)
    fill = {"missing": str(tmp_path / "missing"), "out": str(tmp_path / "out")}
    args = [a.format(**fill) for a in STAGE_ARGS[command]]
    rc, out, err = run_cli(command, *args, "--device", "cpu", option, "cuda")
    assert rc == 2 and not out
    lines = err.strip().splitlines()
    assert lines == [f"saex {command}: error: {option} cuda: this machine has no CUDA GPU; available: cpu"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", list(STAGE_ARGS))
def test_the_options_each_stage_takes(command):
    """Every stage takes --device; those that run a language model take --lm-device and --lm-dtype as well."""
    from saex.cli import stage_modules

    fields = {f.name for f in dataclasses.fields(stage_modules()[command].CONFIG)}
    lm = {"lm_device", "lm_dtype"} <= fields
    assert "device" in fields and lm == (command in LM_STAGES) and ("lm_device" in fields) == lm


# -- meta-device dry runs of the paths where activations cross between the model and the dictionaries ---------


class _MixedDevices(TorchDispatchMode):
    """Records every operation whose tensor arguments lie on more than one device (0-d scalars aside). On a GPU
    each would be an error or a hidden copy; on ``meta`` a matmul, an index or an in-place add into a CPU
    tensor would otherwise pass unnoticed (only elementwise operations check)."""

    def __init__(self):
        super().__init__()
        self.mixed: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = pytree.tree_leaves((args, kwargs))
        devices = {t.device.type for t in leaves if isinstance(t, torch.Tensor) and t.dim() > 0}
        if len(devices) > 1:
            self.mixed.append(f"{func} on {sorted(devices)}")
        return func(*args, **kwargs)


def _meta_llama(monkeypatch):
    """A tiny random Llama on the meta device (d_model 32, d_mlp 48, 3 blocks)."""
    import transformers.masking_utils as masking
    from transformers import LlamaConfig, LlamaForCausalLM

    # the only value transformers reads from the inputs (a check for packed sequences; ours never are)
    monkeypatch.setattr(masking, "find_packed_sequence_indices", lambda position_ids: None)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=60,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return HookedLM(LlamaForCausalLM(config).eval().to("meta"))


def _sae(D: int, F: int = 24, D_out: int | None = None, skip: bool = False, device="meta"):
    D_out = D_out or D
    d = SAE(
        torch.randn(D, F),
        torch.randn(F, D_out),
        torch.zeros(F),
        torch.zeros(D_out),
        W_skip_OD=torch.randn(D_out, D) if skip else None,
        apply_b_dec_to_input=not (skip or D_out != D),
    )
    return d.to(device)


def _on_meta(*tensors) -> bool:
    return all(t.device.type == "meta" for t in tensors)


def test_splice_runs_on_the_meta_device(monkeypatch):
    """Spliced CE / KL, one batch: token ids from the CPU (a store), the model and the dictionaries on the device,
    at a residual hook, at the MLP neurons (a forward pre-hook) and a skip transcoder replacing the MLP's output."""
    hooked = _meta_llama(monkeypatch)
    ids = torch.randint(0, 60, (2, 9))
    with _MixedDevices() as mode:
        runs = [
            batch_sums(hooked, ids, splices_of(hooked, "blocks.1.hook_resid_post", {"sae": _sae(32)})),
            batch_sums(hooked, ids, splices_of(hooked, "blocks.1.mlp.hook_post", {"sae": _sae(48)})),
            batch_sums(
                hooked,
                ids,
                splices_of(
                    hooked, "blocks.1.ln2.hook_normalized", {"tc": _sae(32, skip=True)}, target="blocks.1.hook_mlp_out"
                ),
            ),
        ]
    assert mode.mixed == []
    for (ce, kl), name in zip(runs, ("sae", "sae", "tc")):
        assert set(ce) == {"<clean>", "<zero>", name} and set(kl) == {"<zero>", name}
        assert _on_meta(*ce.values(), *kl.values()) and all(t.shape == () for t in [*ce.values(), *kl.values()])


def test_a_bfloat16_model_splices_a_float32_dictionary(tiny_llama):
    """The model in bfloat16, the dictionary in float32: the activation is cast up for the dictionary and its
    reconstruction back down for the model, so an identity dictionary changes nothing (KL exactly 0)."""
    from tests.causal._helpers import identity_dictionary

    model = load_model(str(tiny_llama)).model.eval().to(torch.bfloat16)
    hooked = HookedLM(model)
    ids = torch.randint(5, 60, (3, 10))
    r = spliced_losses(hooked, "blocks.1.hook_resid_post", {"id": identity_dictionary(32)}, ids, batch_size=2)["id"]
    assert r["kl"] == 0.0 and r["ce_spliced"] == r["ce_clean"] and math.isfinite(r["ce_zero"])


def test_patching_and_ablation_run_on_the_meta_device(monkeypatch):
    """IOI patching (blocks called directly after a residual hook; a full forward with a splice after the MLP's
    output), its attribution backward, a feature's ablation through a ``Segment`` and the circuit's attribution:
    prompts and contexts from the CPU, everything else on the device."""
    from saex.causal.ablation import Segment
    from saex.causal.circuits import Level, _Circuit
    from saex.causal.ioi import IOIPrompts
    from saex.causal.patching import PatchingSetup

    hooked = _meta_llama(monkeypatch)
    base = torch.randint(5, 60, (3, 8))
    cf = base.clone()
    cf[:, 2] = (cf[:, 2] + 1) % 60
    prompts = IOIPrompts(base, cf, torch.tensor([8, 6, 7]), base[:, 2], base[:, 0], cf[:, 2], [], [])
    d = _sae(32)
    with _MixedDevices() as mode:
        out = []
        for hook in ("blocks.1.hook_resid_post", "blocks.1.hook_mlp_out"):
            setup = PatchingSetup(hooked, hook, prompts, d)
            out += setup.evaluate_batch(torch.ones(2, 24))  # the feature mask from the CPU, as greedy makes it
            with torch.enable_grad():
                x = setup.patched(torch.ones(1, 24)).detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(setup.kl(setup.final_logits(x))[0], x)
            out.append(grad)
        contexts = [[5, 6, 7, 8, 9], [10, 11, 12]]
        seg = Segment(hooked, "blocks.0.hook_resid_post", torch.randint(5, 60, (2, 5)), device="meta")
        c_NT = d.encode(seg.x_start)[..., 3]
        ablated = seg((seg.x_start - c_NT[..., None] * d.W_dec_FD[3])[None])[0]
        out += [ablated, hooked.logits_at(ablated[:, -1])]
        mlp = Segment(
            hooked, "blocks.0.mlp.hook_post", torch.randint(5, 60, (2, 5)), "blocks.2.hook_resid_post", "meta"
        )
        out.append(mlp(mlp.x_start[None]))
        run = _Circuit(hooked, contexts, candidates=4, batch=2, children=2, device=torch.device("meta"))
        up, parent = Level("blocks.0.hook_resid_post", _sae(32)), Level("blocks.1.hook_resid_post", d)
        seg = run.segment(up.hook, parent.hook)
        metric = lambda y: (d.code_of(y, 3) * run.last_NT).sum(-1)
        c_NTF = up.dictionary.encode(seg.x_start)
        out.append(run.attribution(seg, metric, c_NTF, up.dictionary.W_dec_FD))
    assert mode.mixed == []
    assert _on_meta(*out)
    assert out[0].shape == (2,) and out[2].shape == (1, 3, 8, 32) and out[-1].shape == (24,)


def test_the_feature_index_runs_on_the_meta_device():
    """One chunk of ``saex features``: rows read from the store (CPU float32) encoded on the dictionary's device,
    tokens excluded there, and the index builder's running state kept there (its random keys are drawn on the
    CPU, the same on every device, and moved)."""
    from saex.features.index import IndexBuilder
    from saex.stages.features import encode_fragments

    d = _sae(32)
    x_ND = torch.randn(3 * 8, 32)
    keep_CL = torch.rand(3, 8) > 0.2
    with _MixedDevices() as mode:
        c_CLF, keep = encode_fragments(d, x_ND, keep_CL, limit=10.0)
        builder = IndexBuilder(24, 3, 4, 2, seed=0, device="meta")
        builder.update(c_CLF, torch.arange(3), 0, keep)
        builder.update(c_CLF, torch.arange(3, 6), 1)
    assert mode.mixed == []
    assert c_CLF.shape == (3, 8, 24) and _on_meta(c_CLF, keep)
    state = [builder.max_F, builder.moments_4F, builder.nonzero_F, builder.n_tokens_]
    state += [t for kind in (builder.top, builder.random, builder.zero) for t in vars(kind).values()]
    assert _on_meta(*state)


def test_patching_and_ablation_with_a_bfloat16_model(tiny_llama):
    """The model in bfloat16, the dictionary in float32 (real numbers, on the CPU): patching every feature of an
    identity dictionary gives the counterfactual run (KL to it near 0, against the unpatched KL), IOI's task
    metric and a feature's ablation effect come out finite."""
    from saex.causal.ablation import output_effect
    from saex.causal.ioi import task_performance
    from saex.causal.patching import PatchingSetup
    from tests.causal._helpers import hand_prompts, identity_dictionary

    model = load_model(str(tiny_llama)).model.eval()
    with torch.no_grad():  # larger weights than the initialisation's, so that the patch moves the prediction
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(5.0)
    hooked = HookedLM(model.to(torch.bfloat16))
    prompts = hand_prompts()
    d = identity_dictionary(32)
    setup = PatchingSetup(hooked, "blocks.1.hook_resid_post", prompts, d)
    kl, edit = setup.evaluate(torch.ones(1, 32))
    assert kl.dtype == torch.float32 and float(kl[0]) < 1e-3 < setup.kl_base() and float(edit[0]) > 0
    assert math.isfinite(task_performance(model, prompts)["mean_logit_diff"])
    effect = output_effect(hooked, "blocks.1.hook_resid_post", d, 3, prompts.base_NT.tolist(), top=3)
    assert effect["positions"] > 0 and all(math.isfinite(r["delta"]) for r in effect["decreased"])
