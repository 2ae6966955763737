"""``saex interpret``: explain → simulate → score every selected feature of every indexed dictionary.

Reads feature indexes (``saex features``), applies a protocol preset (``interpret/protocol.py``) and a
backend (``offline``: ``interpret/offline.py``; ``openai`` / ``hf``: ``interpret/llm/``), and writes under
``--out/<backend tag>/<preset>/`` (offline and LLM results never share a folder, a table or a column):

* ``<method>/scores.jsonl``: one line per considered feature: explanation (text, rule, backend, model),
  scores, skip reason, density, skew, kurtosis, token entropy; appended as features finish, so a killed
  run resumes where it stopped (expensive with an LLM: its responses are cached too)
* ``<method>/null.jsonl``: the shuffled-explanation control (feature i scored with feature π(i)'s
  explanation), when ``--null``
* ``comparison.json`` / ``comparison.md``: per method mean ± 95% CI (1.96·sd/√n) of each score over every
  scored feature, an undefined score counted as no information (``scoring.NO_INFORMATION``: 0 for a
  correlation) with the number of undefined ones beside it, counts of scored / skipped features, the null,
  token entropy, the correlation of scores with activation skew and kurtosis (paper Table 2), and the main
  score per activation-density bin with the SAE-minus-baseline difference at matched density
  (``interpret/density.py``); ``table1.md``: the first features with their explanations
  and scores (paper Table 1); plots in ``plots/`` (paper Figs. 2, 9, 10, 18 analogues)
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

import saex
from saex.dictionaries.folders import find_folders
from saex.errors import SaexError
from saex.features.index import INDEX_JSON, FeatureIndex
from saex.interpret.density import density_comparison
from saex.interpret.offline import LABEL, TableExplainer, TableSimulator, token_entropy
from saex.interpret.protocol import FeatureSample, check_preset, sample_feature
from saex.interpret.records import Explanation
from saex.interpret.scoring import NO_INFORMATION, auroc, balanced_accuracy, mean_ci95, pooled_pearson
from saex.store.files import check_output_folder, write_json_atomic

MARKER = "interpret.json"
BACKENDS = ("offline", "openai", "hf")
SELECTIONS = ("index", "random")
SIMULATOR_MODES = ("auto", "echo", "top_logprobs", "text")


@dataclass
class InterpretConfig:
    """What ``saex interpret`` does; saved in interpret.json and in every score record."""

    features: str = "runs/features"
    """Comma-separated feature indexes (saex features), or folders of them."""
    out: str = "runs/interpret"
    """Output folder; results go under a sub-folder named after the backend."""
    preset: str = "cunningham2023"
    """Protocol: cunningham2023 (the paper), bills2023 (uniform random fragments) or delphi (detection)."""
    backend: str = "offline"
    """offline (token/bigram table: lexical predictability, no LLM), openai (any OpenAI-compatible
    endpoint) or hf (a local chat model run with transformers)."""
    n_features: int = 150
    """Features considered per dictionary (the paper: 150); those without enough fragments are skipped."""
    selection: str = "index"
    """index: the first features in the dictionary's order (the paper); random: a seeded uniform sample."""
    seed: int = 0
    """Seed of the feature sample, the bills2023 random fragments and the null's permutation."""
    budget: int = 8
    """offline: table entries (unigrams, and as many bigrams) in an explanation."""
    null: bool = True
    """Also score each feature with another feature's explanation (the chance level; doubles simulation)."""
    model: str | None = None
    """openai: the model id; hf: a chat model (default smollm2-135m, the embedded instruct model)."""
    base_url: str | None = None
    """openai: the endpoint's base URL (default: the openai SDK's, i.e. $OPENAI_BASE_URL or api.openai.com)."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai: the NAME of the environment variable holding the API key (the key itself is never stored)."""
    concurrency: int = 4
    """openai: requests in flight at once."""
    timeout: float = 60.0
    """openai: seconds before a request is abandoned and retried."""
    max_retries: int = 4
    """openai: retries of a failed or malformed request (exponential backoff)."""
    simulator_mode: str = "auto"
    """LLM simulation rung: auto (probe the endpoint), echo (prompt logprobs, all at once), top_logprobs or
    text."""


