"""The stage graph of ``saex reproduce --dicts``: the study's analyses on dictionaries someone else trained.

The given dictionaries (any format ``saex.dictionaries.formats`` reads) are copied into the run folder as
``given/<hook>/<name>/`` (saex's layout, their metadata kept; the copy is keyed by the SHA-256 of each source
file, so an edited source reruns what depends on it). Then: harvest at their hook points (and a transcoder's
target), the baselines at each hook point with a given autoencoder (top-k baselines at the first given
dictionary's L0), eval, features and autointerp per hook point, IOI patching at the residual layers that have one,
the case study of the *main* dictionary (the first given) with a circuit through given dictionaries at the
residual stream of the layers just before, the dashboard and the report. There is no calibration and no training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saex.dictionaries import SAE, load_dictionary
from saex.dictionaries.folders import find_dictionaries, hook_of
from saex.dictionaries.formats import weights_sha256
from saex.errors import SaexError
from saex.lm.hooks import hook_order
from saex.naming import file_name, hook_layer, resid_hook
from saex.reproduce.graph import baselines_config, harvest_config, interpret_config, late_stages, placed
from saex.reproduce.pipeline import Stage, module_stage
from saex.reproduce.plan import Plan
from saex.stages import baselines, eval, features, harvest, interpret, ioi


class Given:
    """The given dictionaries: name -> (source path, dictionary, hook), in the order named."""

    def __init__(self, spec: list[str], widths: dict[str, int]):
        """``widths``: the model's hook point -> width, to check every dictionary against before any work."""
        self.items: dict[str, tuple[Path, SAE, str]] = {}
        for name, path in find_dictionaries(spec).items():
            d = load_dictionary(path)
            hook = hook_of(d, str(path), None)
            for h, width in ((hook, d.d_in), (d.metadata.get("target_hook"), d.d_out)):
                if h is None:
                    continue
                if h not in widths:
                    raise SaexError(f"--dicts {path}: hook point {h!r} is not one of the model's")
                if widths[h] != width:
                    raise SaexError(f"--dicts {path}: width {width} does not match {h}'s {widths[h]}")
            self.items[file_name(name)] = (path, d, hook)
        if not any(not d.transcoder for _, d, _ in self.items.values()):
            raise SaexError("--dicts names only transcoders; the study's analyses need at least one autoencoder")

    def hooks(self) -> list[str]:
        """Every hook point the study harvests: the dictionaries' and the transcoders' targets."""
        hs = {h for _, _, h in self.items.values()} | {
            d.metadata["target_hook"] for _, d, _ in self.items.values() if d.transcoder
        }
        return sorted(hs, key=hook_order)

    def at(self, hook: str, autoencoders: bool = False) -> list[str]:
        return [n for n, (_, d, h) in self.items.items() if h == hook and not (autoencoders and d.transcoder)]

    @property
    def main(self) -> str:
        """The first given autoencoder: the one the case study and the dashboard show."""
        return next(n for n, (_, d, _) in self.items.items() if not d.transcoder)

    def record(self) -> dict:
        """What reproduce.json records: hook -> names, and the main dictionary per hook (the first there)."""
        hooks = sorted({h for _, _, h in self.items.values()}, key=hook_order)
        return {
            "given": {h: self.at(h) for h in hooks},
            "main_dicts": {h: self.at(h, autoencoders=True)[0] for h in hooks if self.at(h, autoencoders=True)},
            "main_dict": self.main,
        }


