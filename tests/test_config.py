"""Typed configs (saex.config): fields converted from text and checked as declared, from Python, the command
line, config files and --set alike; the CLI options made from them and back."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from typing import Literal

import pytest

from saex.config import Config, add_arguments, config_dict, from_namespace, opt, to_arguments
from saex.errors import SaexError
from saex.stages.eval import EvalConfig
from saex.stages.harvest import HarvestConfig
from saex.train.config import TrainConfig


@dataclass
class Toy(Config):
    """A config with one field of every kind."""

    ratios: list[float] = opt([4.0], gt=0, nonempty=True)
    """Ratios."""
    ks: list[int] = opt([32], ge=1)
    """Ks."""
    mode: Literal["fast", "slow"] = "fast"
    """Mode."""
    steps: int = opt(10, gt=0)
    """Steps."""
    frac: float = opt(0.5, ge=0, le=1)
    """A fraction."""
    limit: int | None = opt(None, gt=0)
    """An optional limit."""
    name: str = "x"
    """A name."""
    flag: bool = True
    """A switch."""


def test_lists_are_lists_from_python_and_from_text():
    assert TrainConfig(alpha=[1e-4, 8.6e-4]).alpha == [1e-4, 8.6e-4]
    assert TrainConfig(alpha="1e-4,8.6e-4").alpha == [1e-4, 8.6e-4]  # a manifest written before lists were lists
    assert TrainConfig(ratio=2).ratio == [2.0] and isinstance(TrainConfig(ratio=2).ratio[0], float)
    assert TrainConfig(k="16, 32").k == [16, 32]
    assert HarvestConfig(hooks="blocks.1.hook_resid_post,blocks.2.mlp.hook_post").hooks == [
        "blocks.1.hook_resid_post",
        "blocks.2.mlp.hook_post",
    ]
    # defaults are copied, not shared between instances
    a, b = Toy(), Toy()
    a.ratios.append(1.0)
    assert b.ratios == [4.0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ratios=[1, -2]), r"--ratios must be positive, got -2\.0"),
        (dict(ratios=[]), r"--ratios is empty"),
        (dict(ks="3,x"), r"--ks must be comma-separated integers, got '3,x'"),
        (dict(ks=[0]), r"--ks must be >= 1, got 0"),
        (dict(mode="medium"), r"unknown --mode 'medium'; allowed: fast, slow"),
        (dict(steps=0), r"--steps must be positive, got 0"),
        (dict(steps="ten"), r"--steps must be an integer, got 'ten'"),
        (dict(frac=1.5), r"--frac must be <= 1, got 1\.5"),
        (dict(frac=float("nan")), r"--frac must be finite, got nan"),
        (dict(limit=0), r"--limit must be positive, got 0"),
        (dict(flag="maybe"), r"--flag must be true or false, got 'maybe'"),
    ],
)
def test_declared_checks_name_the_value_and_what_is_allowed(kwargs, message):
    with pytest.raises(SaexError, match=message):
        Toy(**kwargs)


def test_checks_run_on_replace_too():
    with pytest.raises(SaexError, match=r"--lr must be positive, got -1\.0"):
        replace(TrainConfig(), lr=-1)
    with pytest.raises(
        SaexError,
        match="unknown --arch 'crosscoder'; allowed: batchtopk, gated, jumprelu, matryoshka, tied_l1, topk, untied_l1",
    ):
        TrainConfig(arch="crosscoder")


def test_none_stays_none_and_conversions_are_exact():
    t = Toy(limit=None, steps="12", frac=1, ratios="0.5,2")
    assert (t.limit, t.steps, t.frac, t.ratios) == (None, 12, 1.0, [0.5, 2.0])
    assert isinstance(t.frac, float) and isinstance(t.steps, int)


def test_command_line_round_trip():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Toy)
    t = Toy(ratios=[0.5, 8.0], ks=[4], mode="slow", steps=3, frac=0.25, limit=7, name="y", flag=False)
    args = to_arguments(t)
    assert "--ratios=0.5,8.0" in args and "--no-flag" in args
    assert from_namespace(Toy, parser.parse_args(args)) == t
    # options not given keep the defaults, which a config file (base) may set
    assert from_namespace(Toy, parser.parse_args(["--steps", "5"]), {"name": "z"}) == Toy(steps=5, name="z")


def test_manifests_record_lists_and_reload(tmp_path):
    cfg = EvalConfig(dicts=["a", "b"], tokens=100)
    d = config_dict(cfg)
    assert d["dicts"] == ["a", "b"] and d["tokens"] == 100
    assert EvalConfig(**json.loads(json.dumps(d))) == cfg


def test_help_names_the_choices_once(capsys):
    parser = argparse.ArgumentParser(prog="toy")
    add_arguments(parser, Toy)
    text = " ".join(parser.format_help().split())
    assert "Mode. (one of: fast, slow) (default: fast)" in text and "Ratios. (default: 4.0)" in text


def test_a_folder_written_before_lists_were_lists_is_still_the_same_run(small_store, tmp_path):
    """A completed training run whose run.json records ``alpha`` as text is recognised as the same run, not
    refused as a different one (the identity is compared in the current field types)."""
    from saex.train import trainer
    from tests.train._synth import train_cfg

    out = trainer.train(train_cfg(small_store, tmp_path / "out", steps=20), progress=False)
    run = json.loads((out / "run.json").read_text())
    run["identity"]["alpha"] = ",".join(map(str, run["identity"]["alpha"]))
    run["identity"]["ratio"] = "4"
    (out / "run.json").write_text(json.dumps(run))
    assert trainer.train(train_cfg(small_store, tmp_path / "out", steps=20), progress=False) == out
    run["identity"]["alpha"] = "0.5"
    (out / "run.json").write_text(json.dumps(run))
    with pytest.raises(
        SaexError, match=r"holds a different training run \(alpha: folder has \[0\.5\], asked \[0\.01, 0\.02\]\)"
    ):
        trainer.train(train_cfg(small_store, tmp_path / "out", steps=20), progress=False)
