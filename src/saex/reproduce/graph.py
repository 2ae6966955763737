"""The stage graph of ``saex reproduce`` (run by pipeline.py): each stage a saex command (``saex.stages``) run
in-process on the run folder, with the config the plan gives it.

The folder layout they write is the report's input (``docs/report.md``):
``acts/``, ``calibrate/<hook>/``, ``dicts/<hook>/``, ``baselines/<hook>/``, ``eval/<hook>/``, ``features/<hook>/``,
``interpret/<hook>/``, ``ioi/``, ``case_studies/``, ``dashboard/``, ``report/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from saex.errors import SaexError
from saex.lm.hooks import HookedLM
from saex.naming import hook_layer, mlp_hook, resid_hook
from saex.reproduce.pipeline import Stage, module_stage
from saex.reproduce.plan import Plan, sweep_targets
from saex.stages import (
    baselines,
    calibrate,
    case_study,
    dashboard,
    eval,
    features,
    harvest,
    interpret,
    ioi,
    report,
    train,
)
from saex.stages.calibrate import RESULT as CALIBRATION


def describe_model(name: str, hooked: HookedLM) -> dict:
    """Depth and widths of the model (for the plan), and this machine's fp32 matmul rate (for the estimate)."""
    model = hooked.model
    a = torch.randn(1024, 1024)
    a @ a
    t0 = time.perf_counter()
    for _ in range(8):
        a @ a
    gflops = 8 * 2 * 1024**3 / (time.perf_counter() - t0) / 1e9
    return {
        "name": name,
        "n_layers": hooked.n_layers,
        "d_model": hooked.d_model,
        "d_mlp": hooked.d_mlp,
        "vocab": model.config.vocab_size,
        "params_per_layer": sum(p.numel() for p in hooked.blocks[0].parameters()),
        "gflops": round(gflops, 1),
    }