def find_indexes(spec: str) -> dict[str, Path]:
    return find_folders(spec, INDEX_JSON, "feature indexes", "--features")


def backend_tag(cfg: InterpretConfig) -> str:
    if cfg.backend == "offline":
        return f"offline-table-{cfg.budget}"
    model = cfg.model or ("smollm2-135m" if cfg.backend == "hf" else "default")
    return f"{cfg.backend}-" + re.sub(r"[^A-Za-z0-9._-]+", "_", model)


def _validate(cfg: InterpretConfig) -> None:
    check_preset(cfg.preset)
    if cfg.backend not in BACKENDS:
        raise SaexError(f"unknown backend {cfg.backend!r}; allowed: {', '.join(BACKENDS)}")
    if cfg.selection not in SELECTIONS:
        raise SaexError(f"unknown selection {cfg.selection!r}; allowed: {', '.join(SELECTIONS)}")
    for name in ("n_features", "budget", "concurrency"):
        if getattr(cfg, name) <= 0:
            raise SaexError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if cfg.seed < 0:
        raise SaexError(f"--seed must be >= 0, got {cfg.seed}")
    if cfg.simulator_mode not in SIMULATOR_MODES:
        raise SaexError(f"unknown --simulator-mode {cfg.simulator_mode!r}; allowed: {', '.join(SIMULATOR_MODES)}")
    if cfg.backend == "openai" and not cfg.model:
        raise SaexError("--backend openai needs --model (the endpoint's model id)")


def _agents(cfg: InterpretConfig, out: Path):
    if cfg.backend == "offline":
        return TableExplainer(cfg.budget), TableSimulator(), None, LABEL
    from saex.interpret.llm import LLMDetector, LLMExplainer, LLMSimulator, make_backend

    backend = make_backend(
        cfg.backend,
        cfg.model,
        cfg.base_url,
        api_key_env=cfg.api_key_env,
        cache_dir=out / "cache",
        concurrency=cfg.concurrency,
        timeout=cfg.timeout,
        max_retries=cfg.max_retries,
    )
    return (
        LLMExplainer(backend),
        LLMSimulator(backend, mode=cfg.simulator_mode),
        LLMDetector(backend),
        f"LLM explainer and simulator ({backend_tag(cfg)})",
    )


def _select(cfg: InterpretConfig, n_features: int) -> list[int]:
    n = min(cfg.n_features, n_features)
    if cfg.selection == "index":
        return list(range(n))
    return sorted(np.random.default_rng([cfg.seed, 11]).choice(n_features, n, replace=False).tolist())


def score_sample(sample: FeatureSample, explanation: Explanation, simulator, detector, preset: str) -> dict:
    """The scores of one feature's sample under one explanation."""
    if preset != "delphi":
        records = sample.score_top + sample.score_random
        pred = simulator.simulate(explanation, records)
        true = [r.activations for r in records]
        k = len(sample.score_top)
        return {
            "top_random": pooled_pearson(true, pred),
            "top": pooled_pearson(true[:k], pred[:k]),
            "random": pooled_pearson(true[k:], pred[k:]),
        }
    records = sample.activating + sample.non_activating
    if detector is not None:
        window = np.asarray(detector.detect(explanation, records), dtype=np.float64)
        called = window >= 0.5
    else:  # a window is called active when the simulation predicts activation 1 or more on some token
        window = np.array([float(np.max(p)) if len(p) else 0.0 for p in simulator.simulate(explanation, records)])
        called = window >= 1.0
    n = len(sample.activating)
    dec = np.asarray(sample.decile)
    return {
        "auroc": auroc(window[:n], window[n:]),
        "balanced_accuracy": balanced_accuracy(called[:n], called[n:]),
        "recall_by_decile": [float(called[:n][dec == d].mean()) if (dec == d).any() else None for d in range(10)],
    }


