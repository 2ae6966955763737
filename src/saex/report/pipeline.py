"""``saex reproduce``: the paper's whole study as one resumable pipeline (Cunningham et al. 2023, §3-5, App. B-G).

harvest (residual + MLP hooks, one pass) → SAE sweeps over α and R (tied on the residual stream, untied on
the MLP, as the paper) → baselines → evaluation → feature index → autointerp → IOI → case studies →
dashboard → report. Every stage writes under one run folder (layout in ``docs/report.md``) and is recorded in
``reproduce.json`` with a key: the hash of its configuration and of the content hashes of what its inputs
wrote. A stage whose key and outputs are unchanged is skipped; one killed half-way is run again with the
same key, and the stage itself resumes (each saex command does); a stage whose key changed has its old
outputs removed first, so that nothing stale is mixed in.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from saex.config import config_dict
from saex.errors import SaexError
from saex.report import presets
from saex.store.files import sha256_path, write_json_atomic

STATE = "reproduce.json"


@dataclass
class ReproduceConfig:
    """What ``saex reproduce`` runs; saved in reproduce.json."""

    preset: str = "quick"
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
    backend: str = "offline"
    """Autointerp backend: offline (lexical predictability, no network), openai or hf (see saex interpret)."""
    llm_model: str | None = None
    """openai / hf backends: the explainer-simulator model."""
    base_url: str | None = None
    """openai backend: the endpoint's base URL."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai backend: the environment variable holding the API key (the key is never written anywhere)."""
    dry_run: bool = False
    """Print the plan, the stages and the expected time, and stop."""


@dataclass
class Stage:
    name: str
    folder: str
    """Sub-folder of the run folder this stage owns (removed when its key changes)."""
    inputs: tuple[str, ...]
    config: Callable[[], dict]
    """The stage's configuration, built when it is reached (it may name folders its inputs wrote)."""
    run: Callable[[dict], None]
    optional: bool = False
    """A SaexError here (e.g. IOI on a tokenizer without single-token names) is recorded, not fatal."""
    soft: tuple[str, ...] = ()
    """Stages read when they ran (their hashes enter the key) but not required (the report)."""


def tree_hash(folder: Path) -> str:
    """Content hash of what a stage wrote: every file's path and sha256, except resume state and temporaries.

    An activation store is hashed through its manifest, which holds every shard's checksum (verified on read).
    """
    h = hashlib.sha256()
    if (folder / "manifest.json").exists() and (folder / "train").is_dir():
        files = [folder / "manifest.json"]
    else:
        files = sorted(
            p
            for p in folder.rglob("*")
            if p.is_file()
            and "checkpoint" not in p.relative_to(folder).parts
            and not p.name.endswith(".tmp")
            and ".tmp-" not in p.name
        )
    for p in files:
        h.update(str(p.relative_to(folder)).encode() + b"\0" + sha256_path(p).encode() + b"\n")
    return h.hexdigest()


