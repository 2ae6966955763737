"""The architecture registry: an architecture is one class decorated ``@register``; ``--arch`` accepts exactly
the registered names and the trainer builds and steps a new one with no change of its own."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from saex.dictionaries import SAE, TiedL1, architecture_names, architectures, register
from saex.dictionaries.ensemble import _REGISTRY, Member
from saex.errors import SaexError
from saex.train import trainer
from saex.train.config import TrainConfig
from tests.train._synth import train_cfg


def test_names_come_from_the_registry():
    assert {"tied_l1", "untied_l1", "topk", "batchtopk"} <= set(architecture_names())
    for name, cls in architectures().items():
        assert cls.arch == name


def test_the_trainer_has_no_per_architecture_branch():
    source = inspect.getsource(trainer)
    for name in architecture_names():
        assert f'"{name}"' not in source, name


@pytest.fixture
def halved():
    """A registered architecture that exists only in this test: the tied SAE with every α halved."""

    @register
    class HalvedL1(TiedL1):
        arch = "halved_l1_test"

        @classmethod
        def sweep(cls, cfg, ratio, d_dict):
            return [{"name": f"{cls.arch}_r{ratio:g}_a{a / 2:.3g}", "alpha": a / 2, "k": None} for a in cfg.alpha]

    yield HalvedL1
    del _REGISTRY["halved_l1_test"]


def test_a_registered_architecture_trains_without_touching_the_trainer(halved, small_store, tmp_path):
    assert "halved_l1_test" in architecture_names()
    out = trainer.train(train_cfg(small_store, tmp_path / "out", arch="halved_l1_test", steps=40), progress=False)
    run = json.loads((out / "run.json").read_text())
    assert [m["name"] for m in run["members"]] == ["halved_l1_test_r4_a0.005", "halved_l1_test_r4_a0.01"]
    assert [m["alpha"] for m in run["members"]] == [0.005, 0.01]
    sae = SAE.load(out / "halved_l1_test_r4_a0.005")
    assert sae.metadata["arch"] == "halved_l1_test" and torch.isfinite(sae.W_dec_FD).all()
    # built by the class's own build(): one ensemble of both members, as the tied SAE's
    members = [Member(**m) for m in run["members"]]
    model = halved.build(TrainConfig(), 16, 64, members)
    assert isinstance(model, TiedL1) and model.K == 2


def test_an_unregistered_name_is_refused_with_the_registered_ones():
    with pytest.raises(SaexError, match=r"unknown --arch 'halved_l1_test'; allowed: .*tied_l1"):
        TrainConfig(arch="halved_l1_test")
