"""``saex baselines``: the paper's comparison dictionaries, built from an activation store (paper §3.2, App. G).

Each kind is written as one dictionary folder in the same SAELens layout as a trained SAE, so evaluation,
interpretation and patching take either. The kinds and the files that define them:

=============  ====================================  =================================================
kind           features                              file
=============  ====================================  =================================================
neurons        ReLU of each coordinate (d)           ``dictionaries/neurons.py``
random         ReLU of unit Gaussian directions      ``dictionaries/random_directions.py``
pca            signed PCA projections (d)            ``dictionaries/pca.py``
pca_split      ReLU(±PCA projections) (2d)           ``dictionaries/pca.py``
pca_topk       ±PCA, K largest per token (2d)        ``dictionaries/pca.py``
ica            signed FastICA sources (d)            ``dictionaries/ica.py``
ica_topk       ±ICA, K largest per token (2d)        ``dictionaries/ica.py``
=============  ====================================  =================================================

K for the top-K kinds is ``--k``, or the mean L0 of the SAE named by ``--k-from`` on the store's held-out
rows (App. G: "the average number of features active" of the R=1, α=8.6e-4 SAE). A kind whose folder
already holds the same parameters is skipped, so a killed run resumes by running it again.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import saex
from saex.config import opt
from saex.devices import DeviceOptions, placement
from saex.dictionaries import BASELINE_KINDS, load_dictionary
from saex.dictionaries.ica import fit_ica, ica_topk
from saex.dictionaries.neurons import neurons
from saex.dictionaries.pca import fit_pca, pca_dictionary, pca_split, pca_topk
from saex.dictionaries.random_directions import random_directions
from saex.dictionaries.sae import CFG, SAE
from saex.errors import SaexError
from saex.evaluate.metrics import evaluate_batch
from saex.files import check_same_identity, locked_output, open_output_folder, write_json_atomic
from saex.store.reader import ActivationStore, RowFilter, RowOptions, store_hash

NAME = "baselines"
HELP = "build baseline dictionaries (neurons, random, PCA, ICA, top-k) from a store"
MARKER = "baselines.json"


@dataclass
class BaselinesConfig(RowOptions, DeviceOptions):
    """What ``saex baselines`` builds; saved in baselines.json and in every dictionary's metadata."""

    acts: str = "runs/acts"
    """Activation store to fit on (written by saex harvest)."""
    hook: str = ""
    """Hook point in the store, e.g. blocks.6.hook_resid_post (mlp.hook_post gives the MLP's own neurons)."""
    kinds: list[str] = opt(["neurons", "random", "pca", "ica"], choices=BASELINE_KINDS, nonempty=True)
    """Baselines to build: neurons, random, pca, pca_split, pca_topk, ica, ica_topk."""
    out: str = "runs/baselines"
    """Output folder: one sub-folder per kind (SAELens layout) and baselines.json."""
    k: int | None = opt(None, gt=0)
    """Active directions per token for pca_topk and ica_topk."""
    k_from: str | None = None
    """A dictionary folder whose mean L0 on the held-out rows sets K (the paper: the R=1, α=8.6e-4 SAE)."""
    k_tokens: int = opt(65536, gt=0)
    """Held-out rows on which --k-from's mean L0 is measured."""
    center: bool = True
    """PCA: project x minus its mean (--no-center projects raw x, as the paper's code did)."""
    random_ratio: float = opt(1.0, gt=0)
    """random: number of directions as a multiple of the width (the paper: 1)."""
    ica_rows: int = opt(65536, gt=0)
    """ICA: train rows sampled for the fit (FastICA is slow; the paper used ~2 GB, 1-4M rows)."""
    ica_max_iter: int = opt(200, gt=0)
    """ICA: FastICA iterations (scikit-learn's default, as the paper)."""
    ica_tol: float = opt(1e-4, gt=0)
    """ICA: FastICA tolerance (scikit-learn's default, as the paper)."""
    seed: int = opt(0, ge=0)
    """Seed of the random directions, of the ICA row sample and of FastICA."""


CONFIG = BaselinesConfig


def summary(out: Path) -> str:
    return f"baselines in {out}"


def _params(cfg: BaselinesConfig, kind: str, k: int | None) -> dict:
    """The options a kind depends on: a folder built with other values is not reused."""
    p: dict[str, Any] = {"baseline": kind}
    if kind in ("pca", "pca_split", "pca_topk", "ica", "ica_topk"):
        p["row_filter"] = asdict(RowFilter.of(cfg))
    if kind in ("pca", "pca_split", "pca_topk"):
        p["center"] = cfg.center
    if kind == "random":
        p |= {"random_ratio": cfg.random_ratio, "seed": cfg.seed}
    if kind in ("ica", "ica_topk"):
        p |= {"ica_rows": cfg.ica_rows, "ica_max_iter": cfg.ica_max_iter, "ica_tol": cfg.ica_tol, "seed": cfg.seed}
    if kind.endswith("_topk"):
        p["k"] = k
    return p


def measured_k(
    folder: str, store: ActivationStore, hook: str, n: int, rows: RowFilter, device: torch.device | str = "cpu"
) -> int:
    """Mean L0 of a dictionary on the first ``n`` held-out rows that ``rows`` keeps, rounded to an integer >= 1
    (computed on ``device``)."""
    sae = load_dictionary(folder).to(device)
    if sae.d_in != store.width(hook):
        raise SaexError(f"--k-from {folder} has d_in {sae.d_in}, but {hook} in the store has width {store.width(hook)}")
    kept = store.kept_rows("heldout", rows, hook)
    if len(kept) == 0:
        raise SaexError(f"the store {store.path} has no held-out rows to measure --k-from on")
    l0 = evaluate_batch(sae, store.rows("heldout", hook, kept[:n]).to(device))["l0"]
    return max(1, round(l0))


