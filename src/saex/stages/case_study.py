"""``saex case-study``: the paper's per-feature case studies (Cunningham et al. 2023 §5, App. D; Figs. 4, 5, 11-15).

1. Feature search (App. D.3): run a prompt (default the paper's " I don't know about that. It is now up to
   Dave'") with the store's model, take the dictionary's hook activation at one token (default the last),
   rank the dictionary's features and the basis dimensions (by maximum and by minimum).
2. For the top search features (or ``--features``): the token histogram (Fig. 4 left; an exact pass over the
   store's held-out split, or the feature index's random sample), the logit lens of the feature direction
   (§5.2) and the output effect of ablating it on its top fragments (Fig. 4 right).
3. The residual-basis contrast (Fig. 11): the histogram of one basis dimension (default: the search's most
   extreme dimension at the position; its negative part when that is a minimum), attached to the first
   feature's entry.
4. With ``--upstream``: the upstream circuit of a target feature (Fig. 5; default the top search feature).

Everything is written to ``<out>/case_study.json`` (layout in the project's contract) and PNGs with their
JSON; ``config.json`` records what produced it, and a rerun with the same inputs does nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

import saex
from saex.causal.ablation import output_effect
from saex.causal.case_study import decoder, store_contexts
from saex.causal.circuits import Level, contexts_from_index, upstream_circuit
from saex.config import opt
from saex.devices import PLACEMENT_FIELDS, LMOptions, Placement, placement
from saex.dictionaries import load_dictionary
from saex.dictionaries.folders import find_dictionaries, open_for_store, refuse_transcoder
from saex.dictionaries.formats import weights_sha256
from saex.dictionaries.sae import SAE
from saex.errors import SaexError
from saex.features import histogram as H
from saex.features import logit_lens as LL
from saex.features.index import INDEX_JSON, FeatureIndex
from saex.features.search import DAVE, rank_of, search_prompt
from saex.files import check_output_folder, locked_output, sha256_path, write_json_atomic
from saex.lm.hooks import HookedLM, hook_order
from saex.lm.loading import load_store_model
from saex.store.reader import ActivationStore, RowFilter, RowOptions, store_hash
from saex.viz import case_study as viz

NAME = "case-study"
HELP = "per-feature case studies: prompt search, token histograms, logit lens, ablation effects, upstream circuits"
MARKER = "case_study.json"


@dataclass
class CaseStudyConfig(RowOptions, LMOptions):
    """What ``saex case-study`` analyses; saved in config.json beside case_study.json."""

    acts: str = "runs/acts"
    """Activation store: its model runs the prompt and the ablations; its held-out split gives the histograms."""
    dict: str = "runs/dicts/tied_l1_r4_a0.00086"
    """The dictionary folder whose features are studied (one SAE or baseline folder)."""
    features_index: str | None = None
    """`saex features` output for that dictionary (its index folder, or the folder holding it): top fragments
    for the output effect and circuit contexts; without it, the held-out store supplies them."""
    upstream: list[str] | None = None
    """Comma-separated dictionary folders for the upstream circuit, one per level, nearest first, each at an
    earlier hook point than the one before (e.g. layer 5 then layer 4 for a layer-6 dictionary)."""
    depth: int | None = opt(None, ge=0)
    """Levels of the circuit to expand (default: one per --upstream dictionary)."""
    out: str = "runs/case_studies"
    """Output folder: case_study.json, config.json and the figures."""
    hook: str | None = None
    """Hook point of --dict (default: its metadata's)."""
    prompt: str = DAVE
    """Prompt of the feature search (the paper's, App. D.3)."""
    position: int = -1
    """Token position of the search in the prompt (negative counts from the end; -1: the last token)."""
    top: int = opt(3, gt=0)
    """Top search features analysed (when --features is not given)."""
    features: list[int] | None = opt(None, ge=0)
    """Comma-separated features to analyse instead of the top search features."""
    search_top: int = opt(10, gt=0)
    """Features and basis dimensions listed by the search."""
    max_density: float = opt(0.05, gt=0, le=1)
    """When the analysed features are chosen from the search: skip features active on more than this fraction
    of held-out tokens (the feature index's density, so it needs --features-index; 1 keeps all). The paper's top search result
    was an outlier-dimension feature, and a token histogram only describes features active on few tokens (§5.1)."""
    target: int | None = None
    """Target feature of the circuit (default: the first analysed feature)."""
    children: int = opt(3, gt=0)
    """Strongest upstream causes kept per circuit node (and as many of the strongest rises, listed)."""
    candidates: int = opt(64, ge=0)
    """Active upstream features ablated exactly per node, chosen by attribution: this many of the highest and
    of the lowest (0: every active feature)."""
    contexts: int = opt(20, gt=0)
    """Circuit contexts where the target is in [M/2, M] (the paper: 20)."""
    effect_contexts: int = opt(20, gt=0)
    """Top contexts of each feature on which its output effect is averaged."""
    histogram: Literal["store", "index"] = "store"
    """Histogram source: store (exact pass over the held-out split) or index (the index's random sample)."""
    max_samples: int = opt(5000, gt=0)
    """Active positions per histogram, sampled uniformly when there are more (the paper: 5,000)."""
    residual_dim: int | None = None
    """Basis dimension for the Fig. 11 contrast (default: the search's most extreme dimension)."""
    logit_top: int = opt(20, gt=0)
    """Tokens listed at each end of the logit lens (the paper prints 20)."""
    unembed_outliers: str = "5x"
    """Tokens left out of the logit lens for their unembedding norm: Nx (N × the median norm), a number (an
    absolute norm; the paper: 20 on Pythia) or none."""
    final_norm: bool = False
    """Apply the final norm's gain in the logit lens (the paper does not)."""
    threshold: float = opt(0.1, ge=0)
    """|Δ log-prob| from which a token is drawn in the output-effect figure (the paper: 0.1)."""
    batch: int = opt(8, gt=0)
    """Contexts per forward pass of the output effect."""
    seed: int = opt(0, ge=0)
    """Seed of the histogram subsampling and of the circuit context sample."""
    model: str | None = None
    """Model to run (default: the store's; its weights must be the store's)."""


CONFIG = CaseStudyConfig


def summary(out: Path) -> str:
    return f"case study in {out / 'case_study.json'} (figures beside it)"


def _validate(cfg: CaseStudyConfig) -> None:
    if cfg.features is not None and not cfg.features:
        raise SaexError("--features names no feature")
    if cfg.histogram == "index" and not cfg.features_index:
        raise SaexError("--histogram index needs --features-index")


def _same_store(folder: Path, d: SAE, store: ActivationStore, hook: str, option: str) -> None:
    """Refuse a dictionary trained on another model or another store (where its metadata says)."""
    # Another library names models its own way ("gpt2-small", "google/gemma-2-2b"): imported dictionaries are
    # checked by hook point and width only.
    trained_on = None if d.metadata.get("source_format") else d.metadata.get("model_name")
    if trained_on and trained_on != store.manifest["model"]["name"]:
        raise SaexError(
            f"{option} dictionary {folder} was trained on model {trained_on!r}, but the store "
            f"{store.path} holds {store.manifest['model']['name']!r}"
        )
    recorded = d.metadata.get("store_hash")
    if recorded and (hook not in store.hooks or recorded != store_hash(store, hook)):
        raise SaexError(f"{option} dictionary {folder} was trained on another activation store than {store.path}")


def _check_order(hook: str, upstream: list[str], depth: int | None) -> None:
    """Before any work: each upstream hook strictly earlier than the one before it, and enough levels."""
    prev = hook
    for h in upstream:
        if hook_order(h) >= hook_order(prev):
            raise SaexError(
                f"upstream hook {h} is not earlier than {prev}; give --upstream dictionaries nearest "
                "first, each at an earlier hook point"
            )
        prev = h
    if depth is not None and depth > len(upstream):
        raise SaexError(f"--depth {depth} needs that many upstream dictionaries; {len(upstream)} given")


def _one(spec: str, option: str) -> Path:
    found = find_dictionaries(spec)
    if len(found) != 1:
        raise SaexError(f"{option} {spec} names {len(found)} dictionaries; name exactly one dictionary folder")
    return next(iter(found.values()))


def _index_folder(path: str, folder: Path, weights_sha: str) -> Path:

    p = Path(path)
    if not (p / INDEX_JSON).is_file():
        candidates = [p / folder.name] + [q for q in p.iterdir() if q.is_dir()] if p.is_dir() else []
        matches = [
            q
            for q in candidates
            if (q / INDEX_JSON).is_file()
            and json.loads((q / INDEX_JSON).read_text()).get("identity", {}).get("weights_sha256") == weights_sha
        ]
        if not matches:
            raise SaexError(f"--features-index {p} holds no feature index of the dictionary {folder}")
        p = matches[0]
    return p


def _open_index(p: Path, folder: Path, weights_sha: str, hook: str):

    ix = FeatureIndex(p)
    ident = ix.meta["identity"]
    if ident["weights_sha256"] != weights_sha or ident["hook"] != hook:
        raise SaexError(f"the feature index {p} was built from another dictionary or hook than {folder} at {hook}")
    return ix


@locked_output("saex case-study")
def run(cfg: CaseStudyConfig, progress: bool = True) -> Path:
    _validate(cfg)
    where = placement(cfg)  # a device this machine lacks fails before any work
    store = ActivationStore(cfg.acts)
    folder = _one(cfg.dict, "--dict")
    ((_, d, hook),) = open_for_store(str(folder), store, cfg.hook).values()
    refuse_transcoder(d, folder, "case-study")
    _same_store(folder, d, store, hook, "--dict")
    levels = []
    for part in cfg.upstream or []:
        up_folder = _one(part, "--upstream")
        up = load_dictionary(up_folder)
        refuse_transcoder(up, up_folder, "case-study")
        up_hook = up.metadata.get("hook_name")
        if not up_hook:
            raise SaexError(f"--upstream dictionary {up_folder} records no hook point (metadata hook_name)")
        _same_store(up_folder, up, store, up_hook, "--upstream")
        levels.append((up_folder, up_hook, up))
    _check_order(hook, [h for _, h, _ in levels], cfg.depth)
    weights_sha = weights_sha256(folder)
    index_dir = _index_folder(cfg.features_index, folder, weights_sha) if cfg.features_index else None
    identity = {
        # where it runs is not what it computes; the model's precision is
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("out", *PLACEMENT_FIELDS)} | where.identity(),
        "dictionary": weights_sha,
        "store": store_hash(store, hook),
        "upstream": [weights_sha256(f) for f, _, _ in levels],
        # the index's content: a rebuilt index makes the study stale
        "index": [sha256_path(f) for f in sorted(index_dir.iterdir()) if f.suffix in (".json", ".safetensors")]
        if index_dir
        else None,
    }
    out = Path(cfg.out)
    up_to_date = check_output_folder(out, MARKER, "saex case study") and (out / "config.json").is_file()
    if up_to_date and json.loads((out / "config.json").read_text()).get("identity") == identity:
        if progress:
            print(f"case study in {out} is up to date")
        return out
    index = _open_index(index_dir, folder, weights_sha, hook) if index_dir else None

    # figures go to a hidden staging folder first: a run that fails half-way leaves --out reusable
    staging = out / ".staging"
    if staging.exists():
        shutil.rmtree(staging)
    result = _analyse(cfg, store, folder, d, hook, levels, index, staging, progress, where)
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(staging.iterdir()) if staging.is_dir() else []:
        os.replace(f, out / f.name)
    shutil.rmtree(staging, ignore_errors=True)
    write_json_atomic(out / MARKER, result)
    write_json_atomic(
        out / "config.json", {"saex_version": saex.__version__, "config": asdict(cfg), "identity": identity}
    )
    return out