def build_given_stages(cfg: Any, plan: Plan, root: Path, given: Given, progress: bool) -> list[Stage]:
    """The stages of the study on given dictionaries, in order; ``cfg`` is the ReproduceConfig."""
    acts = root / "acts"
    stages: list[Stage] = []

    def add(name, folder, inputs, make, stage, optional=False, soft=()):
        config = lambda: placed(make(), cfg)
        stages.append(module_stage(name, folder, inputs, config, stage, root, progress, optional, soft))

    def copy_config() -> dict:
        return {
            "dictionaries": [
                {"name": n, "source": str(p), "weights_sha256": weights_sha256(p), "hook": h}
                for n, (p, _, h) in given.items.items()
            ]
        }

    def copy(_: dict) -> Path:
        for n, (p, d, h) in given.items.items():
            # a given dictionary was trained on another store by definition: its store hash is kept as a record
            # (trained_store_hash), not as the claim that it belongs to this run's store
            meta = {k: v for k, v in d.metadata.items() if k != "store_hash"}
            if "store_hash" in d.metadata:
                meta["trained_store_hash"] = d.metadata["store_hash"]
            d.metadata = {**meta, "hook_name": h, "given_from": str(p)}
            d.save(root / "given" / h / n)
        return root / "given"

    stages.append(Stage("given", "given", (), copy_config, copy, checked=False))  # its config hashes the sources

    def folder(hook: str, name: str) -> Path:
        return root / "given" / hook / name

    add(
        "harvest",
        "acts",
        (),
        lambda: harvest_config(cfg, plan, acts, given.hooks()),
        harvest,
    )
    analysed = [h for h in given.hooks() if given.at(h)]
    with_baselines = [h for h in analysed if given.at(h, autoencoders=True)]
    for hook in with_baselines:
        add(
            f"baselines:{hook}",
            f"baselines/{hook}",
            ("harvest", "given"),
            lambda hook=hook: baselines_config(
                plan, root, hook, lambda: folder(hook, given.at(hook, autoencoders=True)[0])
            ),
            baselines,
        )

    def dicts_at(hook: str) -> list[str]:
        extra = [str(root / "baselines" / hook)] if hook in with_baselines else []
        return [str(root / "given" / hook), *extra]

    def after(hook: str) -> tuple[str, ...]:
        return ("harvest", "given", *((f"baselines:{hook}",) if hook in with_baselines else ()))

    for hook in analysed:
        main = (given.at(hook, autoencoders=True) or given.at(hook))[0]
        add(
            f"eval:{hook}",
            f"eval/{hook}",
            after(hook),
            lambda hook=hook, main=main: eval.EvalConfig(
                acts=str(acts),
                dicts=dicts_at(hook),
                out=str(root / "eval" / hook),
                tokens=plan.eval_tokens or None,
                contexts=plan.eval_contexts,
                reference=str(folder(hook, main)),
                model=cfg.model,
            ),
            eval,
        )
    for hook in analysed:
        add(
            f"features:{hook}",
            f"features/{hook}",
            after(hook),
            lambda hook=hook: features.FeaturesConfig(
                acts=str(acts),
                dicts=dicts_at(hook),
                out=str(root / "features" / hook),
                fragments=plan.fragments,
                fragment_length=plan.fragment_length,
                model=cfg.model,
            ),
            features,
        )
        add(
            f"interpret:{hook}",
            f"interpret/{hook}",
            (f"features:{hook}",),
            lambda hook=hook: interpret_config(cfg, plan, root, hook),
            interpret,
        )
    resid = [h for h in with_baselines if h.endswith("hook_resid_post")]
    if resid:
        add(
            "ioi",
            "ioi",
            ("harvest", "given"),
            lambda: ioi.IOIConfig(
                model=cfg.model,
                dicts=[str(folder(h, n)) for h in resid for n in given.at(h, autoencoders=True)],
                layers=sorted({hook_layer(h) or 0 for h in resid}),
                baselines=["pca"],
                acts=str(acts),
                prompts=plan.ioi_prompts,
                mode=plan.ioi_mode,
                out=str(root / "ioi"),
            ),
            ioi,
            optional=True,
        )
    main_name = given.main
    main_hook = given.items[main_name][2]
    # the circuit: given autoencoders at the residual stream of the layers just before the main one, nearest first
    upstream: list[Path] = []
    layer = hook_layer(main_hook)
    for i in range(1, plan.circuit_depth + 1):
        h = resid_hook(layer - i) if layer is not None and layer - i >= 0 else None
        if h is None or not given.at(h, autoencoders=True):
            break
        upstream.append(folder(h, given.at(h, autoencoders=True)[0]))
    late_stages(
        cfg,
        plan,
        root,
        main_hook,
        lambda: folder(main_hook, main_name),
        lambda: upstream,
        ("harvest", "given", f"features:{main_hook}"),
        add,
        stages,
    )
    return stages