def placed(config, cfg: Any):
    """A stage's config with the command's ``--device``, ``--lm-device`` and ``--lm-dtype`` wherever the stage has
    those fields (``saex.devices.DeviceOptions`` / ``LMOptions``; a stage whose ``device`` is its model's and has no
    ``lm_device``, as harvest, gets the command's model device there). A stage with none of them, or a plain
    dict config, is returned as it is."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return config
    names = {f.name for f in dataclasses.fields(config)}
    if not getattr(config, "runs_model", lambda: True)():
        names -= {"lm_device", "lm_dtype"}  # e.g. training from a store: the model options do not apply
    lm_device = cfg.lm_device or cfg.device
    changes = {}
    if "device" in names:
        changes["device"] = cfg.device if "lm_device" in names or "lm_dtype" not in names else lm_device
    if "lm_device" in names:
        changes["lm_device"] = cfg.lm_device
    if "lm_dtype" in names:
        changes["lm_dtype"] = cfg.lm_dtype
    return dataclasses.replace(config, **changes)


def member(folder: Path, ratio: float, alpha: float) -> Path:
    """The dictionary of a training run with this R and α (read from each member's metadata)."""
    found = []
    for cfg_path in sorted(folder.glob("*/cfg.json")):
        meta = json.loads(cfg_path.read_text()).get("metadata", {})
        found.append((meta.get("ratio"), meta.get("alpha")))
        if (
            meta.get("ratio") is not None
            and math.isclose(meta["ratio"], ratio, rel_tol=1e-6)
            and meta.get("alpha") is not None
            and math.isclose(meta["alpha"], alpha, rel_tol=1e-6)
        ):
            return cfg_path.parent
    raise SaexError(f"no dictionary with R={ratio:g}, α={alpha:g} in {folder}; it has (R, α) = {found}")


def calibrated_alphas(folder: Path) -> dict[float, float]:
    """target L0 -> α, from a calibration stage's output."""
    path = folder / CALIBRATION
    if not path.is_file():
        raise SaexError(f"{folder} holds no {CALIBRATION}; the calibration stage has not run")
    return {float(c["target_l0"]): float(c["alpha"]) for c in json.loads(path.read_text())["chosen"]}


def harvest_config(cfg: Any, plan: Plan, acts: Path, hooks: list[str]) -> harvest.HarvestConfig:
    """The study's harvest of these hook points: the plan's corpus, token budgets and context length."""
    return harvest.HarvestConfig(
        out=str(acts),
        model=cfg.model,
        corpus=plan.corpus,
        hooks=hooks,
        tokens=plan.tokens,
        heldout_tokens=plan.heldout_tokens,
        heldout_fraction=plan.heldout_fraction,
        context_length=plan.context_length,
    )


def baselines_config(plan: Plan, root: Path, hook: str, k_from) -> baselines.BaselinesConfig:
    """The baselines at one hook: Fig. 10 compares MLP dictionaries with the MLP's own neurons; the residual
    stream gets every baseline of Fig. 2 / Fig. 18, the top-k ones at the L0 of ``k_from()`` (a dictionary)."""
    mlp = hook.endswith("mlp.hook_post")
    kinds = ["neurons", "random"] if mlp else ["neurons", "random", "pca", "pca_topk", "ica", "ica_topk"]
    return baselines.BaselinesConfig(
        acts=str(root / "acts"),
        hook=hook,
        kinds=kinds,
        out=str(root / "baselines" / hook),
        k_from=str(k_from()) if any(k.endswith("_topk") for k in kinds) else None,
        ica_rows=plan.ica_rows,
        ica_max_iter=plan.ica_max_iter,
    )


def interpret_config(cfg: Any, plan: Plan, root: Path, hook: str) -> interpret.InterpretConfig:
    """Autointerp of the feature indexes at one hook, with the command's backend options."""
    return interpret.InterpretConfig(
        features=[str(root / "features" / hook)],
        out=str(root / "interpret" / hook),
        backend=cfg.backend,
        n_features=plan.interpret_features,
        model=cfg.llm_model,
        base_url=cfg.base_url,
        api_key_env=cfg.api_key_env,
    )


def _layer(hook: str) -> int:
    """The block of one of the plan's hooks (all are ``blocks.{L}.…``)."""
    layer = hook_layer(hook)
    assert layer is not None, hook
    return layer


def build_stages(cfg: Any, plan: Plan, root: Path, progress: bool, preview: bool = False) -> list[Stage]:
    """The stages of the study, in order; ``cfg`` is the ``saex.stages.reproduce.ReproduceConfig``.

    ``preview``: stages whose configs can be built before anything ran (``pipeline.check_configs``), every α a
    calibration would choose and every trained dictionary's folder stood in for by placeholders."""

    acts = root / "acts"
    hooks = [resid_hook(L) for L in plan.resid_layers] + [mlp_hook(L) for L in plan.mlp_layers]
    main = resid_hook(plan.main_layer)
    stages: list[Stage] = []

    def add(name, folder, inputs, make, stage, optional=False, soft=()):
        config = lambda: placed(make(), cfg)
        stages.append(module_stage(name, folder, inputs, config, stage, root, progress, optional, soft))

    def sweep(hook: str) -> dict:
        """What trains at a hook; its α come from the hook's calibration (read when the stage is reached)."""
        kind = "mlp" if hook.endswith("mlp.hook_post") else "resid"
        ratios = plan.ratios_mlp if kind == "mlp" else (plan.ratios_resid if hook == main else [plan.main_ratio])
        main_target = getattr(plan, f"main_target_l0_{kind}")
        targets = sorted(set(sweep_targets(plan, kind, _layer(hook))) | {main_target})
        return {
            "arch": "untied_l1" if kind == "mlp" else "tied_l1",
            "ratios": ratios,
            "targets": targets,
            "main_target": main_target,
            "extra_alphas": getattr(plan, f"extra_alphas_{kind}"),
            "grid": getattr(plan, f"calibration_grid_{kind}"),
            "calibrated_at": calibrated_at(hook),
            "main_ratio": plan.main_ratio_mlp if kind == "mlp" else plan.main_ratio,
        }

    def calibrated_at(hook: str) -> str:
        """The hook whose calibration gives this hook its α: itself, or for a residual hook when the plan
        calibrates only some residual layers, the nearest of those."""
        layers = plan.calibration_layers_resid
        if hook.endswith("mlp.hook_post") or not layers:
            return hook
        return resid_hook(min(layers, key=lambda L: (abs(L - _layer(hook)), L)))

    def alphas(hook: str) -> tuple[list[float], float]:
        """(every α trained at the hook, the main α): the calibrated α of each target, plus the extra ones."""
        s = sweep(hook)
        if preview:  # the grid's first α for every target: a value of the right type and range
            chosen = {t: float(s["grid"][0]) if s["grid"] else 1e-3 for t in [*s["targets"], s["main_target"]]}
        else:
            chosen = calibrated_alphas(root / "calibrate" / s["calibrated_at"])
        a = sorted(set(s["extra_alphas"]) | {chosen[t] for t in s["targets"]})
        return a, chosen[s["main_target"]]

    def trained(folder: Path, ratio: float, alpha: float) -> Path:
        """The dictionary of ``member``; in a preview, the folder it will be in."""
        return folder / f"preview-R{ratio:g}-alpha{alpha:g}" if preview else member(folder, ratio, alpha)

    def main_dict(hook: str) -> Path:
        return trained(root / "dicts" / hook, sweep(hook)["main_ratio"], alphas(hook)[1])

    add(
        "harvest",
        "acts",
        (),
        lambda: harvest_config(cfg, plan, acts, hooks),
        harvest,
    )
    for hook in [h for h in hooks if sweep(h)["calibrated_at"] == h]:
        # α for the target L0s of every hook calibrated here (saex calibrate: the training's steps, R = 1)
        targets = sorted({t for h in hooks if sweep(h)["calibrated_at"] == hook for t in sweep(h)["targets"]})
        s = sweep(hook)
        add(
            f"calibrate:{hook}",
            f"calibrate/{hook}",
            ("harvest",),
            lambda hook=hook, s=s, targets=targets: calibrate.CalibrateConfig(
                acts=str(acts),
                hook=hook,
                out=str(root / "calibrate" / hook),
                target_l0=[float(f"{t:g}") for t in targets],
                grid=[float(f"{a:g}") for a in s["grid"]],
                arch=s["arch"],
                ratio=plan.calibration_ratio,
                steps=plan.train_steps,
                batch_size=plan.calibration_batch,
                eval_tokens=4096,
            ),
            calibrate,
        )
    for hook in hooks:
        s = sweep(hook)
        add(
            f"train:{hook}",
            f"dicts/{hook}",
            ("harvest", f"calibrate:{s['calibrated_at']}"),
            lambda hook=hook, s=s: train.TrainConfig(
                acts=str(acts),
                hook=hook,
                out=str(root / "dicts" / hook),
                arch=s["arch"],
                ratio=[float(f"{r:g}") for r in s["ratios"]],
                alpha=[float(f"{a:g}") for a in alphas(hook)[0]],
                steps=plan.train_steps,
                batch_size=plan.train_batch,
                normalize="mean_norm",
                eval_tokens=4096,
            ),
            train,
        )
    for hook in hooks:
        add(
            f"baselines:{hook}",
            f"baselines/{hook}",
            ("harvest", f"train:{hook}"),
            lambda hook=hook: baselines_config(plan, root, hook, lambda: main_dict(hook)),
            baselines,
        )
    for hook in hooks:
        add(
            f"eval:{hook}",
            f"eval/{hook}",
            ("harvest", f"train:{hook}", f"baselines:{hook}"),
            lambda hook=hook: eval.EvalConfig(
                acts=str(acts),
                dicts=[str(root / "dicts" / hook), str(root / "baselines" / hook)],
                out=str(root / "eval" / hook),
                tokens=plan.eval_tokens or None,
                contexts=plan.eval_contexts,
                reference=str(main_dict(hook)),
                model=cfg.model,
            ),
            eval,
        )
    for hook in hooks:

        def features_cfg(hook=hook):
            s = sweep(hook)
            # The main dictionary, and at the main layer every R at the main α (the Fig. 8 series).
            chosen = [trained(root / "dicts" / hook, r, alphas(hook)[1]) for r in s["ratios"]]
            chosen = [main_dict(hook)] + [p for p in chosen if p != main_dict(hook)]
            return features.FeaturesConfig(
                acts=str(acts),
                dicts=[str(p) for p in [*chosen, root / "baselines" / hook]],
                out=str(root / "features" / hook),
                fragments=plan.fragments,
                fragment_length=plan.fragment_length,
                model=cfg.model,
            )

        add(
            f"features:{hook}",
            f"features/{hook}",
            ("harvest", f"train:{hook}", f"baselines:{hook}"),
            features_cfg,
            features,
        )
    for hook in hooks:
        add(
            f"interpret:{hook}",
            f"interpret/{hook}",
            (f"features:{hook}",),
            lambda hook=hook: interpret_config(cfg, plan, root, hook),
            interpret,
        )

    ioi_hook = resid_hook(plan.ioi_layer)

    def ioi_cfg():
        # Fig. 3: the α sweep at the main R, against PCA.
        s = sweep(ioi_hook)
        dicts = [trained(root / "dicts" / ioi_hook, s["main_ratio"], a) for a in alphas(ioi_hook)[0]]
        return ioi.IOIConfig(
            model=cfg.model,
            dicts=[str(d) for d in dicts],
            layers=[plan.ioi_layer],
            baselines=["pca"],
            acts=str(acts),
            prompts=plan.ioi_prompts,
            mode=plan.ioi_mode,
            out=str(root / "ioi"),
        )

    add(
        "ioi",
        "ioi",
        ("harvest", f"train:{ioi_hook}"),
        ioi_cfg,
        ioi,
        optional=True,
    )
    # one upstream dictionary per level of the circuit, nearest first
    upstream = [resid_hook(plan.main_layer - i) for i in range(1, plan.circuit_depth + 1)]
    late_stages(
        cfg,
        plan,
        root,
        main,
        lambda: main_dict(main),
        lambda: [main_dict(h) for h in upstream],
        ("harvest", f"train:{main}", *(f"train:{h}" for h in upstream), f"features:{main}"),
        add,
        stages,
    )
    return stages


def late_stages(
    cfg, plan, root: Path, main: str, main_dict, upstream, case_inputs: tuple[str, ...], add, stages
) -> None:
    """Case study, dashboard and report: they read what the stages before them wrote. ``main_dict()`` and
    ``upstream()`` give the main dictionary's folder at hook ``main`` and the circuit's upstream dictionaries,
    nearest first (called when the stage is reached)."""
    add(
        "case_study",
        "case_studies",
        case_inputs,
        lambda: case_study.CaseStudyConfig(
            acts=str(root / "acts"),
            dict=str(main_dict()),
            features_index=str(root / "features" / main),
            upstream=[str(p) for p in upstream()],
            depth=len(upstream()),
            top=plan.case_top,
            max_density=plan.case_max_density,
            model=cfg.model,
            out=str(root / "case_studies"),
        ),
        case_study,
        optional=True,
    )
    case = root / "case_studies"
    add(
        "dashboard",
        "dashboard",
        (f"features:{main}", f"interpret:{main}"),
        lambda: dashboard.DashboardConfig(
            features=str(root / "features" / main),
            dict=main_dict().name,
            interpret=str(root / "interpret" / main),
            out=str(root / "dashboard"),
            limit=plan.dashboard_features or None,
            model=cfg.model,
            case_study=str(case) if (case / "case_study.json").exists() else None,
        ),
        dashboard,
        optional=True,
        soft=("case_study",),
    )
    soft = tuple(s.name for s in stages) + ("case_study", "dashboard")
    add("report", "report", (), lambda: report.ReportConfig(run=str(root)), report, soft=soft)