def stage_key(name: str, config: dict, input_hashes: dict[str, str]) -> str:
    blob = json.dumps({"stage": name, "config": config, "inputs": input_hashes}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def parse_overrides(text: str, plan: dict) -> dict:
    """``key=value,key=[1,2]`` → a dict; keys must be plan keys and values Python literals of the same kind."""
    out: dict = {}
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if "=" not in part:
            raise SaexError(f"--set item {part!r} is not key=value")
        key, value = (s.strip() for s in part.split("=", 1))
        if key not in plan:
            raise SaexError(f"--set key {key!r} is not in the plan; allowed: {', '.join(sorted(plan))}")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        old = plan[key]
        if isinstance(old, list) and not isinstance(parsed, list):
            parsed = [parsed]
        if isinstance(old, float) and isinstance(parsed, int):
            parsed = float(parsed)
        if type(parsed) is not type(old) and not (isinstance(old, str) and isinstance(parsed, str)):
            raise SaexError(f"--set {key}={value!r}: expected a {type(old).__name__} like {old!r}")
        if isinstance(old, list) and old:
            kind = type(old[0])
            if kind is float:
                parsed = [float(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in parsed]
            if not parsed or any(type(x) is not kind for x in parsed):
                raise SaexError(f"--set {key}={value!r}: expected a non-empty list of {kind.__name__} like {old!r}")
        out[key] = parsed
    return out


class Pipeline:
    """Runs stages in order against the state file; skip, resume and invalidate as the module docstring says."""

    def __init__(self, root: Path, header: dict, stages: list[Stage], log=print):
        self.root, self.stages, self.log = root, stages, log
        self.path = root / STATE
        self.state = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.state.update(header)
        self.state.setdefault("stages", {})

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.state)

    def _drop(self, folder: str | None) -> None:
        """Remove a stage's folder (always one inside the run folder) so the report cannot read stale outputs."""
        if folder and (self.root / folder).resolve().is_relative_to(self.root.resolve()):
            shutil.rmtree(self.root / folder, ignore_errors=True)

    def run(self) -> dict:
        records = self.state["stages"]
        names = {st.name for st in self.stages}
        for name in [n for n in records if n not in names]:  # stages of an earlier plan (e.g. other layers)
            self.log(f"{name}: not in this plan any more; removing its outputs")
            self._drop(records.pop(name).get("folder"))
        for i, st in enumerate(self.stages, 1):
            tag = f"[{i}/{len(self.stages)}] {st.name}"
            missing = [n for n in st.inputs if records.get(n, {}).get("status") != "done"]
            if missing:
                self._drop(st.folder)
                records[st.name] = {"status": "not run", "reason": f"needs {', '.join(missing)}", "folder": st.folder}
                self.log(f"{tag}: not run (needs {', '.join(missing)})")
                self.save()
                continue
            try:
                cfg = st.config()
            except SaexError as e:
                if not st.optional:
                    raise
                self._drop(st.folder)
                records[st.name] = {"status": "failed", "reason": str(e), "folder": st.folder}
                self.log(f"{tag}: failed, continuing without it: {e}")
                self.save()
                continue
            done = [n for n in st.inputs + st.soft if records.get(n, {}).get("status") == "done"]
            key = stage_key(st.name, cfg, {n: records[n]["outputs"] for n in done})
            rec = records.get(st.name, {})
            folder = self.root / st.folder
            if rec.get("status") == "done" and rec.get("key") == key:
                if folder.exists() and tree_hash(folder) == rec.get("outputs"):
                    self.log(f"{tag}: unchanged, skipped")
                    continue
                self.log(f"{tag}: its outputs changed on disk since it ran; running it again")
                shutil.rmtree(folder, ignore_errors=True)
            elif rec.get("key") not in (None, key) and folder.exists():
                self.log(f"{tag}: configuration or inputs changed; removing its old outputs")
                shutil.rmtree(folder)
            elif rec.get("status") == "running":
                self.log(f"{tag}: resuming an interrupted run")
            records[st.name] = {"key": key, "status": "running", "config": cfg, "folder": st.folder}
            self.save()
            self.log(f"{tag}: running")
            t0 = time.perf_counter()
            try:
                st.run(cfg)
            except SaexError as e:
                if not st.optional:
                    raise
                self._drop(st.folder)
                records[st.name] = {
                    "key": key,
                    "status": "failed",
                    "reason": str(e),
                    "config": cfg,
                    "folder": st.folder,
                }
                self.log(f"{tag}: failed, continuing without it: {e}")
                self.save()
                continue
            records[st.name] = {
                "key": key,
                "status": "done",
                "config": cfg,
                "folder": st.folder,
                "outputs": tree_hash(folder),
                "seconds": round(time.perf_counter() - t0, 1),
                "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            }
            self.save()
            self.log(f"{tag}: done in {records[st.name]['seconds']:.0f} s")
        return self.state


def _rel(obj, root: Path):
    """Configs name folders inside the run folder relative to it, so a moved run folder keeps its keys (each
    item of a comma-separated list too: eval's --dicts names the trained and the baseline folders)."""
    if isinstance(obj, dict):
        return {k: _rel(v, root) for k, v in obj.items()}
    if isinstance(obj, str):
        r = str(root)
        return ",".join("$OUT" + s[len(r) :] if s == r or s.startswith(r + "/") else s for s in obj.split(","))
    return obj


def _abs(obj, root: Path):
    if isinstance(obj, dict):
        return {k: _abs(v, root) for k, v in obj.items()}
    if isinstance(obj, str) and "$OUT" in obj:
        return ",".join(str(root) + s[4:] if s.startswith("$OUT") else s for s in obj.split(","))
    return obj


def reproduce(cfg: ReproduceConfig, progress: bool = True) -> Path:
    """Plan the study for the model, print it and its expected time, then run (or resume) every stage."""
    from saex.report.stages import build_stages, describe_model

    root = Path(cfg.out).resolve()
    info = describe_model(cfg.model)
    plan = presets.plan(cfg.preset, info["n_layers"])
    plan.update(parse_overrides(cfg.set, plan))
    if cfg.corpus:
        plan["corpus"] = cfg.corpus
    # The circuit needs one upstream dictionary per level, at the layers just before the main one.
    plan["circuit_depth"] = max(1, min(plan["circuit_depth"], plan["main_layer"]))
    upstream = {plan["main_layer"] - i for i in range(1, plan["circuit_depth"] + 1)}
    plan["resid_layers"] = sorted(set(plan["resid_layers"]) | upstream | {plan["main_layer"], plan["ioi_layer"]})
    if not set(plan["calibration_layers_resid"]) <= set(plan["resid_layers"]):
        raise SaexError(
            f"calibration_layers_resid {plan['calibration_layers_resid']} must be residual layers of "
            f"the plan {plan['resid_layers']} (or [] to calibrate every one)"
        )
    bad = [L for L in plan["resid_layers"] + plan["mlp_layers"] if not 0 <= L < info["n_layers"]]
    if bad:
        raise SaexError(f"layers {bad} are out of range: {cfg.model} has layers 0..{info['n_layers'] - 1}")
    estimate = presets.estimate_seconds(
        plan, info["params_per_layer"], info["d_model"], info["d_mlp"], info["vocab"], info["gflops"]
    )
    total = sum(estimate.values())
    print(
        f"saex reproduce --preset {cfg.preset}: {cfg.model} ({info['n_layers']} layers, d_model {info['d_model']})"
        f" on {plan['corpus']}"
    )
    print("plan: " + json.dumps(plan))
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
        "plan": plan,
        "model": info,
        "estimate_seconds": estimate,
    }
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


def _human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def stage_config(obj) -> dict:
    """A stage's dataclass config as the JSON dict its key is computed from."""
    return config_dict(obj) if dataclasses.is_dataclass(obj) else dict(obj)