@locked_output("saex baselines")
def run(cfg: BaselinesConfig, progress: bool = True) -> Path:
    device = placement(cfg).device  # PCA's covariance and --k-from's L0 are computed there; FastICA on the CPU
    store = ActivationStore(cfg.acts)
    if not cfg.hook:
        raise SaexError(f"name the hook point with --hook; the store has {store.hooks}")
    d_in = store.width(cfg.hook)
    kinds = list(dict.fromkeys(cfg.kinds))
    k = 0  # K of the top-k kinds, set below when one is asked for
    if any(kd.endswith("_topk") for kd in kinds):
        if (cfg.k is None) == (cfg.k_from is None):
            raise SaexError("pca_topk and ica_topk need exactly one of --k N or --k-from DICTIONARY_FOLDER")
        RowFilter.of(cfg).check(store.context_length)
        if cfg.k_from is not None:
            k = measured_k(cfg.k_from, store, cfg.hook, cfg.k_tokens, RowFilter.of(cfg), device)
        else:
            assert cfg.k is not None  # exactly one of the two, checked above
            k = cfg.k
        if not 1 <= k <= d_in:
            source = "--k" if cfg.k is not None else f"--k-from {cfg.k_from} (its mean L0)"
            raise SaexError(f"{source} gives K = {k}; K must be between 1 and the width {d_in}")
    out = Path(cfg.out)
    s_hash = store_hash(store, cfg.hook)
    identity = {"store_hash": s_hash, "hook": cfg.hook}
    open_output_folder(out, MARKER, "set of saex baselines", identity, differs="set of baselines")
    # Every existing folder is checked before anything is written, so a refused run changes nothing.
    todo = []
    for kind in kinds:
        params = _params(cfg, kind, k)
        if (out / kind / CFG).is_file():
            saved = SAE.load(out / kind).metadata
            check_same_identity(out / kind, {p: saved.get(p) for p in params}, params, f"{kind} baseline", "folder")
        else:
            todo.append(kind)
    out.mkdir(parents=True, exist_ok=True)
    marker = {"saex_version": saex.__version__, "identity": identity, "config": asdict(cfg), "store": str(store.path)}
    if not (out / MARKER).is_file() or json.loads((out / MARKER).read_text()) != marker:
        write_json_atomic(out / MARKER, marker)
    common = {
        "saex_version": saex.__version__,
        "hook_name": cfg.hook,
        "model_name": store.manifest["model"]["name"],
        "store_hash": s_hash,
    }
    fits: dict = {}

    def pca_fit():
        if "pca" not in fits:
            shards = range(len(store.shards("train")))
            it = tqdm(shards, desc="pca covariance", unit="shard", disable=not progress)
            fits["pca"] = fit_pca((store.load_kept("train", i, cfg.hook, RowFilter.of(cfg)) for i in it), device)
        return fits["pca"]

    def ica_fit():
        meta = {**common, **_params(cfg, "ica", None), "arch": "ica"}
        saved = out / "ica"
        if "ica" not in fits and (saved / CFG).is_file():  # a resumed run reuses the signed fit for ica_topk
            ica = SAE.load(saved)
            if all(ica.metadata.get(p) == v for p, v in _params(cfg, "ica", None).items()):
                fits["ica"] = ica
        if "ica" not in fits:
            kept = store.kept_rows("train", RowFilter.of(cfg), cfg.hook)
            n = min(cfg.ica_rows, len(kept))
            idx = np.sort(kept[np.random.default_rng([cfg.seed, 2]).permutation(len(kept))[:n]])
            t0 = time.perf_counter()
            fits["ica"] = fit_ica(store.rows("train", cfg.hook, idx), cfg.seed, cfg.ica_max_iter, cfg.ica_tol, meta)
            if progress:
                m = fits["ica"].metadata
                print(
                    f"ica: FastICA on {n} rows, {m['ica_n_iter']} iterations, "
                    f"{'converged' if m['ica_converged'] else 'NOT converged (raise --ica-max-iter)'}, "
                    f"{time.perf_counter() - t0:.0f}s"
                )
        return fits["ica"]

    for kind in todo:
        folder = out / kind
        meta = {**common, **_params(cfg, kind, k), "arch": kind}
        if kind.endswith("_topk") and cfg.k_from is not None:
            # where K came from, and whether that dictionary had converged (the report checks it)
            meta |= {
                "k_from": str(cfg.k_from),
                "k_from_convergence": load_dictionary(cfg.k_from).metadata.get("convergence"),
            }
        if kind == "neurons":
            d = neurons(d_in, meta)
        elif kind == "random":
            d = random_directions(d_in, max(1, round(cfg.random_ratio * d_in)), cfg.seed, meta)
        elif kind.startswith("pca"):
            fit = pca_fit()
            meta["fit_rows"] = fit.n_rows
            d = {  # the chosen builder is called at once, while fit and meta are this iteration's
                "pca": lambda: pca_dictionary(fit, cfg.center, meta),  # noqa: B023
                "pca_split": lambda: pca_split(fit, cfg.center, meta),  # noqa: B023
                "pca_topk": lambda: pca_topk(fit, k, cfg.center, meta),  # noqa: B023
            }[kind]()
        elif kind == "ica":
            d = ica_fit()
        else:
            ica = ica_fit()
            d = ica_topk(ica, k, {**ica.metadata, **meta})
        d.save(folder)
        if progress:
            print(f"{kind}: {d.d_dict} features -> {folder}")
    return out
