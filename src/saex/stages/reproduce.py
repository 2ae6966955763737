"""``saex reproduce``: the paper's whole study (Cunningham et al. 2023, §3-5, App. B-G), resumable.

Plans the study for the model (``saex.reproduce.plan``: a preset, the ``--set`` overrides), prints the plan
and its expected time, then runs the stage graph (``saex.reproduce.graph``) through the resumable pipeline
(``saex.reproduce.pipeline``); the report (``saex report``) is its last stage.

Before the plan is printed every ``--set`` value has been checked twice: by the plan's own field checks, and by
building the config of every stage it reaches (``pipeline.check_configs``), so that a value no stage accepts
fails at once. The run folder is the command's own: a non-empty folder without ``reproduce.json`` is refused.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from saex.config import config_dict, opt
from saex.devices import LMOptions, placement
from saex.errors import SaexError
from saex.files import check_output_folder, locked_output
from saex.interpret.secrets import check_key_env_name
from saex.lm.hooks import HookedLM
from saex.lm.loading import load_model
from saex.reproduce import plan as presets
from saex.reproduce.given import Given, build_given_stages
from saex.reproduce.graph import build_stages, describe_model
from saex.reproduce.pipeline import STATE, Pipeline, check_configs, parse_overrides

NAME = "reproduce"
HELP = (
    "the paper's whole study, resumable: harvest, sweeps, baselines, eval, autointerp, IOI, "
    "case studies, dashboard and the report"
)


@dataclass
class ReproduceConfig(LMOptions):
    """What ``saex reproduce`` runs; saved in reproduce.json."""

    preset: Literal["quick", "standard", "paper"] = "quick"
    """quick (about 10 minutes on 2 CPU cores: 2 residual layers, 160k tokens), standard (the paper's
    study at a 2-hour scale: 5 residual layers, α = 0 and 5 sparsity levels, R from 0.5, 1M held-out tokens asked
    for (the default corpus holds 107k: the report says when a split ran short),
    IOI on 20 prompts, 150 features scored) or paper (the paper's sample sizes: days on a CPU). The expected
    time is printed before it starts."""
    model: str = "smollm2-135m"
    """Model: embedded (smollm2-135m, gemma3-270m), a local folder or a hub id."""
    corpus: str = ""
    """Corpus, as for saex harvest; empty: the preset's (quick: default, the embedded Wikipedia leads; standard:
    default,kjv, which needs Debian's bible-kjv for the ≥ 1M held-out tokens the preset asks for)."""
    out: str = "runs/reproduce"
    """Run folder: one sub-folder per stage, reproduce.json, and report/ with report.html."""
    set: str = ""
    """Overrides of the preset's plan, e.g. 'tokens=50000,ioi_prompts=5,resid_layers=[3,4]' (keys as printed
    by --dry-run)."""
    backend: Literal["offline", "openai", "hf"] = "offline"
    """Autointerp backend: offline (lexical predictability, no network), openai or hf (see saex interpret)."""
    llm_model: str | None = None
    """openai / hf backends: the explainer-simulator model."""
    base_url: str | None = None
    """openai backend: the endpoint's base URL."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai backend: the NAME of the environment variable holding the API key (the key is never written
    anywhere; a value that looks like a key is refused, unshown)."""
    dicts: list[str] = opt([])
    """Analyse these dictionaries instead of training (any format saex reads: saex, SAELens, sparsify,
    dictionary_learning, Gemma Scope, OpenAI, hf://…): harvest their hook points, skip calibration and training,
    run baselines, eval, features, autointerp, IOI, the case study of the first one, the dashboard and the
    report on them (docs/interop.md)."""
    dry_run: bool = False
    """Print the plan, the stages and the expected time, and stop."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_key_env_name(self.api_key_env)


CONFIG = ReproduceConfig


def make_plan(cfg: ReproduceConfig, n_layers: int) -> presets.Plan:
    """The preset's plan for a model of ``n_layers`` blocks, with ``--set`` and ``--corpus`` applied and the
    layers the circuit and IOI need added."""
    plan = parse_overrides(cfg.set, presets.plan(cfg.preset, n_layers))
    if cfg.corpus:
        plan = dataclasses.replace(plan, corpus=cfg.corpus)
    # The circuit needs one upstream dictionary per level, at the layers just before the main one.
    depth = max(1, min(plan.circuit_depth, plan.main_layer))
    upstream = {plan.main_layer - i for i in range(1, depth + 1)}
    resid = sorted(set(plan.resid_layers) | upstream | {plan.main_layer, plan.ioi_layer})
    plan = dataclasses.replace(plan, circuit_depth=depth, resid_layers=resid)
    if not set(plan.calibration_layers_resid) <= set(plan.resid_layers):
        raise SaexError(
            f"calibration_layers_resid {plan.calibration_layers_resid} must be residual layers of "
            f"the plan {plan.resid_layers} (or [] to calibrate every one)"
        )
    bad = [L for L in plan.resid_layers + plan.mlp_layers if not 0 <= L < n_layers]
    if bad:
        raise SaexError(f"layers {bad} are out of range: {cfg.model} has layers 0..{n_layers - 1}")
    return plan


@locked_output("saex reproduce")
def run(cfg: ReproduceConfig, progress: bool = True) -> Path:
    """Plan the study for the model, print it and its expected time, then run (or resume) every stage."""
    root = Path(cfg.out).resolve()
    check_output_folder(root, STATE, "saex reproduce run")  # never write into a folder that is not a run
    where = placement(cfg)  # a device this machine lacks fails before anything loads; every stage gets them
    hooked = HookedLM(load_model(cfg.model).model)
    info = describe_model(cfg.model, hooked)
    plan = make_plan(cfg, info["n_layers"])
    given = None
    if cfg.dicts:  # checked against the model before anything runs
        given = Given(cfg.dicts, {h: hooked.resolve(h).width for h in hooked.hook_names()})
    del hooked  # the stages load the model themselves: not two copies for the whole run
    estimate = presets.estimate_seconds(
        plan, info["params_per_layer"], info["d_model"], info["d_mlp"], info["vocab"], info["gflops"]
    )
    if given is not None:  # nothing is calibrated or trained
        estimate = {k: v for k, v in estimate.items() if k not in ("calibrate", "train")}
    _check_stages(cfg, plan, root, given)
    total = sum(estimate.values())
    print(
        f"saex reproduce --preset {cfg.preset}: {cfg.model} ({info['n_layers']} layers, d_model {info['d_model']})"
        f" on {plan.corpus}"
    )
    print("plan: " + json.dumps(config_dict(plan)))
    print(
        f"expected time on this machine: about {_human(total)} (an estimate from FLOP counts and a measured "
        f"{info['gflops']:.0f} GFLOP/s matmul rate: "
        + ", ".join(f"{k} {_human(v)}" for k, v in estimate.items())
        + ")",
        flush=True,
    )
    header = {
        "preset": cfg.preset,
        "reproduce_config": config_dict(cfg),
        "plan": config_dict(plan),
        "model": info,
        "estimate_seconds": estimate,
        "placement": where.describe(),
    }
    if given is not None:
        header |= given.record()
        stages = build_given_stages(cfg, plan, root, given, progress)
    else:
        stages = build_stages(cfg, plan, root, progress)
    if cfg.dry_run:
        print("stages: " + ", ".join(s.name for s in stages))
        return root
    t0 = time.perf_counter()
    pipeline = Pipeline(root, header, stages, log=lambda m: print(m, file=sys.stderr, flush=True))
    state = pipeline.run()
    # the α each hook's calibration chose, beside the plan's target L0s
    state["calibrated"] = {
        p.parent.name: json.loads(p.read_text())["chosen"]
        for p in sorted((root / "calibrate").glob("*/calibration.json"))
    }
    pipeline.save()
    for hook, chosen in state["calibrated"].items():
        print(f"{hook}: α " + ", ".join(f"{c['alpha']:.3g} (target L0 {c['target_l0']:g})" for c in chosen))
    failed = {n: r.get("reason") for n, r in state["stages"].items() if r.get("status") in ("failed", "not run")}
    for n, why in failed.items():
        print(f"note: stage {n} did not run: {why}")
    print(f"finished in {_human(time.perf_counter() - t0)}; report: {root / 'report' / 'report.html'}")
    return root


def _check_stages(cfg: ReproduceConfig, plan: presets.Plan, root: Path, given: Given | None) -> None:
    """Build every stage's config from the plan before anything runs (placeholders for what calibration and
    training will give): a ``--set`` value that a stage refuses fails here, before the plan is printed."""
    if given is not None:
        stages = build_given_stages(cfg, plan, root, given, progress=False)
    else:
        stages = build_stages(cfg, plan, root, progress=False, preview=True)
    try:
        check_configs(stages)
    except SaexError as e:
        plan_of = f"the {cfg.preset} plan with --set {cfg.set}" if cfg.set.strip() else f"the {cfg.preset} plan"
        raise SaexError(f"{e} ({plan_of}); nothing was run") from None


def _human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
