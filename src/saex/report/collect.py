"""Read a ``saex reproduce`` run folder (layout: ``reproduce.json``, ``acts/``, ``eval/<hook>/``,
``features/<hook>/``, ``interpret/<hook>/<backend>/<preset>/``, ``ioi/``, ``case_studies/``, ``dashboard/``)
into plain data for the report. Nothing here is recomputed: the report shows what the stages wrote.

A missing or unreadable stage output is recorded (``Run.problems``) and left empty; the report then says
"not run in this reproduction" for what depended on it. Paper defaults (§3.3: α = 8.6e-4 residual,
3.2e-4 MLP; R = 2 residual, 1 MLP) name the main SAE when reproduce.json does not.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from saex.dictionaries import BASELINE_KINDS
from saex.files import read_jsonl
from saex.naming import file_name, hook_family, hook_layer
from saex.store.reader import ActivationStore, store_hash

PAPER_MAIN = {"resid": {"alpha": 8.6e-4, "ratio": 2.0}, "mlp": {"alpha": 3.2e-4, "ratio": 1.0}}


@dataclass
class Run:
    """Everything the report reads from one run folder."""

    root: Path
    reproduce: dict = field(default_factory=dict)
    store: dict | None = None
    """acts/manifest.json plus "hashes": {hook: store_hash}."""
    eval: dict[str, dict] = field(default_factory=dict)
    """hook -> {"results": [per-dictionary result], "plots": {name: Path}}."""
    interpret: dict[str, dict[str, dict]] = field(default_factory=dict)
    """"backend/preset" -> hook -> {"comparison": dict, "scores": {method: [rows]}, "hashes": {method: sha}}."""
    features: dict[str, dict[str, dict]] = field(default_factory=dict)
    """hook -> dictionary name -> its index.json."""
    ioi: dict | None = None
    """{"config", "task", "layers": {layer: {name: result}}, "figures": {stem: Path}}."""
    case_study: dict | None = None
    """{"data": case_study.json, "figures": {name: Path}}."""
    dashboard: Path | None = None
    training: dict[str, dict] = field(default_factory=dict)
    """hook -> the training run's run.json (members, steps, passes, row filter, convergence verdicts)."""
    calibration: dict[str, dict] = field(default_factory=dict)
    """hook -> calibrate/<hook>/calibration.json (the α grid's L0s and the α chosen per target L0)."""
    problems: list[str] = field(default_factory=list)

    @property
    def config(self) -> dict:
        """The pipeline's settings: the command's options, its plan (layers, α and R lists, main α and R)."""
        r = self.reproduce
        return {**(r.get("reproduce_config") or {}), **(r.get("plan") or {}), **(r.get("config") or {})}

    def stage_reason(self, prefix: str) -> str | None:
        """Why the stages named ``prefix`` or ``prefix:<hook>`` did not run, from reproduce.json."""
        why = [
            f"{n}: {s.get('status')}" + (f" ({s['reason']})" if s.get("reason") else "")
            for n, s in self.stages.items()
            if isinstance(s, dict) and n.split(":")[0] == prefix and s.get("status") != "done"
        ]
        return "; ".join(why) or None

    @property
    def given(self) -> dict[str, list[str]]:
        """hook -> names of the dictionaries ``saex reproduce --dicts`` analysed (empty when it trained its own)."""
        return self.reproduce.get("given") or {}

    @property
    def stages(self) -> dict[str, dict]:
        return self.reproduce.get("stages") or {}

    @property
    def hooks(self) -> list[str]:
        found = set(self.eval) | set(self.features) | {h for per in self.interpret.values() for h in per}
        if self.store:
            found |= set(self.store.get("hooks") or {})
        return sorted(found, key=hook_sort_key)


def hook_sort_key(hook: str) -> tuple:
    return ({"resid": 0, "mlp": 1}.get(hook_family(hook), 2), hook_layer(hook) or 0, hook)


def _json(run: Run, path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        run.problems.append(f"{path.relative_to(run.root)}: unreadable ({e.__class__.__name__})")
        return None


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


def _pngs(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.glob("*.png"))} if folder.is_dir() else {}


