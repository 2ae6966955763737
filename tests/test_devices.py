"""``saex.devices``: ``auto`` on this machine, explicit devices, and one clear error for a device or dtype the
machine does not have (GPUs simulated by patching torch's queries, so the checks run on the CPU)."""

from __future__ import annotations

import pytest
import torch

from saex import devices
from saex.devices import resolve_device, resolve_lm_dtype
from saex.errors import SaexError


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
