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

A feature the backend gave no answer for (no explanation, or no simulation of any record) is a failure, not a
score: it is left out of every mean, counted (``counts`` in comparison.json and interpret.json, a line in
comparison.md) and tried again by the next run. A run in which every feature failed ends with an error giving the
counts and the backend's last error; the first ``GIVE_UP_AFTER`` features failing in a row with no answer at all
stop the run early. Recorded configs carry no credential: URLs lose their ``user:key@`` (``interpret/secrets.py``),
and an API key given as ``--api-key-env`` is refused without being shown.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

import saex
from saex.config import opt
from saex.devices import LMOptions, Placement, placement
from saex.dictionaries.folders import find_folders
from saex.errors import SaexError
from saex.features.index import INDEX_JSON, FeatureIndex
from saex.features.records import Explanation
from saex.files import check_output_folder, locked_output, write_json_atomic
from saex.interpret.density import density_comparison
from saex.interpret.offline import LABEL, TableExplainer, TableSimulator, token_entropy
from saex.interpret.protocol import sample_feature
from saex.interpret.report import write_report
from saex.interpret.secrets import check_key_env_name, redact
from saex.interpret.summary import (
    clean,
    count_rows,
    failure_message,
    main_score,
    moment_correlations,
    score_sample,
    summarize_method,
)
from saex.naming import file_name

NAME = "interpret"
HELP = "automated interpretability: explain, simulate and score features (offline or with an LLM)"
MARKER = "interpret.json"
GIVE_UP_AFTER = 5
"""Features in a row that got no answer, with none answered yet in this run, after which the run stops: the
endpoint is down or refuses every request (the next run tries them again)."""