def _clean(x):
    """JSON-ready: NaN becomes null (reported as undefined), numpy scalars become floats."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _open_append(path: Path):
    """Append mode, after cutting a last line that a kill left without its newline."""
    if path.is_file() and path.stat().st_size:
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            with open(path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)
    return open(path, "a")


def _read_jsonl(path: Path, identity: dict) -> dict[int, dict]:
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line cut by a kill
                continue
            if row.get("identity") == identity:
                done[row["feature"]] = row
    return done


def interpret(cfg: InterpretConfig, progress: bool = True) -> Path:
    _validate(cfg)
    indexes = find_indexes(cfg.features)
    root = Path(cfg.out)
    check_output_folder(root, MARKER, "saex interpretation")
    out = root / backend_tag(cfg) / cfg.preset
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / MARKER, {"saex_version": saex.__version__, "config": asdict(cfg)})
    explainer, simulator, detector, label = _agents(cfg, out)
    method_rows, pooled, by_method, baselines = [], [], {}, set()
    for name, folder in indexes.items():
        index = FeatureIndex(folder)
        identity = {
            "index": index.meta["identity"],
            "preset": cfg.preset,
            "backend": backend_tag(cfg),
            "seed": cfg.seed,
            "selection": cfg.selection,
            "simulator_mode": cfg.simulator_mode,
        }
        mdir = out / name.replace("/", "__")
        mdir.mkdir(exist_ok=True)
        done = _read_jsonl(mdir / "scores.jsonl", identity)
        moments, density = index.moments(), index.density()
        feats = _select(cfg, index.n_features)
        with _open_append(mdir / "scores.jsonl") as fh:
            for f in tqdm(feats, desc=f"{name}: explain+simulate", unit="feature", disable=not progress):
                if f in done:
                    continue
                row = {
                    "feature": f,
                    "identity": identity,
                    "preset": cfg.preset,
                    "backend": backend_tag(cfg),
                    "scorer": label,
                    "density": density[f],
                    "skew": moments["skew"][f],
                    "kurtosis": moments["kurtosis"][f],
                    "token_entropy": token_entropy(index.records(f, "top") + index.records(f, "random")),
                }
                sample = sample_feature(index, f, cfg.preset, cfg.seed)
                if isinstance(sample, str):
                    row["skipped"] = sample
                else:
                    expl = explainer.explain(sample.explain)
                    row["explanation"] = {
                        "text": expl.text,
                        "backend": expl.backend,
                        "rule": expl.rule,
                        "usage": expl.usage,
                    }
                    if expl.usage.get("failed"):  # simulating an empty explanation would only score zeros
                        row["skipped"] = "the explainer gave no explanation (see the backend's failure counts)"
                    else:
                        row["scores"] = score_sample(sample, expl, simulator, detector, cfg.preset)
                fh.write(json.dumps(_clean(row)) + "\n")
                fh.flush()
                done[f] = _clean(row)
        rows = [done[f] for f in feats]
        nulls = _null(index, rows, cfg, identity, simulator, detector, mdir, progress, name) if cfg.null else []
        method_rows.append(summarize_method(name, index, rows, nulls, cfg.preset))
        pooled += [r for r in rows if "scores" in r]
        by_method[name] = rows
        if index.meta["dictionary"].get("baseline"):
            baselines.add(name)
    from saex.interpret.report import write_report

    stats = dict(getattr(getattr(explainer, "backend", None), "stats", {}) or {})
    density = _clean(density_comparison(by_method, baselines, main_score(cfg.preset)))
    write_report(out, method_rows, cfg, label, stats, moment_correlations(pooled, cfg.preset), density)
    return out


def _null(index, rows, cfg, identity, simulator, detector, mdir: Path, progress: bool, name: str) -> list[dict]:
    """Score each explained feature with the explanation of another (a seeded derangement)."""
    scored = [r for r in rows if "scores" in r]
    if len(scored) < 2:
        return []
    perm = np.random.default_rng([cfg.seed, 13]).permutation(len(scored))
    perm = np.roll(perm, 1)[np.argsort(perm)]  # a cyclic shift along a random order: nobody keeps their own
    done = _read_jsonl(mdir / "null.jsonl", identity)
    with _open_append(mdir / "null.jsonl") as fh:
        for i, r in enumerate(tqdm(scored, desc=f"{name}: null", unit="feature", disable=not progress)):
            if r["feature"] in done:
                continue
            donor = scored[perm[i]]
            e = donor["explanation"]
            expl = Explanation(e["text"], e["backend"], e["rule"], e.get("usage") or {})
            sample = sample_feature(index, r["feature"], cfg.preset, cfg.seed)
            row = _clean(
                {
                    "feature": r["feature"],
                    "identity": identity,
                    "explanation_of": donor["feature"],
                    "scores": score_sample(sample, expl, simulator, detector, cfg.preset),
                }
            )
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            done[r["feature"]] = row
    return [done[r["feature"]] for r in scored]


def summarize_method(name: str, index: FeatureIndex, rows: list[dict], nulls: list[dict], preset: str) -> dict:
    meta = index.meta["dictionary"]
    keys = ("top_random", "top", "random") if preset != "delphi" else ("auroc", "balanced_accuracy")
    scored = [r for r in rows if "scores" in r]
    out = {
        "method": name,
        "kind": meta.get("baseline") or meta.get("arch") or index.meta.get("architecture"),
        "hook": index.meta["hook"],
        "d_dict": index.meta["d_dict"],
        "alpha": meta.get("alpha"),
        "ratio": index.meta["d_dict"] / index.meta["d_in"],
        "considered": len(rows),
        "scored": len(scored),
        "skipped": len(rows) - len(scored),
    }
    for k in keys:  # over every scored feature: an undefined score counts as no information (0 for r)
        out[k] = mean_ci95([r["scores"][k] for r in scored], undefined_as=NO_INFORMATION[k])
        if nulls:
            out[f"null_{k}"] = mean_ci95([r["scores"][k] for r in nulls], undefined_as=NO_INFORMATION[k])
    # an entropy is undefined only where a record lacks it: missing data, left out rather than counted as 0
    out["token_entropy"] = mean_ci95([r.get("token_entropy") for r in scored])
    first = keys[0]
    out |= {f"corr_{first}_{m}": v["r"] for m, v in moment_correlations(scored, preset).items()}
    out["first_features"] = [
        {"feature": r["feature"], "explanation": r["explanation"]["text"], "score": r["scores"][first]}
        for r in scored[:5]
    ]
    return _clean(out)


def main_score(preset: str) -> str:
    return "top_random" if preset != "delphi" else "auroc"


def moment_correlations(scored: list[dict], preset: str) -> dict[str, dict]:
    """Paper Table 2: Pearson r between the main score and the activation skew / kurtosis over features.

    Unlike the headline means, only defined scores enter (``undefined`` counts those left out): a
    correlation asks how the score varies with the moment, and a block of features put at 0 because the
    simulation was constant would add a cluster whose position is set by the convention, not by a measured
    score, moving r in whichever direction those features' skew happens to lie."""
    first = main_score(preset)
    out = {}
    for moment in ("skew", "kurtosis"):
        pairs = [
            (r["scores"][first], r[moment])
            for r in scored
            if r["scores"][first] is not None and r.get(moment) is not None
        ]
        r = (
            pooled_pearson([np.array([p[0] for p in pairs])], [np.array([p[1] for p in pairs])])
            if len(pairs) > 2
            else None
        )
        out[moment] = _clean(
            {"r": r, "n": len(pairs), "score": first, "undefined": sum(row["scores"][first] is None for row in scored)}
        )
    return out