def collect(run_dir: Path) -> Run:
    root = Path(run_dir)
    run = Run(root)
    run.reproduce = _json(run, root / "reproduce.json") or {}
    _collect_store(run)
    for folder in _subdirs(root / "eval"):
        results = [r for p in sorted((folder / "results").glob("*.json")) if (r := _json(run, p))]
        if results:
            run.eval[folder.name] = {"results": results, "plots": _pngs(folder / "plots")}
    for folder in _subdirs(root / "features"):
        idx = {d.name: m for d in _subdirs(folder) if (m := _json(run, d / "index.json"))}
        if idx:
            run.features[folder.name] = idx
    for hook_dir in _subdirs(root / "interpret"):
        for backend in _subdirs(hook_dir):
            for preset in _subdirs(backend):
                comp = _json(run, preset / "comparison.json")
                if not comp:
                    continue
                scores, hashes = {}, {}
                for m in comp.get("methods") or []:
                    scores[m["method"]] = read_jsonl(preset / file_name(m["method"]) / "scores.jsonl")
                    rows = [r for r in scores[m["method"]] if (r.get("identity") or {}).get("index")]
                    if rows:
                        hashes[m["method"]] = rows[0]["identity"]["index"].get("weights_sha256")
                run.interpret.setdefault(f"{backend.name}/{preset.name}", {})[hook_dir.name] = {
                    "comparison": comp,
                    "scores": scores,
                    "hashes": hashes,
                    "plots": _pngs(preset / "plots"),
                }
    for folder in _subdirs(root / "dicts"):
        if isinstance(tr := _json(run, folder / "run.json"), dict):
            run.training[folder.name] = tr
    for folder in _subdirs(root / "calibrate"):
        if isinstance(cal := _json(run, folder / "calibration.json"), dict):
            run.calibration[folder.name] = cal
    _collect_ioi(run)
    cs = _json(run, root / "case_studies" / "case_study.json")
    if isinstance(cs, dict):
        figs = {}
        for name, rel in (cs.get("figures") or {}).items():
            p = (root / "case_studies" / str(rel)).resolve()
            if p.is_file() and p.suffix == ".png" and (root / "case_studies").resolve() in p.parents:
                figs[str(name)] = p
        run.case_study = {"data": cs, "figures": figs}
    if (root / "dashboard" / "index.html").is_file():
        run.dashboard = root / "dashboard"
    return run


def _collect_store(run: Run) -> None:
    manifest = _json(run, run.root / "acts" / "manifest.json")
    if not isinstance(manifest, dict):
        return
    hashes = {}
    try:
        store = ActivationStore(run.root / "acts", verify=False)
        hashes = {h: store_hash(store, h) for h in store.hooks}
    except Exception as e:  # the report still shows what it can without the hashes
        run.problems.append(f"acts/: store hashes unavailable ({e})")
    run.store = manifest | {"hashes": hashes}


def _collect_ioi(run: Run) -> None:
    folder = run.root / "ioi"
    layers: dict[int, dict[str, dict]] = {}
    for sub in _subdirs(folder):
        m = re.fullmatch(r"layer(\d+)", sub.name)
        if m:
            res = {r.get("name", p.stem): r for p in sorted(sub.glob("*.json")) if (r := _json(run, p))}
            if res:
                layers[int(m.group(1))] = res
    if layers:
        run.ioi = {
            "config": (_json(run, folder / "ioi.json") or {}).get("config") or {},
            "task": _json(run, folder / "task.json") or {},
            "layers": dict(sorted(layers.items())),
            "figures": _pngs(folder),
        }


# --- choosing what the paper's figures show -------------------------------------------------------------