@dataclass
class InterpretConfig(LMOptions):
    """What ``saex interpret`` does; saved in interpret.json and in every score record."""

    features: list[str] = opt(["runs/features"], nonempty=True)
    """Feature indexes (saex features), or folders of them."""
    out: str = "runs/interpret"
    """Output folder; results go under a sub-folder named after the backend."""
    preset: Literal["cunningham2023", "bills2023", "delphi"] = "cunningham2023"
    """Protocol: cunningham2023 (the paper), bills2023 (uniform random fragments) or delphi (detection)."""
    backend: Literal["offline", "openai", "hf"] = "offline"
    """offline (token/bigram table: lexical predictability, no LLM), openai (any OpenAI-compatible
    endpoint) or hf (a local chat model run with transformers)."""
    n_features: int = opt(150, gt=0)
    """Features considered per dictionary (the paper: 150); those without enough fragments are skipped."""
    selection: Literal["index", "random"] = "index"
    """index: the first features in the dictionary's order (the paper); random: a seeded uniform sample."""
    seed: int = opt(0, ge=0)
    """Seed of the feature sample, the bills2023 random fragments and the null's permutation."""
    budget: int = opt(8, gt=0)
    """offline: table entries (unigrams, and as many bigrams) in an explanation."""
    null: bool = True
    """Also score each feature with another feature's explanation (the chance level; doubles simulation)."""
    model: str | None = None
    """openai: the model id; hf: a chat model (default smollm2-135m, the embedded instruct model)."""
    base_url: str | None = None
    """openai: the endpoint's base URL (default: the openai SDK's, i.e. $OPENAI_BASE_URL or api.openai.com)."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai: the NAME of the environment variable holding the API key (the key itself is never stored; a value
    that looks like a key is refused, unshown)."""
    concurrency: int = opt(4, gt=0)
    """openai: requests in flight at once."""
    timeout: float = opt(60.0, gt=0)
    """openai: seconds before a request is abandoned and retried."""
    max_retries: int = opt(4, ge=0)
    """openai: retries of a failed or malformed request (exponential backoff)."""
    simulator_mode: Literal["auto", "echo", "top_logprobs", "text"] = "auto"
    """LLM simulation rung: auto (probe the endpoint), echo (prompt logprobs, all at once), top_logprobs or
    text."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_key_env_name(self.api_key_env)


CONFIG = InterpretConfig


def summary(out: Path) -> str:
    return (out / "comparison.md").read_text() + f"scores, tables and plots in {out}"


def find_indexes(spec: list[str] | str) -> dict[str, Path]:
    return find_folders(spec, INDEX_JSON, "feature indexes", "--features")


def backend_tag(cfg: InterpretConfig) -> str:
    if cfg.backend == "offline":
        return f"offline-table-{cfg.budget}"
    model = cfg.model or ("smollm2-135m" if cfg.backend == "hf" else "default")
    return f"{cfg.backend}-" + re.sub(r"[^A-Za-z0-9._-]+", "_", model)


def _validate(cfg: InterpretConfig) -> None:
    if cfg.backend == "openai" and not cfg.model:
        raise SaexError("--backend openai needs --model (the endpoint's model id)")


def _agents(cfg: InterpretConfig, out: Path, where: Placement):
    if cfg.backend == "offline":
        return TableExplainer(cfg.budget), TableSimulator(), None, LABEL
    # lazy: the LLM backends import the openai SDK and transformers, which only --backend openai | hf need
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
        device=where.lm_device,  # the hf backend's model; the others run no model here
        lm_dtype=where.lm_dtype,
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


def _open_append(path: Path):
    """Append mode, after cutting a last line that a kill left without its newline."""
    if path.is_file() and path.stat().st_size:
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            with open(path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)
    return open(path, "a")


def _read_jsonl(path: Path, identity: dict) -> dict[int, dict]:
    """The finished rows of this identity by feature (a later line wins); a failed one is not finished: the
    backend is asked again."""
    done: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line cut by a kill
                continue
            if row.get("identity") == identity:
                if row.get("failed"):
                    done.pop(row["feature"], None)
                else:
                    done[row["feature"]] = row
    return done


def _no_answer(agent, n_records: int) -> bool:
    """Whether the last simulation / detection of an LLM agent fell back to zeros on every record (the backend
    answered none of its requests). The offline agents never fail."""
    usage = getattr(agent, "last_usage", None) or {}
    return n_records > 0 and usage.get("fallbacks", 0) >= n_records


def _scorer(cfg: InterpretConfig, simulator, detector):
    """The agent whose requests score a sample (``summary.score_sample``): the detector for delphi where there is
    one, else the simulator."""
    return detector if cfg.preset == "delphi" and detector is not None else simulator


def _records_scored(sample, preset: str) -> int:
    if preset == "delphi":
        return len(sample.activating) + len(sample.non_activating)
    return sum(1 for r in sample.score_top + sample.score_random if len(r.tokens))


def _marker(cfg: InterpretConfig, **extra) -> dict:
    """interpret.json: the config with credentials taken out of its URLs (and which fields had them)."""
    config, removed = redact(asdict(cfg))
    marker = {"saex_version": saex.__version__, "config": config}
    if removed:
        marker["credentials_not_recorded"] = removed
    return marker | extra


@locked_output("saex interpret")
def run(cfg: InterpretConfig, progress: bool = True) -> Path:
    _validate(cfg)
    where = placement(cfg)  # a device this machine lacks fails before any work
    indexes = find_indexes(cfg.features)
    root = Path(cfg.out)
    check_output_folder(root, MARKER, "saex interpretation")
    out = root / backend_tag(cfg) / cfg.preset
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / MARKER, _marker(cfg, status="running", results=str(out)))
    explainer, simulator, detector, label = _agents(cfg, out, where)
    backend = getattr(explainer, "backend", None)
    method_rows, pooled, by_method, baselines = [], [], {}, set()
    streak, answered, asked = 0, False, []  # features failed in a row; any answered in this run; the rows asked
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
        if cfg.backend == "hf":  # the local model's precision changes its answers (float32: nothing recorded)
            identity |= where.identity()
        mdir = out / file_name(name)
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
                        row["failed"] = "explanation"
                        row["skipped"] = "the explainer gave no explanation (see the backend's failure counts)"
                    else:
                        scores = score_sample(sample, expl, simulator, detector, cfg.preset)
                        if _no_answer(_scorer(cfg, simulator, detector), _records_scored(sample, cfg.preset)):
                            row["failed"] = "scoring"
                            row["skipped"] = "the backend gave no usable simulation (see its failure counts)"
                        else:
                            row["scores"] = scores
                    streak = streak + 1 if row.get("failed") else 0
                    answered = answered or not row.get("failed")
                    asked.append(row)
                fh.write(json.dumps(clean(row)) + "\n")
                fh.flush()
                done[f] = clean(row)
                if streak >= GIVE_UP_AFTER and not answered:
                    error = getattr(backend, "last_error", None)
                    counts = count_rows(asked)
                    marker = _marker(cfg, status="failed", results=str(out), counts=counts, last_error=error)
                    write_json_atomic(root / MARKER, marker)
                    raise SaexError(failure_message(counts, error, stopped=True))
        rows = [done[f] for f in feats]
        nulls = _null(index, rows, cfg, identity, simulator, detector, mdir, progress, name) if cfg.null else []
        method_rows.append(summarize_method(name, index, rows, nulls, cfg.preset))
        pooled += [r for r in rows if "scores" in r]
        by_method[name] = rows
        if index.meta["dictionary"].get("baseline"):
            baselines.add(name)

    stats = dict(getattr(backend, "stats", {}) or {})
    counts = count_rows([r for rows in by_method.values() for r in rows])
    error = getattr(backend, "last_error", None)
    status = "failed" if counts["failed"] and not counts["scored"] else "partial" if counts["failed"] else "complete"
    last = {"last_error": error} if counts["failed"] else {}
    write_json_atomic(root / MARKER, _marker(cfg, status=status, results=str(out), counts=counts, **last))
    if status == "failed":
        raise SaexError(failure_message(counts, error))
    density = clean(density_comparison(by_method, baselines, main_score(cfg.preset)))
    write_report(out, method_rows, cfg, label, stats, moment_correlations(pooled, cfg.preset), density, counts)
    return out


def _null(index, rows, cfg, identity, simulator, detector, mdir: Path, progress: bool, name: str) -> list[dict]:
    """Score each explained feature with the explanation of another (a seeded derangement)."""
    scored = [r for r in rows if "scores" in r]
    if len(scored) < 2:
        return []
    perm = np.random.default_rng([cfg.seed, 13]).permutation(len(scored))
    perm = np.roll(perm, 1)[np.argsort(perm)]  # a cyclic shift along a random order: nobody keeps their own
    done = _read_jsonl(mdir / "null.jsonl", identity)
    agent = _scorer(cfg, simulator, detector)
    with _open_append(mdir / "null.jsonl") as fh:
        for i, r in enumerate(tqdm(scored, desc=f"{name}: null", unit="feature", disable=not progress)):
            if r["feature"] in done:
                continue
            donor = scored[perm[i]]
            e = donor["explanation"]
            expl = Explanation(e["text"], e["backend"], e["rule"], e.get("usage") or {})
            sample = sample_feature(index, r["feature"], cfg.preset, cfg.seed)
            assert not isinstance(sample, str), "a scored feature has a sample"
            scores = score_sample(sample, expl, simulator, detector, cfg.preset)
            if _no_answer(agent, _records_scored(sample, cfg.preset)):
                continue  # no answer is no chance level: left out of the null, asked again by the next run
            row = clean(
                {"feature": r["feature"], "identity": identity, "explanation_of": donor["feature"], "scores": scores}
            )
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            done[r["feature"]] = row
    return [done[r["feature"]] for r in scored if r["feature"] in done]
