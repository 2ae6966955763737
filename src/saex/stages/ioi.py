"""``saex ioi``: which features move the model to counterfactual behaviour on IOI (paper §4, Figs. 3, 17).

For every dictionary (SAEs at any α, including α = 0) and the PCA baselines at each layer: the curves
"features patched vs KL(patched ‖ target)" and "edit magnitude vs KL", from the greedy search of the paper
(``--mode greedy``, ``causal/greedy.py``) or from the attribution-ordered quick mode (``--mode quick``,
``causal/attribution.py``: exact KL of nested prefixes, approximate order; its order is validated against
exact single-feature patching and the Spearman correlation is reported). Each (layer, dictionary) result is
written as JSON when done, so a killed run resumes; plots are PNG beside the JSON they are drawn from.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

import saex
from saex.causal.attribution import attribution_scores, quick_curve, validate
from saex.causal.greedy import greedy_prune
from saex.causal.ioi import make_prompts, task_performance
from saex.causal.patching import PatchingSetup
from saex.config import opt
from saex.devices import LMOptions, Placement, placement
from saex.dictionaries import load_dictionary
from saex.dictionaries.folders import find_dictionaries, hook_of, refuse_transcoder
from saex.dictionaries.formats import weights_sha256
from saex.dictionaries.pca import fit_pca, pca_dictionary, pca_split
from saex.errors import SaexError
from saex.files import check_output_folder, locked_output, write_json_atomic
from saex.lm.hooks import HookedLM
from saex.lm.loading import load_model
from saex.store.reader import ActivationStore
from saex.viz.ioi import plot_ioi

NAME = "ioi"
HELP = "patch feature subsets on indirect object identification: KL against features patched and edit size"
MARKER = "ioi.json"


@dataclass
class IOIConfig(LMOptions):
    """What ``saex ioi`` does; saved in ioi.json and in every result."""

    model: str = "smollm2-135m"
    """Model to patch (embedded, local folder or hub id); the dictionaries must have been trained on it."""
    dicts: list[str] = opt([])
    """Dictionary folders, or folders of them; each is patched at its own hook point."""
    layers: list[int] | None = opt(None, ge=0)
    """Only these layers; default: every layer a dictionary or --pca-layers names."""
    baselines: list[str] = opt([], choices=["pca"])
    """pca: also patch PCA at each layer, as the paper (pca_rot: the signed rotation, uncentred; pca_split:
    centred sign-split ±PCA with ReLU); needs --acts."""
    acts: str | None = None
    """Activation store to fit the PCA baselines on (its train split at each layer's hook point)."""
    pca_layers: list[int] | None = opt(None, ge=0)
    """Layers for the PCA baselines when no dictionary names them."""
    hook_kind: str = "hook_resid_post"
    """Hook kind for the PCA baselines (dictionaries use their own hook point)."""
    prompts: int = opt(50, gt=0)
    """IOI prompt pairs (the paper: 50)."""
    seed: int = opt(0, ge=0)
    """Seed of the prompts and of the greedy search's visiting order."""
    mode: Literal["quick", "greedy", "both"] = "quick"
    """quick: attribution order, exact KL of nested prefixes (minutes on CPU); greedy: the paper's exact
    ACDC-style search (one evaluation per active feature per threshold pass; long on CPU); both."""
    thresholds: int = opt(50, gt=0)
    """Thresholds τ of the greedy search: logspace(−5, 0, this many) (the paper: 50)."""
    batch: int = opt(0, ge=0, hint="(0: automatic)")
    """Candidate patches evaluated per forward pass; 0: about 1200 token rows per forward (8 candidates
    for a few prompts, 1 for 50), which measured fastest on 2 cores."""
    out: str = "runs/ioi"
    """Output folder: task.json, layer{L}/<dictionary>.json, plots."""


CONFIG = IOIConfig


def summary(out: Path) -> str:
    return f"IOI curves and plots in {out}"


def _validate(cfg: IOIConfig) -> None:
    kinds = cfg.baselines
    if kinds and not cfg.acts:
        raise SaexError("--baselines pca needs --acts (an activation store to fit PCA on)")
    if not cfg.dicts and not kinds:
        raise SaexError("name dictionaries with --dicts and/or --baselines pca")


def _plan(cfg: IOIConfig, hooked, where: Placement) -> dict[int, list[tuple[str, object, dict]]]:
    """Layer -> [(name, dictionary, identity)], dictionaries first, then the PCA baselines; every dictionary on
    ``where.device``."""
    wanted = sorted(set(cfg.layers)) if cfg.layers is not None else None
    plan: dict[int, list] = {}
    if cfg.dicts:
        for name, folder in find_dictionaries(cfg.dicts).items():
            d = load_dictionary(folder).to(where.device)
            refuse_transcoder(d, folder, "ioi")
            hook = hook_of(d, str(folder), None)
            # imported dictionaries name models their own way: checked by hook point and width only
            trained_on = None if d.metadata.get("source_format") else d.metadata.get("model_name")
            if trained_on and trained_on != cfg.model:
                raise SaexError(f"dictionary {folder} was trained on model {trained_on!r}, not {cfg.model!r}")
            point = hooked.resolve(hook)
            if d.d_in != point.width:
                raise SaexError(f"dictionary {folder} has d_in {d.d_in}, but {hook} has width {point.width}")
            if wanted is None or point.layer in wanted:
                plan.setdefault(point.layer, []).append(
                    (
                        name,
                        d,
                        {
                            "hook": hook,
                            "weights_sha256": weights_sha256(folder),
                            "path": str(folder),
                            "alpha": d.metadata.get("alpha"),
                            "kind": d.metadata.get("baseline") or d.metadata.get("arch") or d.architecture,
                        },
                    )
                )
    if cfg.baselines:
        assert cfg.acts is not None  # checked in _validate
        store = ActivationStore(cfg.acts)
        layers = sorted(set(plan) | set(cfg.pca_layers or [])) if wanted is None else wanted
        if not layers:
            raise SaexError("no layer for the PCA baselines: name one with --layers or --pca-layers")
        for layer in layers:
            hook = f"blocks.{layer}.{cfg.hook_kind}"
            hooked.resolve(hook)
            if hook not in store.hooks:
                raise SaexError(f"the store {store.path} lacks {hook} to fit PCA on; it has {store.hooks}")
            shards = range(len(store.shards("train")))
            fit = fit_pca((store.load_shard("train", i, hook) for i in shards), where.device)
            meta = {"hook_name": hook, "fit_rows": fit.n_rows}
            ident = {"hook": hook, "store": str(store.path), "fit_rows": fit.n_rows}
            plan.setdefault(layer, []).extend(
                [
                    (
                        "pca_rot",
                        pca_dictionary(fit, center=False, metadata=meta).to(where.device),
                        ident | {"kind": "pca_rot"},
                    ),
                    (
                        "pca_split",
                        pca_split(fit, center=True, metadata=meta).to(where.device),
                        ident | {"kind": "pca_split"},
                    ),
                ]
            )
    if not plan:
        raise SaexError(f"no dictionary is at the requested layers {wanted}")
    return dict(sorted(plan.items()))


@locked_output("saex ioi")
def run(cfg: IOIConfig, progress: bool = True) -> Path:
    _validate(cfg)
    where = placement(cfg)  # a device this machine lacks fails before the model loads
    lm = load_model(cfg.model)
    lm.model.eval().to(device=where.lm_device, dtype=where.lm_dtype)
    hooked = HookedLM(lm.model)
    plan = _plan(cfg, hooked, where)
    out = Path(cfg.out)
    check_output_folder(out, MARKER, "saex IOI run")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / MARKER, {"saex_version": saex.__version__, "config": asdict(cfg)})
    prompts = make_prompts(lm.tokenizer, cfg.prompts, cfg.seed)
    task = task_performance(lm.model, prompts)
    write_json_atomic(out / "task.json", {"model": cfg.model, **task, "examples": [list(t) for t in prompts.texts[:5]]})
    if progress:
        print(
            f"IOI on {cfg.model}: mean logit diff IO − S {task['mean_logit_diff']:.2f}, "
            f"accuracy {task['accuracy']:.0%} over {prompts.n} prompts"
        )
    taus = np.logspace(-5, 0, cfg.thresholds)
    options = {k: v for k, v in asdict(cfg).items() if k in ("model", "prompts", "seed", "thresholds")}
    options |= where.identity()
    results: dict[int, dict[str, dict]] = {}
    for layer, entries in plan.items():
        results[layer] = {}
        for name, d, ident in entries:
            path = out / f"layer{layer}" / (re.sub(r"[/\\]", "__", name) + ".json")
            identity = ident | {"options": options}
            if path.is_file():
                saved = json.loads(path.read_text())
                if saved.get("identity") == identity and all(m in saved for m in _modes(cfg.mode)):
                    results[layer][name] = saved
                    continue
            t0 = time.perf_counter()
            setup = PatchingSetup(hooked, ident["hook"], prompts, d)
            batch = cfg.batch or setup.auto_batch()
            r = {
                "identity": identity,
                "name": name,
                "layer": layer,
                "kind": ident.get("kind"),
                "alpha": ident.get("alpha"),
                "n_features": setup.n_features,
                "n_active": int(len(setup.active)),
                "kl_base": setup.kl_base(),
            }
            if cfg.mode in ("quick", "both"):
                scores = attribution_scores(setup)
                r["quick"] = quick_curve(setup, scores, batch) | {
                    "validation": validate(setup, scores, seed=cfg.seed, batch=batch)
                }
            if cfg.mode in ("greedy", "both"):
                bar = tqdm(desc=f"layer {layer} {name}: greedy", unit="eval", disable=not progress)
                r["greedy"] = greedy_prune(setup, taus, cfg.seed, batch, on_eval=bar.update)
                bar.close()
            r["batch"], r["seconds"] = batch, time.perf_counter() - t0
            write_json_atomic(path, r)
            results[layer][name] = r
            if progress:
                print(
                    f"layer {layer} {name}: {r['n_active']}/{r['n_features']} features differ between the "
                    f"runs, KL none {r['kl_base']:.3f}, {r['seconds']:.0f}s"
                )

    plot_ioi(results, out, cfg.mode)
    return out


def _modes(mode: str) -> list[str]:
    return ["quick", "greedy"] if mode == "both" else [mode]