def _analyse(
    cfg: CaseStudyConfig,
    store,
    folder: Path,
    d: SAE,
    hook: str,
    levels: list,
    index,
    out: Path,
    progress: bool,
    where: Placement,
) -> dict:

    say = print if progress else (lambda *a, **k: None)
    lm = load_store_model(store.manifest["model"], cfg.model)
    lm.model.eval().to(device=where.lm_device, dtype=where.lm_dtype)
    hooked = HookedLM(lm.model)
    d = d.to(where.device)
    levels = [(f, h, u.to(where.device)) for f, h, u in levels]
    decode = decoder(lm.tokenizer)
    F = d.d_dict
    search, codes_F, x_D = search_prompt(
        hooked, lm.tokenizer, hook, d, cfg.prompt, cfg.position, cfg.search_top, folder.name
    )
    say(
        f"search at {hook}, token {search['position']} {search['tokens'][search['position']]!r}: top features "
        + ", ".join(f"{r['feature']} ({r['activation']:.3g})" for r in search["features"][:5])
    )
    feats = list(cfg.features) if cfg.features is not None else None
    if feats is None:
        density = index.density() if index is not None and cfg.max_density < 1 else None
        feats, dense = [], []
        for f in torch.argsort(codes_F, descending=True).tolist():
            if codes_F[f] <= 0 or len(feats) == cfg.top:
                break
            if density is not None and density[f] > cfg.max_density:
                dense.append({"feature": f, "density": float(density[f]), "activation": float(codes_F[f])})
            else:
                feats.append(f)
        search["skipped_dense"] = dense
        if dense:
            say(f"skipped {len(dense)} higher-ranked features active on more than {cfg.max_density:g} of tokens")
        if not feats:
            raise SaexError(
                f"no feature of {folder} active on at most --max-density {cfg.max_density:g} of tokens "
                f"is active at token {search['position']} of the prompt ({len(dense)} denser ones "
                "are); raise --max-density or name features with --features"
            )
    for f in feats + ([cfg.target] if cfg.target is not None else []):
        if not 0 <= f < F:
            raise SaexError(f"feature {f} is out of range: the dictionary {folder} has features 0..{F - 1}")
    target = cfg.target if cfg.target is not None else feats[0]
    if cfg.residual_dim is not None:
        if not 0 <= cfg.residual_dim < d.d_in:
            raise SaexError(f"--residual-dim {cfg.residual_dim} is out of range: {hook} has dimensions 0..{d.d_in - 1}")
        dim, sign = cfg.residual_dim, 1 if x_D[cfg.residual_dim] >= 0 else -1
    else:
        hi, lo = search["resid_max"][0], search["resid_min"][0]
        dim, sign = (hi["dim"], 1) if hi["value"] >= -lo["value"] else (lo["dim"], -1)

    # one exact pass over the held-out split: the features, the target, the basis dimension
    series = feats + ([target] if target not in feats else [])
    feat_fn, dim_fn = H.feature_values(d, series), H.dimension_values([dim], [sign])
    say(f"histograms over the held-out split of {store.path} ...")
    sp = H.histograms_from_store(
        store,
        hook,
        lambda x: torch.cat([feat_fn(x), dim_fn(x)], 1),
        len(series) + 1,
        decode,
        max_n=cfg.max_samples,
        seed=cfg.seed,
        rows=RowFilter.of(cfg),
        device=where.device,
    )
    tokens_CT = store.tokens("heldout").long()
    resid_hist = sp.histograms[-1]
    resid_hist["source"] += f", dimension {dim}" + (" (negative part, as -x)" if sign < 0 else "")

    lens = None
    if hooked.resolve(hook).kind != "mlp.hook_post":  # MLP neurons do not live in the unembedding's space
        W_U = LL.unembedding(lm.model).to(where.device)
        gain = LL.final_norm_gain(lm.model, hooked.family.final_norm) if cfg.final_norm else None
        excluded = LL.excluded_tokens(W_U, cfg.unembed_outliers)
        feats_t = torch.tensor(feats, device=where.device)
        lens = LL.logit_lens_all(d.W_dec_FD.detach()[feats_t], W_U, cfg.logit_top, excluded, gain)
    figures, entries = {}, []
    for i, f in enumerate(feats):
        s = series.index(f)
        hist = (
            H.histogram_from_index(index, f, decode, cfg.max_samples, cfg.seed)
            if cfg.histogram == "index"
            else sp.histograms[s]
        )
        if index is not None:
            ids, _ = index.examples(f, "top")
            contexts = index.tokens(ids[: cfg.effect_contexts]).long().tolist()
        else:
            contexts = store_contexts(
                tokens_CT, sp.context_max_CK[:, s], sp.context_argmax_CK[:, s], cfg.effect_contexts
            )
        say(f"feature {f}: output effect over {len(contexts)} contexts ...")
        effect = (
            output_effect(hooked, hook, d, f, contexts, decode, batch=cfg.batch)
            if contexts
            else {"positions": 0, "contexts": 0, "decreased": [], "increased": []}
        )
        entry = {
            "hook": hook,
            "dictionary": folder.name,
            "feature": f,
            "rank": rank_of(codes_F, f),
            "histogram": hist,
            "logit_lens": None
            if lens is None
            else LL.payload(
                lens[0][i], lens[1][i], lens[2][i], lens[3][i], decode, int(excluded.sum()), cfg.final_norm
            ),
            "output_effect": effect,
            "residual_histogram": resid_hist if i == 0 else None,
        }
        entries.append(entry)
        name = f"{folder.name} feature {f}"
        figures[f"feature{f}_histogram"] = viz.plot_histogram(hist, out / f"feature{f}_histogram.png", name).name
        figures[f"feature{f}_output_effect"] = viz.plot_output_effect(
            effect, out / f"feature{f}_output_effect.png", name, cfg.threshold
        ).name
    figures[f"residual{dim}_histogram"] = viz.plot_histogram(
        resid_hist, out / f"residual{dim}_histogram.png", f"{hook} dimension {dim}"
    ).name

    circuit = None
    if levels:
        if index is not None:
            contexts, M = contexts_from_index(index, target, cfg.contexts, cfg.seed)
        else:
            s = series.index(target)
            M = float(sp.max_K[s])
            if not M > 0:
                raise SaexError(f"feature {target} never fires on the held-out split: no contexts for its circuit")
            contexts = store_contexts(
                tokens_CT, sp.context_max_CK[:, s], sp.context_argmax_CK[:, s], cfg.contexts, M / 2, M, cfg.seed
            )
        say(f"upstream circuit of feature {target} over {len(contexts)} contexts ...")
        circuit = upstream_circuit(
            hooked,
            Level(hook, d),
            target,
            contexts,
            [Level(h, u) for _, h, u in levels],
            cfg.depth,
            cfg.children,
            cfg.candidates,
            max_activation=M,
        )
        figures["circuit"] = viz.plot_circuit(
            circuit, out / "circuit.png", f"upstream of {folder.name} feature {target} at {hook}"
        ).name
    return {"search": search, "features": entries, "circuit": circuit, "figures": figures}