def main_target(run: Run, hook: str) -> dict:
    """The (α, R) of the main SAE at a hook: the α its calibration chose for the plan's main target L0, else
    reproduce.json's main α (runs before calibration), else the paper's. A run on given dictionaries
    (``saex reproduce --dicts``) names its main dictionary per hook instead (``name``)."""
    kind = "mlp" if hook_family(hook) == "mlp" else "resid"
    cfg = run.config
    alpha = cfg.get(f"main_alpha_{kind}")
    target = cfg.get(f"main_target_l0_{kind}")
    for c in (run.calibration.get(hook) or {}).get("chosen") or []:
        if target is not None and math.isclose(float(c.get("target_l0", math.nan)), float(target)):
            alpha = c.get("alpha")
    ratio = cfg.get(f"main_ratio_{kind}")
    if ratio is None:
        ratio = cfg.get("main_ratio")
    main = (run.reproduce.get("main_dicts") or {}).get(hook)
    return {
        "name": main,
        "alpha": float(alpha if alpha is not None else PAPER_MAIN[kind]["alpha"]),
        "ratio": float(ratio if ratio is not None else PAPER_MAIN[kind]["ratio"]),
    }


def is_sae(entry: dict) -> bool:
    return entry.get("alpha") is not None and entry.get("kind") not in BASELINE_KINDS


def _closest(entries: list[dict], target: dict) -> dict | None:
    """The entry nearest the target ratio, then nearest the target α on a log scale (α = 0 is far)."""
    if not entries:
        return None

    def dist(e):
        a = float(e["alpha"])
        da = (
            abs(math.log(a / target["alpha"]))
            if a > 0 and target["alpha"] > 0
            else (0.0 if a == target["alpha"] else math.inf)
        )
        return (abs(float(e.get("ratio") or 0) - target["ratio"]), da)

    return min(entries, key=dist)


def same_alpha(a, b) -> bool:
    return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-3, abs_tol=1e-12)


def main_result(run: Run, hook: str) -> dict | None:
    """The eval result of the main SAE at a hook (nearest to the target when the exact one is absent; the named
    one in a run on given dictionaries)."""
    results = (run.eval.get(hook) or {}).get("results") or []
    target = main_target(run, hook)
    if target["name"]:
        return next((r for r in results if r.get("name") == target["name"]), None)
    return _closest([r for r in results if is_sae(r)], target)


def main_method(methods: list[dict], target: dict) -> dict | None:
    """The autointerp row of the main SAE: the target α, the ratio nearest the target (the named one in a run
    on given dictionaries)."""
    if target.get("name"):
        return next((m for m in methods if m.get("method") == target["name"]), None)
    at_alpha = [m for m in methods if is_sae(m) and same_alpha(m["alpha"], target["alpha"])]
    return _closest(at_alpha, target) if at_alpha else _closest([m for m in methods if is_sae(m)], target)


def stage_keys(run: Run, kinds: tuple[str, ...], hook: str | None = None) -> dict[str, str | None]:
    """reproduce.json's keys of the stages of these kinds (those for this hook, or for every hook)."""
    out = {}
    for name, s in run.stages.items():
        base = re.split(r"[^a-z_]", name.replace("-", "_").lower(), maxsplit=1)[0]
        if base not in kinds or not isinstance(s, dict):
            continue
        if hook is not None and "blocks." in name and hook not in name:
            continue
        out[name] = s.get("key")
    return out


SPLICED = ("ce_clean", "ce_spliced", "ce_zero", "ce_recovered", "kl", "ppl_clean", "ppl_spliced")
"""The spliced-model numbers of an eval result (§6.2), in the order the report shows them."""


def store_rows(store: dict | None, split: str) -> int | None:
    """Rows of a store split, from its manifest (None where the manifest lacks them)."""
    try:
        return sum(int(s["rows"]) for s in (store or {})["splits"][split]["shards"])
    except (KeyError, TypeError, ValueError):
        return None


def short_splits(store: dict | None) -> list[dict]:
    """Store splits the corpus ran out on before their target: every number measured on them rests on fewer
    tokens than the plan asked for (e.g. "alive" counted over 0.1M held-out tokens instead of 1M)."""
    out = []
    for name, split in ((store or {}).get("splits") or {}).items():
        if split.get("exhausted"):
            out.append({"split": name, "rows": store_rows(store, name), "target": split.get("target_tokens")})
    return out
